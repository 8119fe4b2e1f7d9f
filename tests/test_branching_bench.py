"""bench/branching.py's diagnostic rule and write-down finder, and bench/fci_anatomy.py's step map."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import save_tiny
from lit_attn.attention import fci_scores_batch, split_steps
from lit_attn.attention.steps import STEP_DELIMITER
from lit_attn.models import load_policy
from lit_attn.tasks import SubtotalTask, slip_subtotals
from lit_attn.tokenizer import build_char_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


branching = load("branching")
anatomy = load("fci_anatomy")
TOK = build_char_tokenizer()


def test_top_scored_steps_takes_scores_not_positions():
    fci = [9.0, 9.0, 0.1, 0.5, 0.0, 0.7, 0.2]  # the prompt and the first response step never count
    assert branching.top_scored_steps(fci, 2) == [3, 5]
    assert branching.top_scored_steps(fci, 1) == [5]
    assert branching.top_scored_steps([0.0, 0.0, 0.0, 0.0], 2) == []  # nothing scored: no point


def test_subtotal_steps_are_the_write_downs():
    task = SubtotalTask()
    record = task.example(random.Random(3))
    prompt = TOK(record["prompt"])["input_ids"]
    tokens = TOK(record["solution"], add_special_tokens=False)["input_ids"]
    spans = split_steps(prompt + tokens, TOK, STEP_DELIMITER, prompt_length=len(prompt))
    found = branching.subtotal_steps(TOK, {"prompt_ids": prompt, "tokens": tokens, "spans": spans})
    assert found == set(task.named_steps)


def test_step_kinds_follow_the_task_shape():
    for task in (SubtotalTask(), SubtotalTask(x_facts=3, y_facts=2, pattern="xy.yxy")):
        kinds = anatomy.step_kinds(task)
        assert len(kinds) == task.num_steps
        assert [i for i, k in enumerate(kinds) if k.endswith("=…")] == list(task.named_steps)


@pytest.fixture(scope="module")
def long_tiny(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_512"), max_positions=512)


def test_anatomy_step_map_is_fci_of_the_library(long_tiny):
    model, tok = load_policy(long_tiny, attn_implementation="eager")
    model.eval()
    record = SubtotalTask().example(random.Random(1))
    prompt = list(tok(record["prompt"])["input_ids"])
    ids = prompt + list(tok(record["solution"], add_special_tokens=False)["input_ids"])
    spans = split_steps(ids, tok, STEP_DELIMITER, prompt_length=len(prompt))
    alpha = anatomy.step_attention(model, ids, spans)
    sizes = torch.tensor([b - a for a, b in spans], dtype=torch.double)
    # every query step's attention sums to 1 over the key steps (mean over keys × their length)
    rows = (alpha * sizes).sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-6)
    for gap in (1, 4):
        per_head = torch.stack([alpha[:, :, k + gap :, k].sum(-1) for k in range(len(spans))], -1)
        ours = per_head.flatten(0, 1).max(0).values
        ours[:2] = 0.0
        library = fci_scores_batch(
            model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), [spans], min_gap=gap, block_size=64
        )[0]
        assert torch.allclose(ours.float(), torch.as_tensor(library).float(), atol=1e-4)


def test_anatomy_bench_writes_its_table(long_tiny, tmp_path):
    out = tmp_path / "anatomy.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fci_anatomy.py"), "--model", str(long_tiny), "--solutions", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    assert "python bench/fci_anatomy.py --model" in text
    assert text.count("\n| 1 |") == 1 and text.count("\n| 4 |") == 1
    assert "## What the rules' points would give a policy that had learned the mode" in text
    for label in anatomy.RULES.values():
        assert text.count(f"\n| {label} | ") == 1


def test_ideal_policy_yield_matches_the_worked_out_table():
    """docs/task.md's table: both write-downs at 31% / 55% of a response, s = 0.5 → 1.46×; oracle 2.19×."""
    length, x, y = 1000, 310, 550
    both = [anatomy.ideal_continuation(o, x, y, length, 0.5) for o in (x, y)]
    assert anatomy.ideal_ratio(both, 0.5) == pytest.approx(1.46, abs=0.01)
    assert anatomy.ideal_ratio([anatomy.ideal_oracle(x, y, length, 0.5)], 0.5) == pytest.approx(2.19, abs=0.01)
    # a branch from the very start is a fresh sample; past y's value it never succeeds
    assert anatomy.ideal_ratio([anatomy.ideal_continuation(0, x, y, length, 0.5)], 0.5) == pytest.approx(1.0)
    assert anatomy.ideal_continuation(y + 1, x, y, length, 0.5)[0] == 0.0
    # between the values: only y must come out right, and only x-right wrong responses can (1/3 of them at s = 0.5)
    assert anatomy.ideal_continuation(x + 1, x, y, length, 0.5)[0] == pytest.approx(0.5 / 3)


def test_anatomy_rejects_a_slip_rate_outside_0_1(long_tiny, tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fci_anatomy.py"), "--model", str(long_tiny), "--slip", "1",
         "--out", str(tmp_path / "a.md")],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode != 0 and "--slip must be in (0, 1)" in run.stderr
    assert not (tmp_path / "a.md").exists()


habits = load("subtotal_habits")


def test_subtotal_habits_count_slips_reads_and_arithmetic():
    task = SubtotalTask()
    record = task.example(random.Random(5))
    clean = habits.habits(record["solution"], record["solution"])
    assert clean["x written"] == clean["y written"] == 1 and clean["x slipped"] == clean["y slipped"] == 0
    assert clean["reads"] == clean["reads agree"] == task.pattern.count("x") + task.pattern.count("y")
    assert clean["final steps"] == clean["final steps add up"] == len(task.pattern) - 1
    slipped = slip_subtotals(record, random.Random(0), rate=1.0)["solution"]
    counts = habits.habits(slipped, record["solution"])
    assert counts["x slipped"] == counts["y slipped"] == 1  # written down wrong, read back as written
    assert counts["reads agree"] == counts["reads"] and counts["final steps add up"] == counts["final steps"]
    steps = slipped.split("\n\n")
    x = task.named_steps[0]
    misread = steps[: x + 1] + [s.replace(f"(x={steps[x][2:]})", f"(x={(int(steps[x][2:]) + 1) % 10})") for s in steps[x + 1 :]]
    counts = habits.habits("\n\n".join(misread), record["solution"])
    assert counts["reads"] - counts["reads agree"] == task.pattern.count("x")  # reads that disagree with the write-down
    assert counts["final steps add up"] < counts["final steps"]  # the misread value breaks the arithmetic shown


def test_subtotal_habits_bench_writes_its_table(long_tiny, tmp_path):
    out = tmp_path / "habits.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "subtotal_habits.py"), "--model", str(long_tiny), "--prompts", "2",
         "--samples", "1", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    assert "python bench/subtotal_habits.py --model" in text and "| sampled responses | 2 |" in text
