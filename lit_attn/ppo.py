"""The PPO update on an :class:`~lit_attn.experience.Experience`, as a function any
LightningModule with manual optimisation can call (docs/attnrl.md §7)::

    from lit_attn.ppo import PPOSettings, ppo_update

    def training_step(self, batch, batch_idx):
        experience = self.experience_source.make_experience(self, batch)
        ppo_update(self, self.model, experience, PPOSettings(minibatch_size=64))

:class:`~lit_attn.PolicyModule` trains this way for GRPO and for the tree callbacks alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning import LightningModule

from lit_attn.experience import Experience
from lit_attn.logprobs import token_logprobs
from lit_attn.loss import Aggregation, policy_loss


@dataclass(frozen=True)
class PPOSettings:
    """How one update trains (the PolicyModule arguments of the same names)."""

    minibatch_size: int = 64
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = 3.0
    kl_coef: float = 0.0
    aggregation: Aggregation = "token_mean"
    grad_clip: float = 1.0
    temperature: float = 1.0
    logprob_chunk_size: int = 256


def completion_logprobs(
    model: torch.nn.Module, batch: Experience, settings: PPOSettings, *, with_entropy: bool = False,
    rows: slice | torch.Tensor = slice(None),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropies) of the completion tokens of ``batch``, shape (n, C)."""
    lp, ent = token_logprobs(
        model, batch.input_ids[rows], batch.attention_mask[rows],
        chunk_size=settings.logprob_chunk_size, temperature=settings.temperature, with_entropy=with_entropy,
    )
    start = batch.prompt_length - 1
    return lp[:, start:], (ent[:, start:] if ent is not None else None)


def ppo_update(
    host: LightningModule,
    model: torch.nn.Module,
    experience: Experience,
    settings: PPOSettings,
    *,
    ref_model: torch.nn.Module | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """PPO clip-higher updates of ``model`` over shuffled minibatches of ``experience``.

    ``host`` gives the optimiser (``host.optimizers()``), ``manual_backward`` and gradient
    clipping, so Lightning's strategy and precision apply. Behaviour log-probs come from the
    experience (the tree step records them); when it has none, the current weights sampled it
    and they are computed here (skipped with a single minibatch, where the first forward with
    gradients gives the same numbers). Returns each statistic averaged over the minibatches.
    """
    mask = experience.completion_mask.float()
    n = experience.num_sequences
    order = torch.randperm(n, generator=generator).to(experience.input_ids.device)
    minibatches = order.split(settings.minibatch_size)
    old_lp = experience.old_logprobs
    with torch.no_grad():
        if old_lp is None and len(minibatches) > 1:
            old_lp = completion_logprobs(model, experience, settings)[0]
        ref_lp = completion_logprobs(ref_model, experience, settings)[0] if ref_model is not None else None

    optimizer = host.optimizers()
    totals: dict[str, float] = {}
    for rows in minibatches:
        lp, ent = completion_logprobs(model, experience, settings, with_entropy=True, rows=rows)
        loss, stats = policy_loss(
            lp, old_lp[rows] if old_lp is not None else lp.detach(), experience.advantages[rows], mask[rows],
            clip_low=settings.clip_low, clip_high=settings.clip_high, dual_clip=settings.dual_clip,
            ref_logprobs=ref_lp[rows] if ref_lp is not None else None, kl_coef=settings.kl_coef,
            aggregation=settings.aggregation,
        )
        optimizer.zero_grad()
        host.manual_backward(loss)
        if settings.grad_clip > 0:
            host.clip_gradients(optimizer, gradient_clip_val=settings.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        m = mask[rows]
        stats = {**stats, "loss": loss.detach(), "entropy": (ent.detach() * m).sum() / m.sum().clamp(min=1)}
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + float(v) / len(minibatches)
    return totals
