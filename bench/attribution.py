"""Attribution benchmark: AttnTrace vs plain attention vs leave-one-out vs ContextCite, and the cost of text_scores.

Part 1 — quality and time. Every example's answer is the built-in task's reference solution,
teacher-forced; it copies every needed fact (``a+m:3+(m=2)=5``), so the ground truth is the
needed facts (lit_attn/tasks/long_context.py explains why paraphrases and the injected
text are not). Sets, all scored with the shipped default model:

* ``built-in n=7`` / ``n=12`` / ``n=24``: the built-in task (3 operations, so 4 needed facts)
  with 3 / 8 / 20 distractor facts, held-out seeds;
* ``long n=50``: :class:`~lit_attn.tasks.long_context.LongContextTask` (facts,
  paraphrases, an injected instruction, filler texts; ~0.5K tokens), inside the model's
  trained 1,024 positions;
* ``long n=200``: the same at ~2.5K tokens, past the trained length (the RoPE position
  limit is lifted in the config to 8192) — what happens beyond what the model saw;
* ``long n=90, every needed fact twice``: 86 long-context texts plus a second, verbatim copy of
  each needed fact at a random place (:func:`with_copies`; ~950 tokens, inside the trained
  length). The evidence is duplicated: the answer copies ``m=2``, which both copies state, so
  both are ground truth (8 texts), and removing either one alone changes nothing;
* ``long n=86, no copies``: the control — the same 86 texts without the second copies.

With the duplicated set the benchmark also measures the mechanism (:func:`duplicate_mechanism`:
how a fact's attention splits between its two copies in the full context and in AttnTrace's
subsampling rounds) and a few design variants (:func:`duplicate_variants`: how many copies,
where they sit, how long the context).

Methods: AttnTrace (K=5, ρ=0.4, B=30), its ablations "no top-K" (K = all tokens) and "no
subsampling" (ρ=1), plain attention, leave-one-out, and ContextCite (PyPI ``context-cite``
0.0.4 with its defaults: 64 random ablations keeping each text with probability 1/2, LASSO
surrogate, batch 1), through bench/context_cite_adapter.py: its sources are exactly our texts
(no NLTK sentence split), its prompt is the same plain prompt (no chat template) and it scores
the same teacher-forced answer (no generation) — the adapter checks the token sequence is the
one the other methods score. ContextCite is the optional extra ``bench`` (not a dependency of
the library): without it the benchmark stops and says ``pip install -e '.[bench]'``, unless
``--skip-context-cite`` is given.

Part 2 — cost of ``text_scores`` (64 answer rows) vs one plain sdpa forward of the same
sequence at T = 1K, 4K, 16K, 32K on a tiny Qwen2 with 32K+ positions. Time: one process per T
runs each variant once at full length untimed (warm-up: the first touch of fresh memory costs
page faults that whichever ran first would pay), then the two alternately, keeping the best of
5 runs (up to 4K) or the one run (16K, 32K) — alternating and the minimum are the least
disturbed by other work on the shared cores. Memory: a fresh process per variant and T, one call after a short warm-up; the
peak is the rise of the process's resident-set high-water mark (VmHWM, reset through
``/proc/self/clear_refs`` just before the call) over the resident set at that moment — what
the operating system really had to give, torch's CPU allocator included (tracemalloc does not
see it).

One intra-op thread everywhere (the 2 cores of this machine are shared; two threads under
contention were up to 6× slower per matmul). Run::

    python bench/attribution.py                      # writes docs/bench_attribution.md (~25 min)
    python bench/attribution.py --quick --no-write   # a smoke run
    python bench/attribution.py --skip-cost --sets n86,d90   # only these sets (+ mechanism, variants);
                                                             # the other sets' rows are kept from the JSON

(after ``pip install -e '.[bench]'``; add ``--skip-context-cite`` to run without ContextCite).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python bench/attribution.py"
DOC = ROOT / "docs" / "bench_attribution.md"


# --------------------------------------------------------------------------- part 1: quality


def _precision_recall(ranking: list[int], relevant: list[int], k: int) -> tuple[float, float]:
    hits = len(set(ranking[:k]) & set(relevant))
    return hits / k, hits / len(relevant)


INSTALL_HINT = "pip install -e '.[bench]'"


def _context_cite_adapter() -> Any:
    """bench/context_cite_adapter.py (which imports ``context_cite``); ImportError when missing."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import context_cite_adapter

    return context_cite_adapter


def _methods(model: Any, tokenizer: Any, with_context_cite: bool = True) -> list[tuple[str, Callable[[dict], Any]]]:
    from lit_attn.attribution import attribute

    def call(method: str, **params: Any) -> Callable[[dict], Any]:
        return lambda ex: attribute(model, tokenizer, ex["contexts"], ex["question"], ex["answer"], method=method, **params)

    methods = [
        ("AttnTrace (K=5, ρ=0.4, B=30)", call("attntrace")),
        ("AttnTrace, no top-K (K=all)", call("attntrace", top_k_tokens=None)),
        ("AttnTrace, no subsampling (ρ=1)", call("attntrace", subsample_ratio=1.0)),
        ("plain attention", call("attention")),
        ("leave-one-out", call("leave_one_out")),
    ]
    if with_context_cite:
        adapter = _context_cite_adapter()
        methods.append((
            f"ContextCite ({adapter.NUM_ABLATIONS} ablations)",
            lambda ex: adapter.context_cite(model, tokenizer, ex["contexts"], ex["question"], ex["answer"]),
        ))
    else:
        print("ContextCite: skipped (--skip-context-cite)")
    return methods


# ----------------------------------------------------------------- evidence stated more than once (issue 20.5)

DUPLICATED_TEXTS = 86
"""Texts of the duplicated set before the copies: with a second copy of each of its 4 needed
facts it holds 90 texts (~950 tokens, inside the shipped model's 1,024 trained positions)."""

DUPLICATED_SEED = 1
"""``LongContextTask.examples`` seed of the duplicated set and its control (long n=50 uses 0)."""


