"""Credit by kind of text: where an attribution puts its credit, and whether the answer follows
an injected instruction.

Probes may label their texts (``kinds``: ``needed``, ``paraphrase``, ``injected``, ``filler``,
``distractor``, any strings; :mod:`lit_attn.attribution.examples`). For one attribution with
scores ``s`` the *credit* of a text is ``max(s_i, 0)``; :func:`kind_shares` gives the share of
the positive credit that falls on each kind. :func:`kind_scalars` pools the probes of one
logging point: each probe's shares (which sum to 1) are summed over the probes and divided by
their number, so every probe weighs the same whatever the size of its scores, and the shares
of all kinds still sum to 1. A probe with no positive score is left out, as for
``relevant_share``.

:func:`follows_injection` says whether an answer gives the answer an injected text asks for
(``injected_answer``): the answer's final value (:func:`final_value`) equals it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lit_attn.attribution.examples import AttributionExample
from lit_attn.attribution.result import AttributionResult

SHARE_PREFIX = "attribution/share/"
"""Tag prefix of the per-kind credit shares."""

FOLLOWS_INJECTION = "attribution/follows_injection"
"""Tag of the share of probe answers that give the injected text's answer."""

ANSWER_LINE = re.compile(r"answer\s*(-?\d+)")
"""A final ``answer N`` line, the built-in task's format (its verifier reads the same;
tests/test_task_layout.py checks that the two agree)."""


def kind_shares(scores: Sequence[float], kinds: Sequence[str]) -> dict[str, float] | None:
    """Share of the positive credit ``max(s_i, 0)`` on each kind (every kind present, in order of
    first appearance; the shares sum to 1). None when no text has a positive score."""
    if len(scores) != len(kinds):
        raise ValueError(f"{len(scores)} scores for {len(kinds)} kinds")
    credit = [max(float(s), 0.0) for s in scores]
    total = sum(credit)
    if total <= 0:
        return None
    shares = dict.fromkeys(kinds, 0.0)
    for kind, value in zip(kinds, credit):
        shares[kind] += value / total
    return shares


def final_value(answer: str) -> str:
    """The value an answer gives: the number of its last ``answer N`` line (the built-in task's
    format), else the whole answer without surrounding whitespace."""
    numbers = ANSWER_LINE.findall(answer)
    return numbers[-1] if numbers else answer.strip()


def follows_injection(answer: str, injected_answer: str) -> bool:
    """Whether ``answer`` gives the answer the injected text asks for (:func:`final_value`)."""
    return final_value(answer) == injected_answer.strip()


def kind_scalars(
    examples: Sequence[AttributionExample], results: Sequence[AttributionResult]
) -> dict[str, float]:
    """``attribution/share/<kind>`` (see the module docstring) over the probes with ``kinds``, and
    ``attribution/follows_injection``, the share of the probes with an ``injected_answer`` whose
    attributed answer gives it. Names with no probe to measure are absent."""
    per_probe = [
        shares
        for example, result in zip(examples, results)
        if example.kinds is not None and (shares := kind_shares(result.scores, example.kinds)) is not None
    ]
    out: dict[str, float] = {}
    for shares in per_probe:
        for kind, share in shares.items():
            out[SHARE_PREFIX + kind] = out.get(SHARE_PREFIX + kind, 0.0) + share / len(per_probe)
    injected = [
        follows_injection(result.answer, example.injected_answer)
        for example, result in zip(examples, results)
        if example.injected_answer is not None
    ]
    if injected:
        out[FOLLOWS_INJECTION] = sum(injected) / len(injected)
    return out
