"""The clipped policy-gradient loss used for RL fine-tuning of a language model.

Everything here works on plain tensors, one value per response token, so it can be tested
by hand and reused by any training loop. The inputs are the current policy's log-probs of
the sampled tokens, the log-probs recorded when the tokens were sampled ("old"), the
advantages (one per sequence or one per token) and a 0/1 mask of the tokens that count.

Per token, with ``r = exp(logp - logp_old)`` (the log-ratio clamped to ±20 first):

* **PPO with clip-higher** (DAPO): ``pg = max(-A·r, -A·clip(r, 1-clip_low, 1+clip_high))``.
  An upper bound wider than the lower one lets unlikely tokens with positive advantage
  gain probability faster, which keeps exploration (entropy) from collapsing.
* **Dual clip** (only where ``A < 0``): ``pg = min(pg, -A·dual_clip)``. With a negative
  advantage the plain PPO objective is unbounded as ``r`` grows; the dual clip caps it.
* **KL penalty** towards a reference policy (optional), the "k3" estimator
  ``exp(ref - logp) - (ref - logp) - 1``, which is non-negative and unbiased for
  KL(policy ‖ ref) when the tokens are sampled from the policy; clamped to ±10 per token
  (as verl's "low_var_kl", which the authors' code uses); added as ``kl_coef · kl``.

The per-token losses are reduced in one of three ways:

* ``"token_mean"`` (DAPO): every masked token in the batch has the same weight;
  sum over masked tokens / number of masked tokens.
* ``"seq_mean_token_mean"`` (GRPO): mean over each sequence's masked tokens, then mean
  over the sequences that have at least one masked token. Tokens of long answers weigh less.
* ``"seq_mean_token_sum_norm"`` (Dr. GRPO): each sequence's token-loss sum divided by the
  constant ``T`` (the mask's second dimension), then mean over all ``B`` sequences. No
  length-dependent normaliser, so no bias towards long wrong / short right answers.

Every reduction divides a sum by a quantity of the batch (its token count, its number of
sequences with tokens, or ``B·T``). With gradient accumulation the micro-batches must share
the *whole* minibatch's quantity, or "token_mean" of each micro-batch is not the token mean of
the batch: :func:`loss_normaliser` computes it for the whole minibatch (summed over processes
under data parallelism), and ``aggregate(..., normaliser=...)`` divides a micro-batch's sum by
it, so the micro-batches' losses add up to the whole minibatch's loss exactly.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from lit_attn.errors import UserError

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)

LOG_RATIO_CLAMP = 20.0
"""Bound on |logp - logp_old| and |ref - logp| before exponentiation (exp(20) ≈ 4.9e8)."""

KL_CLAMP = 10.0
"""Bound on each token's k3 KL value (verl's "low_var_kl"): a token past it adds no KL gradient."""


def _check_shapes(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (B, T), got shape {tuple(logprobs.shape)}")
    shape = tuple(logprobs.shape)
    for name, tensor in (("old_logprobs", old_logprobs), ("mask", mask), ("ref_logprobs", ref_logprobs)):
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} shape {tuple(tensor.shape)} must equal logprobs shape {shape}")
    if tuple(advantages.shape) not in ((shape[0],), shape):
        raise ValueError(
            f"advantages shape {tuple(advantages.shape)} must be (B,) = {(shape[0],)} or (B, T) = {shape}"
        )


def _masked_token_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum of ``values * weights`` over everything / total weight (0 when there is no weight)."""
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def loss_normaliser(mask: torch.Tensor, aggregation: Aggregation, *, length: int | None = None) -> torch.Tensor:
    """The quantity ``aggregation`` divides by, for the (B, T) ``mask`` of a whole minibatch:
    its masked tokens (``token_mean``), its sequences with at least one masked token
    (``seq_mean_token_mean``) or ``B · length`` (``seq_mean_token_sum_norm``; ``length``
    defaults to T). A float tensor; sum it over processes for a global minibatch."""
    weights = mask.float()
    if aggregation == "token_mean":
        return weights.sum()
    if aggregation == "seq_mean_token_mean":
        return (weights.sum(dim=-1) > 0).float().sum()
    if aggregation == "seq_mean_token_sum_norm":
        return torch.tensor(float(mask.shape[0] * (mask.shape[-1] if length is None else length)), device=mask.device)
    raise UserError(f"unknown loss aggregation {aggregation!r}; use one of {', '.join(map(repr, AGGREGATIONS))}")


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation, *, normaliser: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Reduce a (B, T) tensor of per-token losses to a scalar (see the module docstring).

    ``normaliser``: the whole minibatch's :func:`loss_normaliser` when this is one micro-batch
    of it (None = this batch's own). Returns 0 (still attached to ``per_token``'s graph) when
    the mask is all zeros.
    """
    weights = mask.to(per_token.dtype)
    if normaliser is None:
        normaliser = loss_normaliser(mask, aggregation)
    normaliser = torch.as_tensor(normaliser, dtype=per_token.dtype, device=per_token.device).clamp(min=1.0)
    if aggregation == "token_mean":
        return (per_token * weights).sum() / normaliser
    if aggregation == "seq_mean_token_mean":
        tokens_per_seq = weights.sum(dim=-1)
        seq_loss = (per_token * weights).sum(dim=-1) / tokens_per_seq.clamp(min=1.0)
        return seq_loss.sum() / normaliser  # sequences without tokens add 0
    if aggregation == "seq_mean_token_sum_norm":
        return (per_token * weights).sum() / normaliser
    raise UserError(f"unknown loss aggregation {aggregation!r}; use one of {', '.join(map(repr, AGGREGATIONS))}")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 3.0,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: Aggregation = "token_mean",
    normaliser: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy-gradient loss (to minimise) and detached scalar statistics.

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the policy being trained
            (the only input gradients flow into).
        old_logprobs: (B, T) log-probs recorded at sampling time (treated as constants).
        advantages: (B,) one per sequence, broadcast over its tokens, or (B, T) per token
            (treated as constants).
        mask: (B, T) 1 for response tokens that count, 0 otherwise. Masked-out positions may
            hold any value, even inf/NaN, without affecting the loss or its gradient.
        clip_low, clip_high: the ratio is clipped to ``[1 - clip_low, 1 + clip_high]``.
        dual_clip: cap ``-A·dual_clip`` on the loss of negative-advantage tokens (> 1), or
            ``None`` to disable.
        ref_logprobs: (B, T) reference-policy log-probs (constants). Required when
            ``kl_coef > 0``; if given with ``kl_coef == 0`` the KL is only reported.
        kl_coef: weight of the k3 KL penalty added to every token's loss.
        aggregation: "token_mean", "seq_mean_token_mean" or "seq_mean_token_sum_norm".
        normaliser: with gradient accumulation, the whole minibatch's :func:`loss_normaliser`
            (then the micro-batches' losses sum to the minibatch's loss); None = this batch's.

    Returns:
        ``(loss, stats)``; ``stats`` holds detached scalars, each a mean over masked tokens:
        "pg_loss", "kl", "clip_ratio/low_mean", "clip_ratio/high_mean",
        "clip_ratio/region_mean", "clip_ratio/dual_mean", "ratio_mean".
    """
    _check_arguments(aggregation, clip_low, clip_high, dual_clip, kl_coef, ref_logprobs)
    _check_shapes(logprobs, old_logprobs, advantages, mask, ref_logprobs)

    valid = mask != 0
    weights = mask.to(logprobs.dtype)
    adv = advantages.detach().to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    adv = adv.expand_as(logprobs)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)

    # Masked-out positions get log-ratio 0 before exp: no inf/NaN can reach the loss or its gradient.
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), zero)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)

    lower, upper = 1.0 - clip_low, 1.0 + clip_high
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(lower, upper)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    negative = adv < 0
    if dual_clip is not None:
        pg = torch.where(negative, torch.minimum(pg, -adv * dual_clip), pg)
    pg = torch.where(valid, pg, zero)

    per_token = pg
    kl: torch.Tensor | None = None
    if ref_logprobs is not None:
        ref_diff = torch.where(valid, ref_logprobs.detach() - logprobs, zero)
        ref_diff = ref_diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        kl = (torch.exp(ref_diff) - ref_diff - 1.0).clamp(-KL_CLAMP, KL_CLAMP)
        if kl_coef > 0.0:
            per_token = pg + kl_coef * kl

    loss = aggregate(per_token, weights, aggregation, normaliser=normaliser)

    return loss, _statistics(pg, kl, ratio, adv, weights, lower, upper, dual_clip)