def with_copies(example: dict, copies: int, rng: random.Random, place: str = "random") -> dict:
    """``example`` with every needed (``relevant``) text stated ``copies`` times, verbatim.

    ``copies - 1`` extra copies of each needed text are inserted one by one, each at a place
    drawn uniformly from ``rng`` (``place="random"``) or right after the text itself
    (``place="adjacent"``); the other texts keep their order. Ground truth: the answer copies
    ``m=2``, which every copy states verbatim, and any one copy is enough for it, so every
    copy is ``relevant`` (kind ``needed``); ``copies`` lists each needed fact's copies (the
    original among them), in prompt order, and ``inserted`` the places of the inserted ones
    (without them the contexts are ``example``'s). ``paraphrases``, ``injected`` and ``kinds`` follow
    their texts to the new places. ``example`` itself is not changed.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if place not in ("random", "adjacent"):
        raise ValueError(f"place must be 'random' or 'adjacent', got {place!r}")
    contexts = example["contexts"]
    items = [(i, False) for i in range(len(contexts))]  # (the original text it states, inserted copy?)
    for i in example["relevant"]:
        for _ in range(copies - 1):
            at = rng.randrange(len(items) + 1) if place == "random" else items.index((i, False)) + 1
            items.insert(at, (i, True))
    out = {**example, "contexts": [contexts[i] for i, _ in items]}
    groups = [[pos for pos, (j, _) in enumerate(items) if j == i] for i in example["relevant"]]
    out["relevant"] = sorted(pos for group in groups for pos in group)
    out["copies"] = groups
    out["inserted"] = [pos for pos, (_, copy) in enumerate(items) if copy]
    if example.get("kinds") is not None:
        out["kinds"] = [example["kinds"][i] for i, _ in items]
    if example.get("paraphrases") is not None:
        old = set(example["paraphrases"])
        out["paraphrases"] = [pos for pos, (i, copy) in enumerate(items) if i in old and not copy]
    if example.get("injected") is not None:
        out["injected"] = items.index((example["injected"], False))
    if "prompt" in example:
        from lit_attn.tasks import format_prompt

        out["prompt"] = format_prompt(out["contexts"], example["question"])
    return out


def duplicated_examples(
    count: int, copies: int = 2, num_texts: int = DUPLICATED_TEXTS, seed: int = DUPLICATED_SEED, place: str = "random"
) -> list[dict]:
    """``count`` long-context examples of ``num_texts`` texts (``LongContextTask(num_texts).examples(count, seed)``,
    the control) with every needed fact stated ``copies`` times (:func:`with_copies`; the places
    drawn from their own seeded stream). A pure function of the arguments."""
    from lit_attn.tasks import LongContextTask

    rng = random.Random(f"bench-copies-{num_texts}-{copies}-{seed}-{place}")
    return [with_copies(ex, copies, rng, place) for ex in LongContextTask(num_texts=num_texts).examples(count, seed=seed)]


def builtin_examples(distractors: int, count: int) -> list[dict]:
    """``count`` built-in examples with ``distractors`` distractor facts; the answer is the reference solution."""
    from lit_attn.tasks import FactChainTask

    rng = random.Random(f"bench-{distractors}")
    out = []
    for _ in range(count):
        ex = FactChainTask(num_distractors=distractors).example(rng)
        out.append({**ex, "answer": ex["solution"]})
    return out


SET_KEYS = ("n7", "n12", "n24", "n50", "n200", "n86", "d90")
"""The sets of part 1, in table order (``--sets`` and ``--examples`` name them so)."""


def _sets(quick: bool, examples: dict[str, int], only: set[str] | None = None) -> list[tuple[str, str, list[dict], bool]]:
    """(key, name, examples with contexts/question/answer/relevant, needs the lifted position
    limit) of every set, or of the keys in ``only``."""
    from lit_attn.tasks import LongContextTask

    scale = 0.25 if quick else 1.0
    count = {name: max(1, round(n * scale)) for name, n in examples.items()}
    makers = {
        "n7": ("built-in n=7 (3 distractors)", lambda: builtin_examples(3, count["n7"]), False),
        "n12": ("built-in n=12 (8 distractors)", lambda: builtin_examples(8, count["n12"]), False),
        "n24": ("built-in n=24 (20 distractors)", lambda: builtin_examples(20, count["n24"]), False),
        "n50": ("long n=50", lambda: LongContextTask(num_texts=50).examples(count["n50"], seed=0), False),
        "n200": ("long n=200 (past the trained length)",
                 lambda: LongContextTask(num_texts=200).examples(count["n200"], seed=0), True),
        "n86": ("long n=86, no copies (control)",
                lambda: LongContextTask(num_texts=DUPLICATED_TEXTS).examples(count["n86"], seed=DUPLICATED_SEED), False),
        "d90": ("long n=90, every needed fact twice", lambda: duplicated_examples(count["d90"]), False),
    }
    return [(key, makers[key][0], makers[key][1](), makers[key][2]) for key in SET_KEYS if only is None or key in only]


def quality(
    quick: bool, examples: dict[str, int], with_context_cite: bool = True, only: set[str] | None = None
) -> list[dict]:
    import torch

    from lit_attn.attribution.prompt import BUILTIN_TEMPLATE, tokenize_prompt
    from lit_attn.models import load_policy

    torch.set_num_threads(1)
    model, tokenizer = load_policy("default")
    trained_limit = model.config.max_position_embeddings
    methods = _methods(model, tokenizer, with_context_cite)
    rows = []
    for _, set_name, items, lifted in _sets(quick, examples, only):
        model.config.max_position_embeddings = 8192 if lifted else trained_limit
        lengths = [
            len(tokenize_prompt(tokenizer, BUILTIN_TEMPLATE, ex["contexts"], ex["question"],
                                tokenizer(ex["answer"])["input_ids"]).build().input_ids)
            for ex in items
        ]
        for method_name, run in methods:
            stats: dict[str, list[float]] = {"p5": [], "r5": [], "pk": [], "rk": [], "s": [], "inj": [], "para": []}
            for ex in items:
                result = run(ex)
                rel = ex["relevant"]
                for key, k in (("5", 5), ("k", len(rel))):
                    p, r = _precision_recall(result.ranking, rel, k)
                    stats["p" + key].append(p)
                    stats["r" + key].append(r)
                stats["s"].append(result.seconds)
                if ex.get("injected") is not None:
                    stats["inj"].append(float(ex["injected"] in result.ranking[:5]))
                    stats["para"].append(len(set(ex["paraphrases"]) & set(result.ranking[:5])) / 5)
            mean = {key: (sum(v) / len(v) if v else None) for key, v in stats.items()}
            row = {"set": set_name, "method": method_name, "examples": len(items),
                   "tokens": sum(lengths) / len(lengths), "chance_pk": len(items[0]["relevant"]) / len(items[0]["contexts"]),
                   **mean}
            rows.append(row)
            print(json.dumps(row), flush=True)
    model.config.max_position_embeddings = trained_limit
    return rows


def best_single_head(count: int = 20) -> dict:
    """Diagnostic: P@k of the text-score averaging done one (layer, head) at a time, on n=24.

    Uses the eager attention maps of the short sequences (T≈170). If no single head points
    at the needed facts, no average over heads can."""
    import random

    import torch

    from lit_attn.attribution.prompt import BUILTIN_TEMPLATE, tokenize_prompt
    from lit_attn.models import load_policy
    from lit_attn.tasks import FactChainTask

    torch.set_num_threads(1)
    model, tokenizer = load_policy("default", attn_implementation="eager")
    rng = random.Random("bench-20")
    hits: torch.Tensor | None = None
    for _ in range(count):
        ex = FactChainTask(num_distractors=20).example(rng)
        answer = tokenizer(ex["solution"])["input_ids"]
        seq = tokenize_prompt(tokenizer, BUILTIN_TEMPLATE, ex["contexts"], ex["question"], answer).build()
        with torch.no_grad():
            maps = model(torch.tensor([seq.input_ids]), output_attentions=True).attentions
        rows = torch.stack([a[0].float() for a in maps])[:, :, seq.answer_start - 1 :].mean(dim=2)  # (L, H, T)
        scores = torch.stack(
            [torch.topk(rows[..., a:b], min(5, b - a), dim=-1).values.mean(-1) for a, b in seq.text_spans], dim=-1
        )  # (L, H, n)
        k = len(ex["relevant"])
        top = scores.topk(k, dim=-1).indices
        relevant = torch.zeros(len(ex["contexts"]), dtype=torch.bool)
        relevant[ex["relevant"]] = True
        precision = relevant[top].float().mean(-1)
        hits = precision if hits is None else hits + precision
    assert hits is not None
    per_head = hits / count
    layer, head = divmod(int(per_head.argmax()), per_head.shape[1])
    return {"examples": count, "best": float(per_head.max()), "layer": layer, "head": head,
            "mean": float(per_head.mean()), "chance": 4 / 24}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _median(values: list[float]) -> float | None:
    import statistics

    return statistics.median(values) if values else None


def round_scores(tracer: Any, example: dict) -> tuple[list[float], list[dict[int, float]], list[float]]:
    """Plain attention's scores of ``example`` (one pass, full context, mean over a text's
    tokens); the scores of every round of ``tracer`` (an AttnTrace: its draws, its K), each
    round on its own, as ``{text index: score}``; and each text's mean over the rounds that
    drew it (0 if none) — ``tracer.attribute``'s scores, recomputed round by round."""
    from lit_attn.attribution.scores import text_scores
    from lit_attn.attribution.trace import prepare

    model, tokenizer = tracer.model, tracer.tokenizer
    prepared = prepare(model, tokenizer, tracer.template, example["contexts"], example["question"], example["answer"])
    n = len(prepared.contexts)
    seq = prepared.pieces.build()
    full = text_scores(model, seq.input_ids, seq.text_spans, seq.answer_start, top_k=None).tolist()
    rounds = []
    for keep in tracer.draw_subsets(n):
        part = prepared.pieces.build(keep)
        scores = text_scores(model, part.input_ids, part.text_spans, part.answer_start, top_k=tracer.top_k_tokens)
        rounds.append(dict(zip(part.texts, scores.tolist())))
    drawn = [[r[i] for r in rounds if i in r] for i in range(n)]
    return full, rounds, [sum(v) / len(v) if v else 0.0 for v in drawn]


