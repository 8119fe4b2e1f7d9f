"""bench/efficiency.py's accounting: charged tokens, continuation tokens, updates, the minibatch rule."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from lit_attn.tree import Sample
from lit_attn.exploration.groups import PromptGroup

BENCH = Path(__file__).resolve().parents[1] / "bench" / "efficiency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("efficiency_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def group(lengths: list[int]) -> PromptGroup:
    return PromptGroup({"prompt": "q"}, [1, 2], [Sample(tuple(range(n)), 0.0, tuple([0.0] * n), 0) for n in lengths])


def test_pending_batch_is_not_charged(bench):
    pending = [group([3, 5]), group([7, 1])]
    assert bench.pending_tokens(pending) == 16
    assert bench.pending_tokens([]) == 0
    # step 1 samples batch 0 (16 tokens, pending): nothing charged yet
    assert bench.charged_tokens(16, bench.pending_tokens(pending)) == 0
    # step 2 samples batch 1 (10 tokens) and 40 tokens of continuations of batch 0, trains batch 0
    new_pending = [group([4, 6])]
    assert bench.charged_tokens(16 + 50, bench.pending_tokens(new_pending)) == 16 + 40
    assert bench.step_continuation_tokens(50, bench.pending_tokens(new_pending)) == 40


def test_updates_count_steps_with_gradients(bench):
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([w, torch.nn.Parameter(torch.ones(1))])
    assert not bench.has_gradients(optimizer)  # the first tree step: an optimiser step with nothing to train
    w.grad = torch.zeros(2)  # a minibatch without signal still updates (AdamW's moments, weight decay)
    assert bench.has_gradients(optimizer)


def test_minibatch_rule(bench):
    target, minibatch = bench.minibatch_rule(16, 6, 2, 2)
    assert (target, minibatch) == (480, 48)
    assert 16 * 6 // minibatch == 2  # GRPO: 2 updates per step
    with pytest.raises(SystemExit):
        bench.minibatch_rule(3, 3, 2, 2)  # B' = 45 has no whole tenth


def test_accuracy_at_equal_tokens(bench):
    curve = [{"tokens": 0, "accuracy": 0.2}, {"tokens": 100, "accuracy": 0.4}, {"tokens": 300, "accuracy": 0.8}]
    assert bench.accuracy_at(curve, 0) == 0.2
    assert bench.accuracy_at(curve, 50) == pytest.approx(0.3)
    assert bench.accuracy_at(curve, 200) == pytest.approx(0.6)
    assert bench.accuracy_at(curve, 400) == 0.8
    assert bench.measured_at(curve, 50)["tokens"] == 100
    assert bench.measured_at(curve, 400)["tokens"] == 300


def test_command_line_spells_out_every_option(bench, tmp_path):
    args = bench.parse_args(["--setting", "chain-hard", "--budget", "1000", "--seeds", "0", "1", "--out", str(tmp_path / "x.md")])
    line = bench.command_line(args)
    assert bench.parse_args(line.split()[2:]).__dict__ == args.__dict__
    for option in ("--kl 0.001", "--weight-decay 0.01", "--max-batch-prompts 64", "--hard-pool 2400 440", "--val-size 200"):
        assert option in line


def test_every_arm_gets_the_same_settings(bench, tmp_path):
    args = bench.parse_args(["--out", str(tmp_path / "x.md")])
    data = {"mode": "subtotal", "num_texts": 0, "lookup_drill": 0.0, "num_distractors": 6, "val_size": 200}
    configs = {m: bench.run_config(m, 0, args, tmp_path, data) for m in bench.METHODS}
    for config in configs.values():
        model = config["model"]
        assert model["sampling"]["group_size"] == 6 and model["sampling"]["prompts_per_step"] == 16
        assert model["sampling"]["max_new_tokens"] == model["evaluation"]["max_new_tokens"] == 480
        assert model["update"]["minibatch_size"] == 48 and model["update"]["kl_coef"] == 0.001
        assert model["optimizer"] == {"lr": args.lr, "weight_decay": 0.01}
        assert {k: v for k, v in config["model"].items() if k != "seed"} == {
            k: v for k, v in configs["grpo"]["model"].items() if k != "seed"
        }
    trees = [c for m in ("attnrl", "treerl", "early") for c in configs[m]["trainer"]["callbacks"] if "Branch" in c["class_path"]]
    assert len(trees) == 3 and all(c["init_args"]["max_batch_prompts"] == 64 for c in trees)


def test_page_carries_the_exploration_numbers_of_its_setting(bench, tmp_path):
    rows = {
        key: {"label": key, "median_position": pos, "before_first_error": 0.5, "correct_per_1k_tokens": rate,
              "rescued": 0.25}
        for key, pos, rate in (("fci", 0.06, 2.0), ("fresh", 0.0, 1.6), ("oracle", 0.4, 3.2))
    }
    meta = {"command": "python bench/branching.py --setting chain-hard", "prompts": 10, "wrong": 40,
            "responses": 60, "fresh_pass_rate": 0.33}
    (tmp_path / "bench_branching.chain-hard.json").write_text(json.dumps({"meta": meta, "results": rows}))
    lines = bench.exploration_section("chain-hard", docs=tmp_path)
    text = "\n".join(lines)
    assert "| fci | 6% | 50% | 2.00 | 25% |" in text
    assert "1.25× the correct answers per token" in text and "2.00×" in text
    # another setting has no such file: no section, rather than another setting's numbers
    assert bench.exploration_section("subtotal", docs=tmp_path) == []


def test_reading_orders_the_arms_and_names_each_ones_continuation_share(bench):
    args = bench.parse_args(["--setting", "chain-hard", "--budget", "200", "--points", "2", "--seeds", "0"])

    def run(accuracy: float, continuation: int) -> dict:
        points = [{"tokens": 0, "accuracy": 0.0, "updates": 0, "continuation_tokens": 0},
                  {"tokens": 200, "accuracy": accuracy, "updates": 4, "continuation_tokens": continuation}]
        return {0: {"points": points}}

    lines = bench.reading({"grpo": run(0.8, 0), "attnrl": run(0.6, 150)}, args)
    text = "\n".join(lines)
    assert "the order is grpo 0.800, attnrl 0.600" in text
    assert "attnrl: 75% of its charged tokens are continuations" in text
    assert "grpo: every token is a fresh response" in text and "20.000 optimiser updates per 1K tokens" in text
    assert "belong to the prompt" in text  # the setting's own explanation
    assert "GRPO gained +0.400 over the last 0.00M tokens: its curve had not flattened" in text
