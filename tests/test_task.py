"""The built-in task: solutions verify, facts needed are marked, splits are seeded and disjoint."""

from __future__ import annotations

import random
import re

import pytest

from lit_attn.tasks import MAX_OPS, FactChainTask, extract_answer, in_format, make_splits, verify
from lit_attn.tasks.chain import DRILL_QUERIES


def test_reference_solution_is_correct_and_stepwise():
    task = FactChainTask(num_ops=3, num_distractors=3)
    for seed in range(50):
        ex = task.example(random.Random(seed))
        assert verify(ex["solution"], ex["answer"]) == 1.0
        steps = ex["solution"].split("\n\n")
        assert len(steps) == task.num_ops + 2  # first lookup, one per op, answer line
        assert steps[-1] == f"answer {ex['answer']}"
        assert len(ex["contexts"]) == task.num_ops + 1 + task.num_distractors
        assert ex["prompt"].startswith("\n".join(ex["contexts"]))


def test_relevant_indices_are_exactly_the_facts_the_question_uses():
    task = FactChainTask(num_ops=2, num_distractors=4)
    ex = task.example(random.Random(3))
    used = set(ex["question"].lower().replace("+", " ").replace("-", " ").split())
    named = {i for i, fact in enumerate(ex["contexts"]) if fact.split("=")[0] in used}
    assert named == set(ex["relevant"])


def test_answer_recomputed_from_the_facts():
    task = FactChainTask(num_ops=4, num_distractors=0, modulus=7)
    ex = task.example(random.Random(11))
    values = dict(fact.split("=") for fact in ex["contexts"])
    expr = ex["question"]
    acc, i = int(values[expr[0].lower()]), 1
    while i < len(expr):
        op, name = expr[i], expr[i + 1].lower()
        acc = (acc + int(values[name]) if op == "+" else acc - int(values[name])) % 7
        i += 2
    assert ex["answer"] == str(acc)


def test_verifier_reads_the_last_answer_line():
    assert verify("a=1\n\nanswer 3\n\nanswer 4", "4") == 1.0
    assert verify("answer 3", "4") == 0.0
    assert verify("no final line", "4") == 0.0
    assert extract_answer("answer -2") == "-2"


def test_splits_are_seeded_and_disjoint():
    task = FactChainTask()
    train, val = make_splits(task, 300, 50, seed=1)
    again_train, again_val = make_splits(task, 300, 50, seed=1)
    assert [e["prompt"] for e in val] == [e["prompt"] for e in again_val]
    assert [e["prompt"] for e in train] == [e["prompt"] for e in again_train]
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in val}
    other_train, _ = make_splits(task, 300, 50, seed=2)
    assert [e["prompt"] for e in other_train] != [e["prompt"] for e in train]


@pytest.mark.parametrize("kwargs", [{"num_ops": 0}, {"num_distractors": -1}, {"modulus": 1}, {"ops": "*"}, {"num_ops": 20, "num_distractors": 10}])
def test_bad_knobs(kwargs):
    with pytest.raises(ValueError):
        FactChainTask(**kwargs)


def test_recall_drills_query_with_repetition_and_stay_out_of_held_out():
    task = FactChainTask(num_ops=2, num_distractors=6, lookup_drill=0.5)
    rng = random.Random(0)
    examples = [task.example(rng) for _ in range(200)]
    drills = [e for e in examples if "," in e["question"]]
    assert 60 < len(drills) < 140
    repeated = 0
    for d in drills:
        facts = dict(c.split("=") for c in d["contexts"])
        names = d["question"].split(",")
        assert len(names) == DRILL_QUERIES and set(names) <= set(facts)
        # the solution copies each named fact, in the question's order
        assert d["solution"] == "".join(f"({n}={facts[n]})" for n in names)
        assert d["prompt"].endswith(f"{d['question']}?\n\n")
        repeated += len(set(names)) < len(names)
    # queries are drawn with repetition: not a permutation of the facts (no elimination shortcut)
    assert repeated > len(drills) // 2
    train, val = make_splits(FactChainTask(num_ops=2), 50, 50, seed=0, train_task=task)
    assert not any("," in e["question"] for e in val)


def test_ops_are_bounded_by_max_ops():
    FactChainTask(num_ops=MAX_OPS, num_distractors=0)
    with pytest.raises(ValueError, match=f"1..{MAX_OPS}"):
        FactChainTask(num_ops=MAX_OPS + 1, num_distractors=0)


def test_in_format_accepts_reference_shapes_and_rejects_others():
    task = FactChainTask(num_ops=3, num_distractors=2)
    ex = task.example(random.Random(4))
    assert in_format(ex["solution"], ex["question"])
    wrong_numbers = "".join("7" if ch.isdigit() else ch for ch in ex["solution"])
    assert in_format(wrong_numbers, ex["question"])  # format, not correctness
    steps = ex["solution"].split("\n\n")
    assert not in_format("\n\n".join(steps[:-2] + steps[-1:]), ex["question"])  # a step missing
    assert not in_format(ex["solution"].replace("(", ""), ex["question"])
    assert not in_format(ex["solution"] + "\n\nanswer 3", ex["question"])