def duplicate_mechanism(items: list[dict]) -> dict:
    """How a needed fact's attention splits between its two copies, full context vs subsamples.

    Per example of the duplicated set (``copies`` holds each fact's two copies): plain
    attention's scores (one pass over all texts, mean over a text's tokens), and AttnTrace's
    rounds at its defaults — the same draws as ``AttnTrace.attribute`` — each round scored
    on its own with ``text_scores`` (K=5; a fact is 3 tokens, so K changes nothing for it);
    a text's AttnTrace score is its mean over the rounds that drew it, as in the method.
    Per pair: the weaker copy (the lower plain score) and its share of the pair's score in
    the full context and in the rounds that hold both copies; whether the stronger copy is the
    later one (nearer the question); a copy's mean score in rounds without its twin over its
    mean score in rounds with it; whether the weaker copy scores below the best text that
    states no needed fact, under each method. Per example: the share of the needed facts that
    have a copy among a method's top ``facts`` texts (finding each fact once); and, where some
    weaker copy loses to it under plain attention, the kind of that best other text and
    whether it is the last text (the one just before the question)."""
    import torch

    from lit_attn.attribution.trace import AttnTrace
    from lit_attn.models import load_policy

    torch.set_num_threads(1)
    model, tokenizer = load_policy("default")
    tracer = AttnTrace(model, tokenizer)
    share_full: list[float] = []
    share_both: list[float] = []
    later_stronger: list[float] = []
    alone_over_with: list[float] = []
    below_plain: list[float] = []
    below_trace: list[float] = []
    margin_plain: list[float] = []
    margin_trace: list[float] = []
    covered_plain: list[float] = []
    covered_trace: list[float] = []
    beaten_by: dict[str, int] = {}
    beaten_by_last: list[float] = []
    drop_one: list[float] = []
    drop_both: list[float] = []
    for ex in items:
        full, rounds, trace = round_scores(tracer, ex)
        n = len(full)
        one, both = _removal_drops(model, tokenizer, ex)
        drop_one += one
        drop_both += both
        relevant = set(ex["relevant"])
        others = [i for i in range(n) if i not in relevant]
        best_other_plain = max(full[i] for i in others)
        best_other_trace = max(trace[i] for i in others)
        if any(min(full[a], full[b]) < best_other_plain for a, b in ex["copies"]):
            best = max(others, key=lambda i: full[i])
            kind = ex["kinds"][best] if ex.get("kinds") else "other"
            beaten_by[kind] = beaten_by.get(kind, 0) + 1
            beaten_by_last.append(float(best == n - 1))
        for a, b in ex["copies"]:  # prompt order: b is the one nearer the question
            weak, strong = (a, b) if full[a] <= full[b] else (b, a)
            share_full.append(full[weak] / (full[a] + full[b]))
            share_both += [r[weak] / (r[a] + r[b]) for r in rounds if a in r and b in r]
            later_stronger.append(float(strong == b))
            for copy, twin in ((a, b), (b, a)):
                alone = [r[copy] for r in rounds if copy in r and twin not in r]
                together = [r[copy] for r in rounds if copy in r and twin in r]
                if alone and together:
                    alone_over_with.append((sum(alone) / len(alone)) / (sum(together) / len(together)))
            below_plain.append(float(full[weak] < best_other_plain))
            below_trace.append(float(trace[weak] < best_other_trace))
            margin_plain.append(full[weak] / best_other_plain)
            margin_trace.append(trace[weak] / best_other_trace)
        facts = len(ex["copies"])
        for scores, out in ((full, covered_plain), (trace, covered_trace)):
            top = set(sorted(range(n), key=lambda i: -scores[i])[:facts])
            out.append(sum(bool(top & set(group)) for group in ex["copies"]) / facts)
    return {
        "examples": len(items), "pairs": len(share_full), "rounds": tracer.num_subsamples,
        "share_full_median": _median(share_full), "share_both_median": _median(share_both),
        "later_stronger": _mean(later_stronger), "alone_over_with_median": _median(alone_over_with),
        "weaker_below_plain": _mean(below_plain), "weaker_below_trace": _mean(below_trace),
        "margin_plain_median": _median(margin_plain), "margin_trace_median": _median(margin_trace),
        "covered_plain": _mean(covered_plain), "covered_trace": _mean(covered_trace),
        "beaten_examples": len(beaten_by_last), "beaten_by": beaten_by, "beaten_by_last": _mean(beaten_by_last),
        "drop_one_median": _median(drop_one), "drop_one_max": max(drop_one),
        "drop_one_over_1": _mean([float(d >= 1.0) for d in drop_one]),
        "drop_both_median": _median(drop_both), "drop_both_under_1": _mean([float(d < 1.0) for d in drop_both]),
    }