def _check_arguments(
    aggregation: str, clip_low: float, clip_high: float, dual_clip: float | None, kl_coef: float,
    ref_logprobs: torch.Tensor | None,
) -> None:
    if aggregation not in AGGREGATIONS:
        raise UserError(f"unknown loss aggregation {aggregation!r}; use one of {', '.join(map(repr, AGGREGATIONS))}")
    if not (0.0 <= clip_low < 1.0):
        raise UserError(f"clip_low must be in [0, 1), got {clip_low}")
    if clip_high < 0.0:
        raise UserError(f"clip_high must be >= 0, got {clip_high}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise UserError(f"dual_clip must be > 1 (or None to disable it), got {dual_clip}")
    if kl_coef < 0.0:
        raise UserError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0.0 and ref_logprobs is None:
        raise UserError(f"kl_coef={kl_coef} > 0 needs ref_logprobs (the reference model's log-probs)")


@torch.no_grad()
def _statistics(
    pg: torch.Tensor, kl: torch.Tensor | None, ratio: torch.Tensor, adv: torch.Tensor, weights: torch.Tensor,
    lower: float, upper: float, dual_clip: float | None,
) -> dict[str, torch.Tensor]:
    """The loss's detached statistics, each a mean over the masked tokens."""
    ratio = ratio.detach()
    negative = adv < 0
    low = negative & (ratio < lower)
    high = (adv > 0) & (ratio > upper)
    dual = negative & (ratio > dual_clip) if dual_clip is not None else torch.zeros_like(low)
    dtype = pg.dtype
    return {
        "pg_loss": _masked_token_mean(pg.detach(), weights),
        "kl": _masked_token_mean(kl.detach(), weights) if kl is not None else pg.new_zeros(()),
        "clip_ratio/low_mean": _masked_token_mean(low.to(dtype), weights),
        "clip_ratio/high_mean": _masked_token_mean(high.to(dtype), weights),
        "clip_ratio/region_mean": _masked_token_mean((low | high).to(dtype), weights),
        "clip_ratio/dual_mean": _masked_token_mean(dual.to(dtype), weights),
        "ratio_mean": _masked_token_mean(ratio, weights),
    }