# ----------------------------------------------------------------------------- subtotal mode

from lit_attn.tasks import SubtotalTask, first_wrong_step, slip_subtotals  # noqa: E402
from lit_attn.tasks.subtotal import OPENERS, SUBTOTALS  # noqa: E402
from lit_attn.tasks.verifier import solution_steps  # noqa: E402


def test_subtotal_solution_is_correct_long_and_writes_its_results_down_late():
    task = SubtotalTask()
    for seed in range(30):
        ex = task.example(random.Random(seed))
        steps = ex["solution"].split("\n\n")
        assert verify(ex["solution"], ex["answer"]) == 1.0
        assert len(steps) == task.num_steps >= 12  # long enough for the paper's Δ = 4
        named = [i for i, s in enumerate(steps) if re.fullmatch(r"[xy]=\d", s)]
        assert named == list(task.named_steps) == [task.x_facts, task.x_facts + task.y_facts]
        assert steps[named[0]] == "x=" + steps[named[0] - 1].rsplit("=", 1)[1]  # the chain's result, written down
        # the write-downs are the only steps that short but the first, and most of the answer precedes them
        assert sorted(range(1, len(steps) - 1), key=lambda i: len(steps[i]))[:2] == named
        assert len("\n\n".join(steps[: named[0]])) > 0.25 * len(ex["solution"])
        # every step of the final chain opens with a free word and reads a subtotal or a fact by name
        assert all(s.split(" ")[0] in OPENERS for s in steps[named[1] + 1 : -1])
        readers = [i for i, s in enumerate(steps) if "(x=" in s or "(y=" in s]
        assert len(readers) == len(task.pattern) - 1
        assert max(readers) >= named[1] + 4  # read back at least Δ = 4 steps later
        assert not any(c.split("=")[0] in SUBTOTALS for c in ex["contexts"])


def test_subtotal_answer_recomputed_by_hand():
    for pattern in ("xyy", "x.yxyy"):
        ex = SubtotalTask(x_facts=3, y_facts=2, pattern=pattern, num_distractors=0, modulus=10).example(random.Random(5))
        values = {k: int(v) for k, v in (c.split("=") for c in ex["contexts"])}
        definitions, final = ex["question"].split(";")

        def evaluate(expr: str, env: dict) -> int:
            acc, i = env[expr[0]], 1
            while i < len(expr):
                acc = (acc + env[expr[i + 1]] if expr[i] == "+" else acc - env[expr[i + 1]]) % 10
                i += 2
            return acc

        for definition in definitions.split(","):
            name, expr = definition.split(":")
            values[name] = evaluate(expr, values)
        assert ex["answer"] == str(evaluate(final, values))


def test_slips_always_change_the_answer_and_are_followed_consistently():
    task = SubtotalTask()
    for seed in range(40):
        ex = task.example(random.Random(seed))
        slipped = slip_subtotals(ex, random.Random(seed), rate=1.0)
        assert sorted(slipped["slipped"]) == ["x", "y"]
        assert verify(slipped["solution"], ex["answer"]) == 0.0  # x and y are read a different number of times
        steps = slipped["solution"].split("\n\n")
        right = ex["solution"].split("\n\n")
        x = int(steps[task.x_facts].removeprefix("x="))
        assert x != int(right[task.x_facts].removeprefix("x=")) and steps[: task.x_facts] == right[: task.x_facts]
        assert f"(x={x})" in slipped["solution"]  # later steps read the slipped value
        assert first_wrong_step(slipped["solution"], ex["solution"]) == task.x_facts
        assert verify(slipped["solution"], str(int(steps[-2].rsplit("=", 1)[1]))) == 1.0  # consistent to the end
    assert slip_subtotals(ex, random.Random(0), rate=0.0) is ex


def test_a_pattern_whose_slips_can_cancel_is_refused():
    with pytest.raises(ValueError, match="cancel"):
        SubtotalTask(pattern="xyxy")
    with pytest.raises(ValueError, match="pattern"):
        SubtotalTask(pattern=".xy")
    with pytest.raises(ValueError, match="num_distractors"):
        SubtotalTask(num_distractors=30)


def test_first_wrong_step():
    ex = FactChainTask(num_ops=3).example(random.Random(2))
    steps = ex["solution"].split("\n\n")
    assert first_wrong_step(ex["solution"], ex["solution"]) is None
    wrong = steps[:2] + [steps[2].replace(")=", ")=1", 1)] + steps[3:]
    assert first_wrong_step("\n\n".join(wrong), ex["solution"]) == 2
    assert first_wrong_step("\n\n".join(steps[:2]), ex["solution"]) == 2  # stopped early: the first missing step
    # the opening word of a subtotal-mode final step is free
    sub = SubtotalTask().example(random.Random(1))
    reworded = "\n\n".join(
        ("so " + s.split(" ", 1)[1]) if s.split(" ")[0] in OPENERS else s for s in sub["solution"].split("\n\n")
    )
    assert reworded != sub["solution"] and first_wrong_step(reworded, sub["solution"]) is None
    assert solution_steps("then a+b:1+(b=2)=3") == ["a+b:1+(b=2)=3"]