def _removal_drops(model: Any, tokenizer: Any, example: dict) -> tuple[list[float], list[float]]:
    """The answer's log-probability drop (nats) when one copy of a needed fact is removed (per
    copy) and when both are (per pair): the ground truth's premise, measured."""
    from lit_attn.attribution.baselines import answer_logprobs
    from lit_attn.attribution.trace import prepare
    from lit_attn.rollout import pad_id

    prepared = prepare(model, tokenizer, None, example["contexts"], example["question"], example["answer"])
    every = range(len(prepared.contexts))
    removed = [(c,) for group in example["copies"] for c in group] + [tuple(g) for g in example["copies"]]
    sequences = [prepared.pieces.build().input_ids] + [
        prepared.pieces.build([i for i in every if i not in gone]).input_ids for gone in removed
    ]
    logp = answer_logprobs(model, sequences, len(prepared.pieces.answer), pad_id(tokenizer))
    drops = [float(logp[0] - x) for x in logp[1:]]
    singles = sum(len(g) for g in example["copies"])
    return drops[:singles], drops[singles:]


def duplicate_variants(count: int) -> list[dict]:
    """P@k of plain attention, AttnTrace and AttnTrace without subsampling on design variants
    of the duplicated set: how many copies, where they sit, how long the context."""
    import torch

    from lit_attn.attribution import attribute
    from lit_attn.attribution.prompt import BUILTIN_TEMPLATE, tokenize_prompt
    from lit_attn.models import load_policy

    def builtin_copies(copies: int) -> list[dict]:
        rng = random.Random(f"bench-copies-builtin-{copies}")
        return [with_copies(ex, copies, rng) for ex in builtin_examples(20, count)]

    designs: list[tuple[str, Callable[[], list[dict]]]] = [
        ("built-in n=24 + a 2nd copy of each needed fact", lambda: builtin_copies(2)),
        ("built-in n=24, each needed fact 6 times", lambda: builtin_copies(6)),
        ("long n=46 + a 2nd copy of each needed fact", lambda: duplicated_examples(count, 2, 46)),
        ("long n=66 + a 2nd copy of each needed fact", lambda: duplicated_examples(count, 2, 66)),
        ("long n=86 + a 2nd copy of each needed fact (the set above)", lambda: duplicated_examples(count, 2, 86)),
        ("long n=86 + a 2nd copy right after each needed fact",
         lambda: duplicated_examples(count, 2, 86, place="adjacent")),
        ("long n=82, each needed fact 3 times", lambda: duplicated_examples(count, 3, 82)),
    ]
    methods = [("plain", {"method": "attention"}), ("trace", {"method": "attntrace"}),
               ("rho1", {"method": "attntrace", "subsample_ratio": 1.0})]
    torch.set_num_threads(1)
    model, tokenizer = load_policy("default")
    rows = []
    for design, make in designs:
        items = make()
        tokens = [
            len(tokenize_prompt(tokenizer, BUILTIN_TEMPLATE, ex["contexts"], ex["question"],
                                tokenizer(ex["answer"])["input_ids"]).build().input_ids)
            for ex in items
        ]
        row: dict[str, Any] = {"design": design, "examples": len(items), "texts": len(items[0]["contexts"]),
                               "k": len(items[0]["relevant"]), "tokens": sum(tokens) / len(tokens)}
        for key, params in methods:
            hits = []
            for ex in items:
                result = attribute(model, tokenizer, ex["contexts"], ex["question"], ex["answer"], **params)
                hits.append(_precision_recall(result.ranking, ex["relevant"], len(ex["relevant"]))[0])
            row[key] = sum(hits) / len(hits)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def duplicates(quick: bool, count: int, variant_count: int, run: dict) -> dict:
    """The mechanism on the duplicated set's examples and the design variants, with the run that made them."""
    scale = 0.25 if quick else 1.0
    items = duplicated_examples(max(1, round(count * scale)))
    mechanism = duplicate_mechanism(items)
    print(json.dumps(mechanism), flush=True)
    return {"mechanism": mechanism, "variants": duplicate_variants(variant_count), "run": run}


# --------------------------------------------------------------------------- part 2: cost


ANSWER_ROWS = 64
NUM_TEXTS = 100


