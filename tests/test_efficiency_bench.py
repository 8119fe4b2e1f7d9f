"""bench/efficiency.py's accounting: charged tokens, continuation tokens, updates, the minibatch rule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from lit_attn.tree import Sample
from lit_attn.tree_rl import PromptGroup

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
