"""bench/attribution.py's set where every needed fact is stated twice (issue 20.5): its
construction (ground truth marks, the copies, the control), seeding, and the round-by-round
recomputation its mechanism measurement relies on."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from lit_attn.tasks import FactChainTask, LongContextTask, format_prompt

BENCH = Path(__file__).resolve().parents[1] / "bench" / "attribution.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("attribution_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _without_inserted(example: dict) -> list[str]:
    """The contexts with the inserted copies taken out."""
    drop = set(example["inserted"])
    return [t for i, t in enumerate(example["contexts"]) if i not in drop]


def test_every_copy_of_every_needed_fact_is_ground_truth(bench):
    examples = bench.duplicated_examples(4)
    control = LongContextTask(num_texts=bench.DUPLICATED_TEXTS).examples(4, seed=bench.DUPLICATED_SEED)
    for ex, base in zip(examples, control):
        assert len(ex["contexts"]) == bench.DUPLICATED_TEXTS + 4 == 90
        needed = [base["contexts"][i] for i in base["relevant"]]
        # each needed fact twice, verbatim; every copy marked, nothing else
        assert [[ex["contexts"][i] for i in group] for group in ex["copies"]] == [[f, f] for f in needed]
        assert ex["relevant"] == sorted(i for group in ex["copies"] for i in group)
        assert len(ex["relevant"]) == 8
        assert len(ex["inserted"]) == 4 and set(ex["inserted"]) < set(ex["relevant"])
        assert all(len(set(group) & set(ex["inserted"])) == 1 for group in ex["copies"])
        counts = Counter(ex["contexts"])
        assert all(counts[f] == 2 for f in needed)
        assert all(counts[t] == 1 for i, t in enumerate(ex["contexts"]) if i not in ex["relevant"])
        # kinds, paraphrases and the injected text follow their texts
        assert [ex["kinds"][i] for i in ex["relevant"]] == ["needed"] * 8
        assert Counter(ex["kinds"]) == Counter(base["kinds"]) + Counter({"needed": 4})
        assert [ex["contexts"][i] for i in ex["paraphrases"]] == [base["contexts"][i] for i in base["paraphrases"]]
        assert ex["contexts"][ex["injected"]] == base["contexts"][base["injected"]]
        assert ex["kinds"][ex["injected"]] == "injected"
        # the control is the same example without the copies; question and answer unchanged
        assert _without_inserted(ex) == base["contexts"]
        assert (ex["question"], ex["answer"], ex["injected_answer"]) == (base["question"], base["answer"], base["injected_answer"])
    # the copies do not all sit next to their originals
    assert any(abs(a - b) > 1 for ex in examples for a, b in ex["copies"])


def test_duplicated_set_is_a_pure_function_of_its_seed(bench):
    assert bench.duplicated_examples(3) == bench.duplicated_examples(3)
    assert bench.duplicated_examples(3)[:2] == bench.duplicated_examples(2)
    other = bench.duplicated_examples(3, seed=bench.DUPLICATED_SEED + 1)
    assert [ex["contexts"] for ex in other] != [ex["contexts"] for ex in bench.duplicated_examples(3)]
    state = random.getstate()
    bench.duplicated_examples(2)
    assert random.getstate() == state  # the global RNG is never touched


def test_with_copies_counts_places_and_leaves_its_input_alone(bench):
    ex = {**FactChainTask(num_distractors=5).example(random.Random(0))}
    ex["answer"] = ex["solution"]
    before = {k: list(v) if isinstance(v, list) else v for k, v in ex.items()}
    three = bench.with_copies(ex, 3, random.Random(1))
    assert ex == before
    assert len(three["contexts"]) == len(ex["contexts"]) + 2 * len(ex["relevant"])
    assert all(len(group) == 3 and len({three["contexts"][i] for i in group}) == 1 for group in three["copies"])
    assert three["prompt"] == format_prompt(three["contexts"], ex["question"])
    adjacent = bench.with_copies(ex, 2, random.Random(1), place="adjacent")
    assert all(b == a + 1 for a, b in adjacent["copies"])
    assert bench.with_copies(ex, 1, random.Random(1))["contexts"] == ex["contexts"]
    with pytest.raises(ValueError):
        bench.with_copies(ex, 0, random.Random(1))


def test_sets_named_in_table_order_and_the_control_pairs_with_the_duplicated_set(bench):
    counts = {key: 2 for key in bench.SET_KEYS}
    sets = bench._sets(False, counts)
    assert [key for key, *_ in sets] == list(bench.SET_KEYS)
    by_key = {key: items for key, _, items, _ in sets}
    assert [_without_inserted(ex) for ex in by_key["d90"]] == [ex["contexts"] for ex in by_key["n86"]]
    assert [key for key, *_ in bench._sets(False, counts, {"d90", "n7"})] == ["n7", "d90"]


def test_duplicated_set_fits_the_trained_length_and_rounds_recompute_attntrace(bench):
    from lit_attn.attribution import AttnTrace
    from lit_attn.attribution.prompt import BUILTIN_TEMPLATE, tokenize_prompt
    from lit_attn.models import load_policy

    model, tokenizer = load_policy("default")
    ex = bench.duplicated_examples(1)[0]
    length = len(tokenize_prompt(tokenizer, BUILTIN_TEMPLATE, ex["contexts"], ex["question"],
                                 tokenizer(ex["answer"])["input_ids"]).build().input_ids)
    assert length <= model.config.max_position_embeddings
    tracer = AttnTrace(model, tokenizer, num_subsamples=6)
    full, rounds, trace = bench.round_scores(tracer, ex)
    assert len(rounds) == 6 and len(full) == len(trace) == 90
    assert trace == pytest.approx(tracer.attribute(ex["contexts"], ex["question"], ex["answer"]).scores, abs=1e-7)


def test_page_names_the_run_of_each_set_and_shows_the_mechanism_and_variants(bench):
    def rows(name: str, **extra) -> list[dict]:
        return [{"set": name, "method": method, "examples": 2, "tokens": 900.0, "chance_pk": 0.1, "p5": 0.8,
                 "r5": 1.0, "pk": 0.9, "rk": 0.9, "s": 0.1, "inj": 0.0, "para": 0.0, **extra}
                for method in ("AttnTrace (K=5, ρ=0.4, B=30)", "plain attention", "leave-one-out")]

    new_run = {"command": "python bench/attribution.py --sets d90", "date": "D2", "machine": "M2"}
    data = {
        "machine": "M1",
        "runs": {"quality": {"command": "python bench/attribution.py", "date": "D1"}},
        "quality": rows("long n=50") + rows("long n=90, every needed fact twice", run=new_run),
        "duplicates": {
            "mechanism": {"examples": 2, "pairs": 8, "rounds": 30, "share_full_median": 0.1, "share_both_median": 0.4,
                          "later_stronger": 0.9, "alone_over_with_median": 2.0, "weaker_below_plain": 0.3,
                          "weaker_below_trace": 0.0, "margin_plain_median": 0.5, "margin_trace_median": 1.5,
                          "covered_plain": 1.0, "covered_trace": 0.9},
            "variants": [{"design": "long n=86 + a 2nd copy", "examples": 2, "texts": 90, "k": 8, "tokens": 950.0,
                          "plain": 0.85, "trace": 1.0, "rho1": 0.8}],
            "run": new_run,
        },
    }
    page = bench.render(data)
    assert "Quality part (sets: long n=50): `python bench/attribution.py` on D1" in page
    assert "Quality part (sets: long n=90, every needed fact twice): `python bench/attribution.py --sets d90` on D2; machine: M2" in page
    assert "## Evidence stated twice" in page
    assert "| long n=86 + a 2nd copy | 2 | 90 | 950 | 8 | 0.85 | 1.00 | 0.80 | +0.15 |" in page
    assert "| 0.30 / 0.00 |" in page