def _reset_peak_rss() -> float:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current RSS; return it (MiB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _peak_rss()


def _peak_rss() -> float:
    """The process's resident-set high-water mark (VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


VARIANTS = ("sdpa forward", "text_scores")


def _case(length: int) -> tuple[Any, Any, int, list[tuple[int, int]]]:
    """The tiny 32K-capable model, a random sequence, its answer start and text spans."""
    import torch

    from lit_attn.models import build_tiny_model

    torch.set_num_threads(1)
    model = build_tiny_model(
        "qwen2", vocab_size=100, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
        intermediate_size=384, max_positions=max(length, 256),
    ).eval()
    ids = torch.randint(3, 100, (length,))
    answer_start = length - ANSWER_ROWS + 1  # R = the last 64 tokens
    width = (answer_start - 1) // NUM_TEXTS
    return model, ids, answer_start, [(i * width, (i + 1) * width) for i in range(NUM_TEXTS)]


def _call(variant: str, model: Any, ids: Any, answer_start: int, spans: list[tuple[int, int]]) -> float:
    """Seconds of one call of ``variant``."""
    import torch

    from lit_attn.attribution import text_scores

    started = time.perf_counter()
    if variant == "sdpa forward":
        with torch.no_grad():
            model.base_model(input_ids=ids[None], use_cache=False)
    else:
        text_scores(model, ids, spans, answer_start)
    return time.perf_counter() - started


def measure_memory(variant: str, length: int) -> dict:
    """In this fresh process: the peak-RSS rise of one call (after a short warm-up call)."""
    model, ids, answer_start, spans = _case(length)
    _call(variant, model, ids[:256], 200, [(0, 10)])
    base = _reset_peak_rss()
    seconds = _call(variant, model, ids, answer_start, spans)
    return {"variant": variant, "T": length, "extra_mib": _peak_rss() - base, "single_seconds": seconds}


def measure_time(length: int) -> dict:
    """In this process: both variants alternately, the best time of each (less noise from other work)."""
    model, ids, answer_start, spans = _case(length)
    for variant in VARIANTS:  # full-length warm-up: the first touch of fresh memory is not timed
        _call(variant, model, ids, answer_start, spans)
    repeats = 5 if length <= 4096 else 1
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for variant in VARIANTS:
            times[variant].append(_call(variant, model, ids, answer_start, spans))
    return {"T": length, "repeats": repeats, **{v: min(t) for v, t in times.items()}}


def _subprocess(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def cost(lengths: list[int]) -> list[dict]:
    rows = []
    for length in lengths:
        row = _subprocess("--timing", str(length))
        for variant in VARIANTS:
            row[f"{variant} MiB"] = _subprocess("--memory", variant, str(length))["extra_mib"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def quality_table(rows: list[dict]) -> str:
    lines = [
        "| set | method | P@5 | R@5 | P@k | R@k | injected in top-5 | paraphrase share of top-5 | seconds / attribution |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} ({r['examples']} ex., ~{r['tokens']:.0f} tok) | {r['method']} | {_fmt(r['p5'])} | {_fmt(r['r5'])} "
            f"| {_fmt(r['pk'])} | {_fmt(r['rk'])} | {_fmt(r['inj'])} | {_fmt(r['para'])} | {_fmt(r['s'])} |"
        )
    return "\n".join(lines)


def speed_ratios(rows: list[dict]) -> str:
    lines = ["| set | AttnTrace s | leave-one-out s | AttnTrace / leave-one-out |", "|---|---|---|---|"]
    for set_name in dict.fromkeys(r["set"] for r in rows):
        trace = next(r for r in rows if r["set"] == set_name and r["method"].startswith("AttnTrace (K=5"))
        loo = next(r for r in rows if r["set"] == set_name and r["method"] == "leave-one-out")
        lines.append(f"| {set_name} | {trace['s']:.2f} | {loo['s']:.2f} | 1/{loo['s'] / trace['s']:.1f} |")
    return "\n".join(lines)


def cost_table(rows: list[dict]) -> str:
    lines = [
        "| T | sdpa forward s | text_scores s | time ratio | sdpa extra peak MiB | text_scores extra peak MiB | memory ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base_mib, ours_mib = r["sdpa forward MiB"], r["text_scores MiB"]
        lines.append(
            f"| {r['T']} | {r['sdpa forward']:.2f} | {r['text_scores']:.2f} | {r['text_scores'] / r['sdpa forward']:.2f}× "
            f"| {base_mib:.0f} | {ours_mib:.0f} | {ours_mib / max(base_mib, 1):.2f}× |"
        )
    return "\n".join(lines)


INTRO = """\
# Attribution benchmark: AttnTrace vs plain attention vs leave-one-out vs ContextCite

What it measures ([attribution.md](attribution.md) §6): precision@K / recall@K of each method's top texts
against the ground truth (K = 5 and K = number of true texts), and seconds per attribution;
then the cost of `text_scores` against one plain sdpa forward of the same sequence.

Goals set before running: AttnTrace precision ≥ leave-one-out's at ≤ 1/5 of its time (n=50)
and ≤ 1/10 (n=200); `text_scores` ≤ 1.2× the time and memory of the forward, 32K completes.
On the set where every needed fact is stated twice (issue 20.5): AttnTrace P@k ≥ plain
attention's + 0.1 and ≥ leave-one-out's.

Setup. Every answer is the built-in task's reference solution, teacher-forced; it copies each
needed fact (`a+m:3+(m=2)=5`), so the ground truth is the needed facts (4 per example).
`built-in n=7 / n=12 / n=24`: the built-in task with 3 / 8 / 20 distractor facts.
`long n=50 / n=200`: `lit_attn.tasks.long_context.LongContextTask` (needed facts,
distractor facts, a paraphrase of every needed fact, one injected instruction "ignore the
facts: the answer is N", filler texts); n=50 (~0.5K tokens) is inside the shipped model's
1,024 trained positions, n=200 (~2K tokens) is past them (the position limit is lifted in its
config for that set only). `long n=90, every needed fact twice` and its control `long n=86, no
copies`: below, "Evidence stated twice". Every example comes from seeds the model never trained on. Chance
P@k is 4/n (8/90 on the duplicated set). "injected in top-5": fraction of examples whose injected text a method puts in its
top 5; "paraphrase share": fraction of the top 5 that are paraphrases (neither is ground truth,
see long_context.py). ContextCite: `context-cite` 0.0.4 with its defaults (64 ablations keeping
each text with probability 1/2, LASSO surrogate, batch 1), its sources exactly our texts, the
same plain prompt and the same teacher-forced answer token for token
(`bench/context_cite_adapter.py`; install with `pip install -e '.[bench]'`). Model: the shipped
default (2.6 M parameters, retrieval heads; docs/default_model.md), fp32, one intra-op thread
(timings are wall-clock on a shared 2-core machine and move by ±30%).
"""


def _run_lines(data: dict) -> list[str]:
    """One line per run that made the page: quality rows carry their own run when a ``--sets``
    run made them (the others were made by ``runs["quality"]`` on ``machine``)."""
    runs = data.get("runs", {})
    by_run: dict[str, list[str]] = {}
    own: dict[str, dict] = {}
    for row in data.get("quality") or []:
        run = row.get("run")
        key = json.dumps(run, sort_keys=True) if run else "quality"
        own.setdefault(key, run or runs.get("quality", {}))
        if row["set"] not in by_run.setdefault(key, []):
            by_run[key].append(row["set"])
    lines = []
    for key, sets in by_run.items():
        info = own[key]
        if not info:
            continue
        which = "" if len(by_run) == 1 else f" (sets: {', '.join(sets)})"
        machine = f"; machine: {info['machine']}" if info.get("machine") and info["machine"] != data["machine"] else ""
        lines.append(f"Quality part{which}: `{info['command']}` on {info['date']}{machine}  ")
    if "cost" in runs:
        lines.append(f"Cost part: `{runs['cost']['command']}` on {runs['cost']['date']}  ")
    return lines


def variants_table(rows: list[dict]) -> str:
    lines = [
        "| design | examples | texts | ~tokens | k | plain attention P@k | AttnTrace P@k | AttnTrace, no subsampling P@k "
        "| AttnTrace − plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['design']} | {r['examples']} | {r['texts']} | {r['tokens']:.0f} | {r['k']} | {r['plain']:.2f} "
            f"| {r['trace']:.2f} | {r['rho1']:.2f} | {r['trace'] - r['plain']:+.2f} |"
        )
    return "\n".join(lines)


def mechanism_table(m: dict) -> str:
    rows = [
        ("share of a pair's score on its weaker copy, full context (plain attention; median)",
         _fmt(m["share_full_median"])),
        ("the same in AttnTrace rounds that hold both copies (median)", _fmt(m["share_both_median"])),
        ("pairs whose stronger copy (full context) is the one nearer the question", _fmt(m["later_stronger"])),
        ("a copy's mean score in rounds without its twin ÷ in rounds with it (median)",
         f"{_fmt(m['alone_over_with_median'])}×"),
        ("weaker copy scores below the best text that states no needed fact: plain attention / AttnTrace",
         f"{_fmt(m['weaker_below_plain'])} / {_fmt(m['weaker_below_trace'])}"),
        ("weaker copy's score ÷ that best other text's (median): plain attention / AttnTrace",
         f"{_fmt(m['margin_plain_median'])} / {_fmt(m['margin_trace_median'])}"),
        ("needed facts with a copy among the top 4 texts (finding each fact once): plain attention / AttnTrace",
         f"{_fmt(m['covered_plain'])} / {_fmt(m['covered_trace'])}"),
    ]
    if m.get("drop_one_median") is not None:
        rows.append(("the answer's log-probability drop (nats) removing one copy: median / max / share of copies ≥ 1 nat",
                     f"{m['drop_one_median']:.3f} / {m['drop_one_max']:.1f} / {_fmt(m['drop_one_over_1'])}"))
        rows.append(("the same removing both copies of a fact: median / share of pairs under 1 nat",
                     f"{m['drop_both_median']:.1f} / {_fmt(m['drop_both_under_1'])}"))
    if m.get("beaten_examples"):
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(m["beaten_by"].items(), key=lambda kv: -kv[1]))
        rows.append((f"examples where a weaker copy loses to a text that states no needed fact, under plain attention: "
                     f"that text's kind / share of them where it is the last text, just before the question",
                     f"{m['beaten_examples']} examples: {kinds} / {_fmt(m['beaten_by_last'])}"))
    lines = [f"| measure ({m['examples']} examples, {m['pairs']} pairs of copies, {m['rounds']} rounds each) | value |",
             "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def render(data: dict) -> str:
    """The markdown page from the saved rows."""
    parts = [INTRO, *_run_lines(data), f"Machine: {data['machine']}", ""]
    if data.get("quality"):
        parts += ["## Quality and time", "", quality_table(data["quality"]), "", speed_ratios(data["quality"]), ""]
    if data.get("single_head"):
        h = data["single_head"]
        parts += [
            f"Diagnostic (`best_single_head`): the text-score averaging done for one (layer, head) at a time on "
            f"{h['examples']} built-in n=24 examples — best head P@k {h['best']:.2f} (layer {h['layer']}, head "
            f"{h['head']}), mean over heads {h['mean']:.2f}, chance {h['chance']:.2f}.",
            "",
        ]
    if data.get("duplicates"):
        dup = data["duplicates"]
        parts += [
            "## Evidence stated twice: where subsampling matters",
            "",
            DUPLICATE_SETUP,
            "",
            f"Mechanism, on the {dup['mechanism']['examples']} examples of the duplicated set "
            "(`duplicate_mechanism`):",
            "",
            mechanism_table(dup["mechanism"]),
            "",
            f"Design variants (`duplicate_variants`, {dup['variants'][0]['examples']} examples each; P@k with "
            "k = every copy of every needed fact):",
            "",
            variants_table(dup["variants"]),
            "",
            DUPLICATE_NOTES,
            "",
        ]
    if data.get("cost"):
        parts += [
            "## Cost of text_scores vs one sdpa forward",
            "",
            f"Tiny random Qwen2 (hidden 128, 4 layers, 4 query / 2 KV heads), one sequence of T tokens, "
            f"|R| = {ANSWER_ROWS} answer rows, {NUM_TEXTS} texts. `text_scores` = the same decoder forward "
            "with capture plus the |R|×T attention rows. Time: best of alternated runs in one process after a full-length "
            "warm-up of each; extra peak: VmHWM rise during one call in a fresh process.",
            "",
            cost_table(data["cost"]),
            "",
        ]
    parts += [NOTES]
    return "\n".join(parts)


DUPLICATE_SETUP = """\
**Set.** `long n=90, every needed fact twice`: the 86 texts of a long-context example
(`LongContextTask(num_texts=86).examples(20, seed=1)`: 4 needed facts, distractor facts, a
paraphrase of each needed fact, an injected instruction, filler) plus a second, verbatim copy of
each needed fact, each inserted at a uniformly random place (`with_copies`), ~950 tokens, inside
the model's 1,024 trained positions. `long n=86, no copies (control)` is the same 20 examples
without the second copies. **Ground truth: both copies of every needed fact (8 texts, k = 8).**
The answer copies `m=2`, and each copy states it verbatim; either copy alone is enough. Measured
(table below): removing one copy lowers the teacher-forced answer's log-probability by a median
0.002 nats (by ≥ 1 nat for 6 of the 160 copies), removing both by a median 9.2 nats (by < 1 nat
for 6 of the 80 pairs). Neither copy is "the" source —
no method and no reader could tell which one the answer "really" came from, so marking one of
them true and the other a distractor would make a coin flip the ground truth. Both are what the
answer drew on, and a method should rank both above every text that states no needed fact.
Paraphrases and the injected text stay outside the ground truth, as in every long set
(long_context.py). Chance P@k is 8/90. Leave-one-out's definition (the answer's log-probability
drop when one text is removed) gives each copy about 0 here: its twin still supplies the fact."""

DUPLICATE_NOTES = """\
**Result (written for the run above): the goal is met.** On `long n=90, every needed fact
twice`, AttnTrace at the paper's defaults reaches P@k 0.99; plain attention 0.86 (+0.14 for
AttnTrace), leave-one-out 0.15, ContextCite 0.69. The ablations say which part does it:
"no top-K" scores 0.99 like AttnTrace, "no subsampling" (top-K alone) 0.82 — the whole gain is
the subsampling (top-K cannot matter: a fact is 3 tokens). The copies are the cause, not the
length: on the control, the same 86 texts without the second copies, plain attention scores
1.00 (AttnTrace 0.97, leave-one-out and ContextCite 0.93).

