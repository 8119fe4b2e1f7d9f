"""Where to branch and how much to explore: the selection rules of AttnRL, as pure functions.

Everything here is plain Python / torch on small inputs (one response's step scores, one
prompt's correctness pattern), so each rule of docs/attnrl.md §3-4 is testable by hand:

* :func:`atb_branch_steps` — Attention-based Tree Branching (§3): the earliest steps among the
  top ``ratio`` of a response's FCI scores, with the optional token-distance rule;
* :func:`early_branch_steps` — the "early steps" ablation (§8): the first eligible steps;
* :func:`entropy_branch_offsets` — TreeRL's branching at the highest-entropy tokens (§8);
* :func:`expansion_count`, :func:`choose_responses` — adaptive sampling (§4): how many and
  which responses of a prompt get branched;
* :class:`RunningMean`, :func:`prompt_mean_fci` — the running mean FCI of all-correct prompts
  (§4's FCI filter);
* :func:`adaptive_batch_size` — the prompt batch size update with λ (§4).

The branch rules (:mod:`lit_attn.exploration.rules`) and the step's stages
(:mod:`lit_attn.exploration.stages`) apply them; ``lit_attn.callbacks.AttentionBranchCallback``
runs them during training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lit_attn.attention.steps import Span
from lit_attn.errors import UserError


def atb_branch_steps(
    fci: torch.Tensor | Sequence[float],
    step_spans: Sequence[Span],
    *,
    ratio: float = 0.2,
    num_points: int = 2,
    min_token_distance: int = 0,
) -> list[int]:
    """Step indices to branch at, by Attention-based Tree Branching (docs/attnrl.md §3).

    Args:
        fci: one FCI score per span (span 0 = the prompt), as :func:`~lit_attn.attention.fci_scores`
            returns them.
        step_spans: the spans of :func:`~lit_attn.attention.split_steps` (span 0 = the prompt).
        ratio: the top fraction of the response's step scores that are candidates (0.2 = the
            steps at or above the 0.8-quantile). A quantile of 0 becomes the smallest positive
            score, so zero-score steps are not candidates (unless no step scores above 0).
        num_points: how many branch points per response.
        min_token_distance: optional spacing (0 = off; the paper's setting used 512): a chosen
            step must start at least this many tokens into the whole sequence (prompt
            included), and the gap from one chosen step's end to the next one's start must be
            at least this long.

    Returns:
        Up to ``num_points`` step indices in increasing order: the earliest candidates (in
        position order, not score order) that keep the spacing; when fewer qualify, the
        earliest remaining eligible steps fill up, whatever their score or spacing — so a
        response with at least ``num_points`` eligible steps always gets ``num_points``. The
        first response step (index 1) is never eligible: branching there would regenerate the
        whole response. (The authors' code repeats steps when a response has fewer eligible
        steps than ``num_points``; here such a response gets fewer points.)
    """
    scores = torch.as_tensor(fci, dtype=torch.float64).reshape(-1)
    if scores.numel() != len(step_spans):
        raise UserError(f"got {scores.numel()} FCI scores for {len(step_spans)} step spans; pass one score per span")
    if not 0 < ratio <= 1:
        raise UserError(f"ratio must be in (0, 1], got {ratio} (the paper's value is 0.2)")
    if num_points < 1:
        raise UserError(f"num_points must be >= 1, got {num_points}")
    if len(step_spans) < 3:
        return []
    response = scores[1:]
    threshold = float(torch.quantile(response, 1.0 - ratio))
    if threshold <= 0:
        positive = response[response > 0]
        threshold = float(positive.min()) if positive.numel() else 0.0  # no positive score: every step
    candidates = [k for k in range(2, len(step_spans)) if scores[k] >= threshold]
    return _pick(candidates, step_spans, num_points, min_token_distance)


def early_branch_steps(step_spans: Sequence[Span], *, num_points: int = 2, min_token_distance: int = 0) -> list[int]:
    """The "early steps" ablation (docs/attnrl.md §8): the first ``num_points`` eligible steps (index ≥ 2),
    FCI ignored, with the same spacing and fill-up rule as :func:`atb_branch_steps`."""
    return _pick(list(range(2, len(step_spans))), step_spans, num_points, min_token_distance)


def _pick(candidates: list[int], step_spans: Sequence[Span], num_points: int, min_distance: int) -> list[int]:
    """The earliest ``candidates`` that keep the spacing, then the earliest eligible steps."""
    chosen: list[int] = []
    for k in candidates:
        if len(chosen) == num_points:
            break
        if _spaced(k, chosen, step_spans, min_distance):
            chosen.append(k)
    for k in range(2, len(step_spans)):
        if len(chosen) == num_points:
            break
        if k not in chosen:
            chosen.append(k)
    return sorted(chosen)


def _spaced(k: int, chosen: list[int], step_spans: Sequence[Span], min_distance: int) -> bool:
    """Step ``k`` starts ``min_distance`` into the sequence and that far from every chosen step."""
    if min_distance <= 0:
        return True
    start, end = step_spans[k]
    if start < min_distance:
        return False
    for c in chosen:
        other_start, other_end = step_spans[c]
        gap = other_start - end if other_start >= end else start - other_end
        if gap < min_distance:
            return False
    return True


def entropy_branch_offsets(entropy: torch.Tensor | Sequence[float], *, num_points: int = 2) -> list[int]:
    """TreeRL's branch points (docs/attnrl.md §8): the ``num_points`` highest-entropy response tokens.

    ``entropy[t]`` is the entropy of the next-token distribution that produced response token
    ``t``; branching at offset ``t`` samples new tokens from ``t`` on. As in the authors' code,
    every token but the last may be chosen — offset 0 included (a continuation from the prompt
    alone, a fresh response in the same tree). Returns token offsets in increasing order; ties
    go to the earlier token.
    """
    values = torch.as_tensor(entropy, dtype=torch.float64).reshape(-1)
    if values.numel() < 2:
        return []
    inside = values[:-1]
    k = min(num_points, inside.numel())
    order = sorted(range(inside.numel()), key=lambda t: (-float(inside[t]), t))[:k]
    return sorted(order)


def expansion_count(num_correct: int, group_size: int) -> int:
    """Responses to expand for a prompt with ``num_correct`` of ``group_size`` correct:
    ``ceil(exp(-z) · G)`` with ``z = num_correct / G`` (docs/attnrl.md §4, as the authors' code).

    For G = 6 and 0..6 correct: 6, 6, 5, 4, 4, 3, 3. (All-correct prompts go through the FCI
    filter instead; see :func:`lit_attn.exploration.stages.plan_expansion`.)
    """
    if not 0 <= num_correct <= group_size:
        raise UserError(f"num_correct must be in 0..{group_size}, got {num_correct}")
    z = num_correct / group_size
    return _exact_ceil(math.exp(-z) * group_size)


def _exact_ceil(value: float) -> int:
    """``ceil(value)``, float noise removed first: a value within 1e-9 of an integer is that
    integer (``0.1 * 21 + 0.9 * 21`` is 21.000000000000004 in floats; its ceil must be 21)."""
    return math.ceil(round(value, 9))


def choose_responses(correct: Sequence[bool], count: int, generator: torch.Generator) -> list[int]:
    """Which responses of a prompt to expand (docs/attnrl.md §4), as sorted indices.

    With ``z`` the fraction correct: if ``z ≥ 0.5`` every incorrect response comes first, then
    random correct ones; if ``z < 0.5`` every correct response first, then random incorrect
    ones. If the first group alone exceeds ``count``, a random subset of it. ``generator``
    drives every random choice (the caller's own, so training randomness is untouched).
    """
    n = len(correct)
    count = max(0, min(count, n))
    z = sum(bool(c) for c in correct) / max(n, 1)
    incorrect = [i for i, c in enumerate(correct) if not c]
    right = [i for i, c in enumerate(correct) if c]
    first, rest = (incorrect, right) if z >= 0.5 else (right, incorrect)

    def sample(pool: list[int], k: int) -> list[int]:
        if k >= len(pool):
            return list(pool)
        picks = torch.randperm(len(pool), generator=generator)[:k].tolist()
        return [pool[p] for p in picks]

    chosen = sample(first, count)
    chosen += sample(rest, count - len(chosen))
    return sorted(chosen)


@dataclass
class RunningMean:
    """Mean of every value added so far (state: ``total`` and ``count``)."""

    total: float = 0.0
    count: int = 0

    def update(self, values: Sequence[float]) -> None:
        self.total += float(sum(values))
        self.count += len(values)

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else 0.0


def prompt_mean_fci(fci_per_response: Sequence[torch.Tensor]) -> float:
    """``(1/G) Σ_i mean_k y_i[k]`` over the response steps (``k ≥ 1``) of a prompt's G responses."""
    means = [float(y[1:].mean()) if y.numel() > 1 else 0.0 for y in fci_per_response]
    return sum(means) / max(len(means), 1)


def adaptive_batch_size(previous: int, target_sequences: int, sequences_left: int, *, lam: float = 0.9) -> int:
    """``B_m = ceil((1-λ)·⌊B_{m-1}·B′/B″⌋ + λ·B_{m-1})`` (docs/attnrl.md §4, as the authors' code).

    ``previous`` is B_{m-1}, the value this recurrence gave last (the batch size last decided,
    not the size of some batch trained since); ``target_sequences`` is B′, ``sequences_left``
    B″ (training sequences after this step's zero-advantage filter; 0 is treated as 1 so an
    all-filtered step grows the batch instead of dividing by zero). The result is at least 1.
    """
    if not 0 <= lam <= 1:
        raise UserError(f"lambda must be in [0, 1], got {lam} (the paper's value is 0.9)")
    wanted = previous * target_sequences // max(sequences_left, 1)
    return max(1, _exact_ceil((1 - lam) * wanted + lam * previous))
