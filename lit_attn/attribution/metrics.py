"""How well attributions find the ground-truth texts: the AttributionCallback's scalars.

:func:`ranking_metrics` measures one attribution against its ground truth;
:func:`attribution_scalars` averages them over the examples of one logging point and adds the
credit by kind of text (:mod:`lit_attn.attribution.kinds`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lit_attn.attribution.examples import AttributionExample
from lit_attn.attribution.kinds import kind_scalars
from lit_attn.attribution.result import AttributionResult

RANKING_METRICS = ("precision_at_k", "recall_at_k", "relevant_share")
"""The names :func:`ranking_metrics` returns."""


def ranking_metrics(scores: Sequence[float], relevant: Sequence[int], k: int) -> dict[str, float]:
    """How well one attribution finds the ground-truth texts.

    With ``n`` texts, scores ``s``, the set ``G`` of relevant indices (non-empty) and
    ``top`` = the ``k' = min(k, n)`` highest-scoring texts (ties broken by position):

    * ``precision_at_k`` = |top ∩ G| / k'
    * ``recall_at_k`` = |top ∩ G| / |G|
    * ``relevant_share`` = Σ_{i∈G} max(s_i, 0) / Σ_i max(s_i, 0): the share of the positive
      score mass that falls on the relevant texts (1 = all credit on the truth, 0 = none);
      NaN when no text has a positive score (left out of the logged mean).
    """
    n = len(scores)
    truth = set(relevant)
    top = sorted(range(n), key=lambda i: (-scores[i], i))[: min(k, n)]
    hits = len(truth.intersection(top))
    positive = [max(float(s), 0.0) for s in scores]
    total = sum(positive)
    return {
        "precision_at_k": hits / len(top),
        "recall_at_k": hits / len(truth),
        "relevant_share": sum(positive[i] for i in truth) / total if total > 0 else math.nan,
    }


def attribution_scalars(
    examples: Sequence[AttributionExample], results: Sequence[AttributionResult], k: int
) -> dict[str, float]:
    """The ``attribution/*`` scalars of one logging point: ``attribution/seconds`` (mean wall-clock
    seconds per example) and the mean of each :func:`ranking_metrics` value over the examples
    that carry ground truth (a NaN ``relevant_share`` left out; a name with no value at all is
    absent), then ``attribution/share/<kind>`` and ``attribution/follows_injection``
    (:func:`~lit_attn.attribution.kinds.kind_scalars`) where the examples carry kinds."""
    rows = [
        ranking_metrics(list(result.scores), example.relevant, k)
        for example, result in zip(examples, results)
        if example.relevant
    ]
    out = {"attribution/seconds": sum(r.seconds for r in results) / len(results)}
    for name in RANKING_METRICS:
        values = [row[name] for row in rows if not math.isnan(row[name])]
        if values:
            out[f"attribution/{name}"] = sum(values) / len(values)
    out.update(kind_scalars(examples, results))
    return out