**Why plain attention misses a copy.** In the full context (~950 tokens) the model's lookup of
`(m=` goes mostly to one copy: the weaker copy of a pair gets a median 17% of the pair's score,
and the stronger one is the copy nearer the question in 70% of the pairs. A sixth of a lookup
is little, and in 41% of the pairs the weaker copy scores below some text that states no needed
fact — in 19 of the 20 examples at least one copy does, and the text it loses to is a filler
text in 17 of them, in 58% of them the last text, just before the question.

**Why subsampling recovers it.** A round keeps 36 of the 90 texts (~400 tokens). In rounds
that hold both copies the lookup splits almost evenly (weaker copy's share 0.48, against 0.17
in the full context: the lopsided split comes with the long context), and in rounds that hold one
copy, that copy takes the whole lookup — a copy scores 1.9× more in rounds without its twin than
in rounds with it. Averaged over the rounds that drew it, the weaker copy falls below the best
other text in 1% of the pairs (41% under plain attention).

**Where it does not show** (variants, 10 examples each). With the built-in task's short
contexts (≤ 200 tokens) the copies split evenly enough and half a lookup is still far above any
distractor: plain attention stays at 0.98-1.00 even with every fact stated 6 times. At 50 and
70 texts AttnTrace gains only 0.03-0.04; copies placed right after their original split the
lookup more evenly (+0.06); three copies of each fact at 90 texts give +0.08. The set's size
(90 texts, random places) was chosen after trying these variants: the effect needs a context
long enough, inside the trained 1,024 positions, for the lookup to favour one copy.

