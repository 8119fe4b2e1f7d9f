"""The PPO update on an :class:`~lit_attn.experience.Experience`, as a function any
LightningModule with manual optimisation can call (docs/attnrl.md §7)::

    from lit_attn.ppo import ppo_update
    from lit_attn.settings import UpdateSettings

    def training_step(self, batch, batch_idx):
        experience = self.experience_source.make_experience(self, batch)
        ppo_update(self, self.model, experience, UpdateSettings(minibatch_size=64, micro_batch_size=8))

:class:`~lit_attn.PolicyModule` trains this way for GRPO and for the tree callbacks alike.

**Bounded memory.** A minibatch (one optimiser step) is split into micro-batches of at most
``micro_batch_size`` sequences and ``micro_batch_tokens`` padded tokens (each micro-batch is
cut to its own longest row); their gradients accumulate. Every loss aggregation divides by
the whole minibatch's normaliser (:func:`lit_attn.loss.loss_normaliser`), so the accumulated
gradient is the one-piece minibatch gradient exactly. The no-grad forwards (behaviour and
reference log-probs) use the same micro-batches.

**Several processes.** Under data parallelism every rank must run the same number of
backward passes (each one all-reduces gradients) and optimiser steps, whatever number of
sequences it holds — tree exploration gives ranks different counts. The number of
minibatches and of micro-batches in each is the maximum over ranks; a rank with fewer runs
zero-weight backward passes, and the normaliser is summed over ranks (the loss is scaled by
the world size, which the gradient all-reduce averages away).

**Non-finite updates.** Before each optimiser step the minibatch's loss and gradients are
checked: if any is inf or NaN (on any rank: the verdict is reduced over ranks, so every rank
decides alike), the step is skipped — gradients dropped, weights and AdamW state untouched,
a warning, ``update/nonfinite_skipped`` counts it — and after :data:`MAX_NONFINITE_STEPS`
skipped steps in a row the run stops with a one-line :class:`~lit_attn.errors.UserError`.
Non-finite weights are never stepped into, so no checkpoint holds them. Under fp16 mixed
precision (a ``GradScaler``) the scaler's own inf check handles these steps instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_warn

from lit_attn.errors import UserError
from lit_attn.experience import Experience
from lit_attn.logprobs import can_share_prefixes, continuation_logprobs, token_logprobs
from lit_attn.loss import loss_normaliser, policy_loss
from lit_attn.models import eval_mode
from lit_attn.settings import UpdateSettings
from lit_attn.strategy import reduce_over_ranks


Reference = Callable[[], AbstractContextManager[torch.nn.Module]]
"""The KL penalty's reference policy, as :func:`ppo_update` receives it: ``with reference() as
ref:`` gives the module whose log-probs are the reference's, for the block — a frozen copy
(:func:`frozen_reference`) or the policy itself with its LoRA adapters off
(:func:`lit_attn.lora.adapters_off_reference`)."""


def frozen_reference(ref_model: torch.nn.Module) -> Reference:
    """A frozen copy of the initial policy as the reference, run in eval mode. (It stays in train
    mode as a module of the LightningModule: Lightning warns about modules left in eval mode when
    fit starts.)"""

    @contextmanager
    def reference() -> Iterator[torch.nn.Module]:
        with eval_mode(ref_model):
            yield ref_model

    return reference


MAX_NONFINITE_STEPS = 3
"""Optimiser steps in a row whose loss or gradient is not finite (each one skipped) after
which the run stops with a :class:`~lit_attn.errors.UserError`."""


# ------------------------------------------------------------------------------ micro-batches


def micro_batches(attention_mask: torch.Tensor, rows: torch.Tensor, settings: UpdateSettings) -> list[torch.Tensor]:
    """Split ``rows`` (in order) into consecutive micro-batches of at most ``micro_batch_size``
    rows and ``micro_batch_tokens`` padded tokens (rows × the longest row's length; a row
    longer than the budget goes alone)."""
    size = settings.micro_batch_size or max(len(rows), 1)
    budget = settings.micro_batch_tokens
    if budget is None:
        return list(rows.split(size))
    lengths = attention_mask[rows].sum(-1).tolist()
    chunks: list[list[int]] = []
    longest = 0
    for row, length in zip(rows.tolist(), lengths):
        if chunks and len(chunks[-1]) < size and max(longest, length) * (len(chunks[-1]) + 1) <= budget:
            chunks[-1].append(row)
            longest = max(longest, length)
        else:
            chunks.append([row])
            longest = length
    return [torch.tensor(c, dtype=torch.long, device=rows.device) for c in chunks]


def _columns(batch: Experience, rows: torch.Tensor) -> tuple[slice, int]:
    """The columns ``rows`` use (left prompt padding and right completion padding cut away):
    a slice of the packed width, and how many completion columns it keeps."""
    used = batch.attention_mask[rows].sum(0) > 0
    P = batch.prompt_length
    first = int(used[:P].nonzero()[0]) if bool(used[:P].any()) else P - 1
    first = min(first, P - 1)  # the last prompt token predicts the first completion token
    completion = int(used[P:].nonzero()[-1]) + 1 if bool(used[P:].any()) else 1
    return slice(first, P + completion), completion


def completion_logprobs(
    model: torch.nn.Module, batch: Experience, settings: UpdateSettings, *, with_entropy: bool = False,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropies) of the completion tokens of ``batch[rows]``, shape
    (len(rows), C′): the rows are cut to the columns they use, so C′ ≤ C (their longest
    completion); the entries past C′ would be masked anyway. With ``settings.share_prompts``,
    rows with the same prompt (a GRPO group) run it through the model once."""
    if rows is None:
        rows = torch.arange(batch.num_sequences, device=batch.input_ids.device)
    cols, completion = _columns(batch, rows)
    P = batch.prompt_length
    ids, mask = batch.input_ids[rows][:, cols], batch.attention_mask[rows][:, cols]
    prompt = P - cols.start  # prompt columns kept
    if settings.share_prompts and len(rows) > 1 and can_share_prefixes(model):
        key = torch.cat([ids[:, :prompt] * mask[:, :prompt], mask[:, :prompt]], dim=1)
        distinct, index = torch.unique(key, dim=0, return_inverse=True)
        if distinct.shape[0] < len(rows):
            return continuation_logprobs(
                model, distinct[:, :prompt], distinct[:, prompt:], index, ids[:, prompt:], mask[:, prompt:],
                chunk_size=settings.logprob_chunk_size, temperature=batch.temperature, with_entropy=with_entropy,
            )
    lp, ent = token_logprobs(
        model, ids, mask, chunk_size=settings.logprob_chunk_size, temperature=batch.temperature,
        with_entropy=with_entropy,
    )
    start = lp.shape[1] - completion
    return lp[:, start:], (ent[:, start:] if ent is not None else None)