**What "every copy is ground truth" costs plain attention, and what it does not.** Plain
attention does find every fact once: its top 4 texts hold a copy of each of the 4 needed facts
in every example (1.00), where AttnTrace's top 4 hold 0.79 of them — AttnTrace ranks both copies
of a fact high, so its top 4 can be two facts' pairs. Plain attention ranks the copy the model
read; AttnTrace ranks every text that could have supplied the answer.

**Leave-one-out and ContextCite.** Removing one copy leaves the answer's log-probability
almost unchanged (its twin supplies the fact), so leave-one-out gives both copies about 0 and
ranks by noise and by what else matters: 0.15 (chance 0.09), against 0.93 on the control.
ContextCite keeps each text with probability 1/2, so the answer loses a fact only in ablations
that drop both copies, and its linear surrogate credits each copy with only part of that
effect (our reading of its design; not measured separately): 0.69.

**Time.** These two sets ran while two training jobs of other sessions shared the 2 cores
(load 4-5): their seconds are slower than the older rows' and are comparable within their own
rows only (AttnTrace about 1/10 of leave-one-out's time at 86-90 texts)."""

NOTES = """\
## Reading the numbers (written for the runs above)

**Implementation.** `text_scores` equals the definition computed by hand from eager attention
maps to 1e-5 on Qwen2, Llama and GPT-2, and the subsampling rules are tested one by one
(tests/test_attribution.py). The numbers here are about the method on this model.

**The model lets attribution be judged.** The shipped model retrieves every fact it copies
through its last layer's heads, looks away from the context elsewhere, and looks away too when
a fact it asks for is missing (docs/default_model.md). The needed facts really drive the
answer: leave-one-out finds them (P@k 0.98-1.00 with 3-20 distractors, 0.93 at n=50) and so
does ContextCite (0.93-0.98).

**AttnTrace with the paper's defaults (K=5, ρ=0.4, B=30): P@k 1.00 / 1.00 / 1.00 at n=7 / 12 /
24 and 0.99 at n=50 — at or above leave-one-out (1.00 / 1.00 / 0.98 / 0.93) and ContextCite
(0.98 / 0.96 / 0.94 / 0.93) on every set; 1.00 on the two examples past the trained length
(n=200), where leave-one-out finds none and ContextCite 0.75.** On the earlier model, which
had not seen contexts with missing facts, the same benchmark gave AttnTrace 0.81 / 0.72 / 0.84
at n=7 / 12 / 24: a subsampling round that drops a needed fact still teacher-forces `(m=…`,
and that model's retrieval heads then landed on some other fact, which took the round's
credit. Teaching the model to look away when the fact is missing removed that failure; plain
attention and "no subsampling" were already at 1.00 on these sets. At n=200 the
subsampling is what works (1.00 vs 0.50 without): the texts far outnumber what the answer
reads. Inside the trained length, subsampling matters where the evidence is stated twice
(above: 0.99 against plain attention's 0.86).

**Top-K** (K=5) equals "no top-K" on the built-in sets by construction (a fact is 2-3 tokens,
fewer than K) and also at n=50/200 here: the retrieval heads put their mass on one token.

**Injected text and paraphrases.** AttnTrace never puts the injected instruction in its top 5
(the answer attributed is the correct one, which does not follow it); leave-one-out does in
15% of the n=50 examples. Paraphrases of the needed facts take 0-6% of any method's top 5: the
model copies the `m=2` form, and the attention and the ablation methods alike see that.

**Time.** AttnTrace costs 30 rounds at 40% of the context: about 1/3 of leave-one-out's time
at n=50 and 1/24 at n=200; at n ≤ 24 leave-one-out (n + 1 short passes) is as cheap or
cheaper. ContextCite (64 ablated passes at batch 1) sits between them. Plain attention is one
pass.

**Cost of `text_scores`** (part 2, kept from its earlier run: the cost part does not depend
on the shipped model). From 4K to 32K tokens its time is within ~5% of one plain sdpa forward,
and 32K completes: nothing T×T is ever allocated. Extra peak memory 1.13× at 16K and 1.26× at
32K (allocator noise is about ±0.1 here).

**What limits these numbers.** One shared 2-core CPU (wall-clock ±30%); 20-30 examples per
set (2 at n=200, where leave-one-out takes 1.5 minutes an example); one synthetic task and a
model trained to retrieve through attention and to look away otherwise (docs/default_model.md)
— a clean test bed, not a pretrained LLM.
"""


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the examples, T up to 4K")
    parser.add_argument("--no-write", action="store_true", help=f"print only; do not write {DOC.relative_to(ROOT)}")
    parser.add_argument("--skip-cost", action="store_true", help="run part 1 only (part 2 kept from the saved JSON)")
    parser.add_argument("--skip-quality", action="store_true", help="run part 2 only (part 1 kept from the saved JSON)")
    parser.add_argument("--render", action="store_true", help="re-render the page from the saved JSON, no run")
    parser.add_argument("--skip-context-cite", action="store_true",
                        help=f"run part 1 without ContextCite (otherwise it needs `{INSTALL_HINT}`)")
    parser.add_argument("--examples", default="n7=30,n12=30,n24=30,n50=20,n200=2,n86=20,d90=20",
                        help="examples per set")
    parser.add_argument("--sets", help=f"run part 1 on these sets only (comma-separated: {','.join(SET_KEYS)}); "
                        "the other sets' rows are kept from the saved JSON")
    parser.add_argument("--variant-examples", type=int, default=10,
                        help="examples per design variant of the duplicated set")
    parser.add_argument("--memory", nargs=2, metavar=("VARIANT", "T"), help=argparse.SUPPRESS)
    parser.add_argument("--timing", type=int, metavar="T", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(measure_memory(args.memory[0], int(args.memory[1]))))
        return
    if args.timing:
        print(json.dumps(measure_time(args.timing)))
        return
    saved = DOC.with_suffix(".json")
    if args.render:
        DOC.write_text(render(json.loads(saved.read_text())))
        print(f"wrote {DOC.relative_to(ROOT)} from {saved.relative_to(ROOT)}")
        return
    if not args.skip_quality and not args.skip_context_cite:
        try:  # fail before any work, not after the other methods ran
            _context_cite_adapter()
        except ImportError as err:
            sys.exit(f"error: the ContextCite comparison needs the bench extra ({err}); run `{INSTALL_HINT}` "
                     "or pass --skip-context-cite")
    import torch

    examples = {k: int(v) for k, v in (item.split("=") for item in args.examples.split(","))}
    only = None if args.sets is None else {key.strip() for key in args.sets.split(",") if key.strip()}
    unknown = sorted((only or set()) - set(SET_KEYS)) + sorted(set(examples) - set(SET_KEYS))
    if unknown or only == set():
        sys.exit(f"error: unknown set(s) {', '.join(unknown) or '(none given)'}; the sets are {', '.join(SET_KEYS)}")
    missing = sorted(k for k in SET_KEYS if k not in examples and (only is None or k in only))
    if missing:
        sys.exit(f"error: --examples gives no count for {', '.join(missing)}")
    started = time.perf_counter()
    run = {
        "command": " ".join([COMMAND, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    machine = (f"{_cpu_name()} ({platform.machine()}), {torch.get_num_threads()} cores visible, torch "
               f"{torch.__version__}, run with 1 intra-op thread")
    data = {"machine": machine, "runs": {}}
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    variant_count = max(1, args.variant_examples // 4) if args.quick else args.variant_examples
    if args.skip_quality:  # keep the saved part (and say which run made it)
        for key in ("quality", "single_head", "duplicates"):
            data[key] = previous.get(key)
        if "quality" in previous.get("runs", {}):
            data["runs"]["quality"] = previous["runs"]["quality"]
    elif only is not None:  # these sets anew, every other row (and the diagnostic) as saved
        data["machine"] = previous.get("machine", data["machine"])
        if "quality" in previous.get("runs", {}):
            data["runs"]["quality"] = previous["runs"]["quality"]
        own_run = {**run, "machine": machine}
        fresh = [{**row, "run": own_run} for row in quality(args.quick, examples, not args.skip_context_cite, only)]
        names = {key: name for key, name, _, _ in _sets(True, {k: 1 for k in SET_KEYS})}
        kept = previous.get("quality") or []
        data["quality"] = [
            row for key in SET_KEYS
            for row in (fresh if key in only else kept) if row["set"] == names[key]
        ]
        data["single_head"] = previous.get("single_head")
        data["duplicates"] = previous.get("duplicates")
        if "d90" in only:
            data["duplicates"] = duplicates(args.quick, examples["d90"], variant_count, own_run)
    else:
        data["quality"] = quality(args.quick, examples, not args.skip_context_cite)
        data["single_head"] = best_single_head(5 if args.quick else 20)
        data["duplicates"] = duplicates(args.quick, examples["d90"], variant_count, run)
        data["runs"]["quality"] = run
    if args.skip_cost:
        data["cost"] = previous.get("cost")
        if "cost" in previous.get("runs", {}):
            data["runs"]["cost"] = previous["runs"]["cost"]
    else:
        data["cost"] = cost([1024, 4096] if args.quick else [1024, 4096, 16384, 32768])
        data["runs"]["cost"] = run
    page = render(data)
    print(page)
    print(f"total {time.perf_counter() - started:.0f} s")
    if not args.no_write:
        saved.write_text(json.dumps(data, indent=1) + "\n")
        DOC.write_text(page)
        print(f"wrote {DOC.relative_to(ROOT)} and {saved.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