@torch.no_grad()
def batched_completion_logprobs(
    model: torch.nn.Module, batch: Experience, settings: UpdateSettings, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Completion log-probs of ``rows`` (default every row), in an (N, C) tensor (0 in the other
    rows), computed one micro-batch at a time."""
    out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32, device=batch.input_ids.device)
    if rows is None:
        rows = torch.arange(batch.num_sequences, device=batch.input_ids.device)
    for chunk in micro_batches(batch.attention_mask, rows, settings):
        lp = completion_logprobs(model, batch, settings, rows=chunk)[0]
        out[chunk, : lp.shape[1]] = lp.float()
    return out


# ------------------------------------------------------------------------------ processes


def _trainer_of(host: LightningModule) -> object | None:
    """The host's trainer, or None (a host driven without one)."""
    return getattr(host, "_trainer", None)


def _zero_backward(host: LightningModule, model: torch.nn.Module, batch: Experience, settings: UpdateSettings) -> None:
    """A backward pass whose gradient is zero: what a rank with no rows left runs so that its
    gradient all-reduces pair up with the other ranks'."""
    pad = batch.input_ids.new_zeros((1, 2))
    dummy = Experience(input_ids=pad, attention_mask=torch.ones_like(pad), prompt_length=1,
                       completion_mask=pad.new_ones((1, 1)), advantages=torch.zeros(1, device=pad.device))
    lp, _ = completion_logprobs(model, dummy, settings)
    host.manual_backward(lp.sum() * 0.0)


# ------------------------------------------------------------------------------ the update


def _rows_with_signal(experience: Experience, mask: torch.Tensor, settings: UpdateSettings) -> torch.Tensor:
    """(N,) bool: the rows whose loss has a gradient. Without a KL term, a row whose advantage
    is 0 on every token it trains contributes exactly 0 (the policy-gradient loss is
    ``-A · ratio``), so with ``skip_zero_advantage`` its forward and backward are skipped; it
    still counts in the loss normaliser, so the update is unchanged."""
    n = experience.num_sequences
    if not settings.skip_zero_advantage or settings.kl_coef > 0:
        return torch.ones(n, dtype=torch.bool, device=mask.device)
    advantages = experience.advantages
    if advantages.dim() == 1:
        return (advantages != 0) & (mask.sum(-1) > 0)
    return ((advantages[:, : mask.shape[1]] != 0) & (mask != 0)).any(-1)


def ppo_update(
    host: LightningModule,
    model: torch.nn.Module,
    experience: Experience,
    settings: UpdateSettings,
    *,
    reference: Reference | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """PPO clip-higher updates of ``model`` over shuffled minibatches of ``experience``.

    ``host`` gives the optimiser (``host.optimizers()``), ``manual_backward`` and gradient
    clipping, so Lightning's strategy and precision apply. Behaviour log-probs come from the
    experience (the tree step records them); when it has none, the current weights sampled it
    and they are computed here (skipped with a single minibatch, where the first forward with
    gradients gives the same numbers). The reference policy of the KL penalty is ``reference``
    (:data:`Reference`: a frozen copy, or with LoRA the model with its adapters off, no second
    copy); None = no reference log-probs. Each minibatch is one optimiser step, accumulated over
    its micro-batches. With nothing to train on any rank, one optimiser step with no
    gradients is taken (weights and AdamW state unchanged), so the step still counts.
    Rows with no gradient (zero advantage and no KL term) are left out of the forward and
    backward passes (``settings.skip_zero_advantage``; they still count in the normaliser).
    Returns each statistic averaged over the micro-batches, weighted by their tokens: over
    the rows trained on; and ``update/nonfinite_skipped``, the optimiser steps skipped because
    their loss or gradient was not finite (their statistics left out).
    """
    trainer = _trainer_of(host)
    world = trainer.world_size if trainer is not None else 1
    device = experience.input_ids.device
    mask = experience.completion_mask.float()
    n = experience.num_sequences
    order = torch.randperm(n, generator=generator).to(device)
    count = int(reduce_over_ranks(trainer, [math.ceil(n / settings.minibatch_size)], "max")[0])
    optimizer = host.optimizers()
    if count == 0:
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()
        return {}
    minibatches = [order[j * settings.minibatch_size : (j + 1) * settings.minibatch_size] for j in range(count)]
    signal = _rows_with_signal(experience, mask, settings)
    old_lp = experience.old_logprobs
    if old_lp is None and count > 1 and bool(signal.any()):  # only the rows that train need them
        old_lp = batched_completion_logprobs(model, experience, settings, rows=signal.nonzero().squeeze(-1))
    ref_lp = _reference_logprobs(experience, settings, reference) if n else None
    length = int(reduce_over_ranks(trainer, [mask.shape[-1]], "max")[0])  # Dr. GRPO's constant T

    totals: dict[str, float] = {}
    weight = 0.0
    skipped = 0
    for rows in minibatches:
        normaliser = loss_normaliser(mask[rows], settings.aggregation, length=length)
        normaliser = reduce_over_ranks(trainer, [float(normaliser)], "sum")[0]
        trained = rows[signal[rows]]
        chunks = micro_batches(experience.attention_mask, trained, settings) if len(trained) else []
        # at least one backward: a minibatch with no signal anywhere still gets zero gradients
        # (not none), so AdamW steps its moments as the one-piece update would
        steps = max(int(reduce_over_ranks(trainer, [len(chunks)], "max")[0]), 1)
        optimizer.zero_grad()
        step_totals: dict[str, torch.Tensor] = {}
        step_weight = 0.0
        for k in range(steps):
            if k >= len(chunks):
                _zero_backward(host, model, experience, settings)
                continue
            tokens, stats = _backward_micro_batch(
                host, model, experience, settings, chunks[k], old_lp, ref_lp, normaliser, world
            )
            for key, value in stats.items():  # tensors: one device sync per update, at the end
                step_totals[key] = step_totals.get(key, 0.0) + value * (1.0 if key == "loss" else tokens)
            step_weight = step_weight + tokens
        if not _finite_update(trainer, optimizer, step_totals.get("loss")):
            skipped += 1
            _skip_step(host, optimizer)
            continue
        _set_nonfinite_in_row(host, 0)
        for key, value in step_totals.items():
            totals[key] = totals.get(key, 0.0) + value
        weight = weight + step_weight
        if settings.grad_clip > 0:
            host.clip_gradients(optimizer, gradient_clip_val=settings.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
    # the loss of a minibatch is the sum of its micro-batches'; report the mean over the minibatches stepped
    weight = max(float(weight), 1.0)
    taken = max(len(minibatches) - skipped, 1)
    out = {k: float(v) / taken if k == "loss" else float(v) / weight for k, v in totals.items()}
    out["update/nonfinite_skipped"] = float(skipped)
    return out


def _finite_update(trainer: object | None, optimizer: object, loss: torch.Tensor | float | None) -> bool:
    """Whether the minibatch's accumulated loss and gradients are all finite, on every rank (a
    collective call under data parallelism, so every rank skips or steps alike). Under a
    ``GradScaler`` (fp16) the scaler checks and skips itself: True."""
    if getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None:
        return True
    checks = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.numel():  # min and max: exact (inf and NaN show) and no copy of the gradient
                checks.append(torch.stack(torch.aminmax(p.grad.detach())).float())
    if isinstance(loss, torch.Tensor):
        checks.append(loss.detach().float().reshape(1))
    elif loss is not None:
        checks.append(torch.tensor([float(loss)]))
    device = checks[0].device if checks else "cpu"
    finite = bool(torch.cat([c.reshape(-1).to(device) for c in checks]).isfinite().all()) if checks else True
    return reduce_over_ranks(trainer, [0.0 if finite else 1.0], "max")[0] == 0.0


def _nonfinite_in_row(host: object) -> int:
    return int(getattr(host, "_lit_attn_nonfinite_in_row", 0))


def _set_nonfinite_in_row(host: object, count: int) -> None:
    host._lit_attn_nonfinite_in_row = count


def _skip_step(host: LightningModule, optimizer: object) -> None:
    """Skip an optimiser step whose loss or gradient is not finite: the gradients are dropped
    and the optimiser steps with none (weights and AdamW state untouched; the step still counts
    for ``max_steps`` and checkpoint schedules); stop after :data:`MAX_NONFINITE_STEPS` in a row."""
    optimizer.zero_grad(set_to_none=True)
    in_row = _nonfinite_in_row(host) + 1
    _set_nonfinite_in_row(host, in_row)
    step = getattr(host, "global_step", None)
    if in_row >= MAX_NONFINITE_STEPS:
        raise UserError(
            f"training stopped at step {step}: non-finite loss or gradient (inf or NaN) in {in_row} optimiser steps "
            "in a row, each skipped (the weights and checkpoints stay finite); keep the rewards' scale moderate "
            "(model.rewards.scale=true divides by each group's std), lower model.optimizer.lr, or train in "
            "float32 (--trainer.precision=32-true)"
        )
    rank_zero_warn(
        f"step {step}: non-finite loss or gradient (inf or NaN); optimiser step skipped, weights unchanged "
        f"({in_row} in a row; {MAX_NONFINITE_STEPS} stop the run)"
    )
    optimizer.step()



def _reference_logprobs(
    experience: Experience, settings: UpdateSettings, reference: Reference | None
) -> torch.Tensor | None:
    """The KL reference's completion log-probs; None without a reference."""
    if reference is None:
        return None
    with reference() as ref_model:
        return batched_completion_logprobs(ref_model, experience, settings)


def _backward_micro_batch(
    host: LightningModule, model: torch.nn.Module, experience: Experience, settings: UpdateSettings, rows: torch.Tensor,
    old_lp: torch.Tensor | None, ref_lp: torch.Tensor | None, normaliser: float, world: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward of one micro-batch's share of the minibatch loss; returns its
    token count and detached statistics."""
    lp, ent = completion_logprobs(model, experience, settings, with_entropy=True, rows=rows)
    width = lp.shape[1]
    m = experience.completion_mask[rows, :width].float()
    advantages = experience.advantages
    loss, stats = policy_loss(
        lp, old_lp[rows, :width] if old_lp is not None else lp.detach(),
        advantages[rows] if advantages.dim() == 1 else advantages[rows, :width],
        m, clip_low=settings.clip_low, clip_high=settings.clip_high, dual_clip=settings.dual_clip,
        ref_logprobs=ref_lp[rows, :width] if ref_lp is not None else None, kl_coef=settings.kl_coef,
        aggregation=settings.aggregation, normaliser=normaliser,
    )
    host.manual_backward(loss * world)  # the all-reduce averages over ranks; the normaliser is global
    tokens = m.sum()
    return tokens, {**stats, "loss": loss.detach(), "entropy": (ent.detach() * m).sum() / tokens.clamp(min=1)}

