"""Forward Context Influence (FCI) of reasoning steps, docs/attnrl.md §2.

For every layer ``l`` and query head ``h`` (grouped KV heads expanded), with ``A`` the causal
fp32 softmax attention over the whole ``prompt ‖ response`` sequence:

* ``α[j, k]`` = mean of ``A[t, s]`` over query tokens ``t`` of step ``j`` and key tokens ``s``
  of step ``k`` (``α = W A Wᵀ``, ``W[s, t] = 1/|s|`` for ``t`` in step ``s``);
* ``y[l, h, k] = Σ_{j ≥ k + min_gap} α[j, k]``;
* ``y[k] = max over (l, h)``. The prompt (span 0), the first response step (span 1) and, for
  thinking models, the step holding the closing think tag and every later one score 0; they
  still count as queries.

Nothing T×T is built: the queries and keys of each layer are streamed out of a normal sdpa
forward (:mod:`lit_attn.attention.capture`); per block of ``block_size`` query rows the exact
softmax rows are computed (softmax is per row), summed over the keys of each step (a segment
sum over the contiguous key runs, O(block · T) work, no T × S matrix) and added per query step.
Extra memory per layer: about ``4 · batch · heads · block_size · T`` bytes for the score block,
plus ``batch · heads · S²``.
Only query rows from the first step that can reach a target (step ``2 + min_gap``) are
processed; a sequence with fewer steps needs no forward at all and scores all zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from lit_attn.attention.capture import CapturedLayer, capture_forward, left_pad_offsets
from lit_attn.attention.steps import Span
from lit_attn.errors import UserError
from lit_attn.models import model_device

DEFAULT_MIN_GAP = 4
"""Δ of docs/attnrl.md §2 (``min_step_gap``): a step is influenced only by steps at least Δ later."""

DEFAULT_BLOCK_SIZE = 256
"""Query rows per block; trades peak memory (∝ block · T) for fewer kernel launches."""

FIRST_TARGET_STEP = 2
"""Spans 0 (prompt) and 1 (first response step) are never FCI targets."""


def _validate_spans(spans: Sequence[Span], length: int, row: int | None = None) -> list[Span]:
    """Sorted, non-overlapping, non-empty spans inside ``[0, length)``; else :class:`UserError`."""
    where = "" if row is None else f" of row {row}"
    checked: list[Span] = []
    previous_end = 0
    for index, span in enumerate(spans):
        start, end = int(span[0]), int(span[1])
        if not 0 <= start < end <= length:
            raise UserError(
                f"step span {index}{where} is ({start}, {end}); spans must be non-empty and lie inside "
                f"the sequence of {length} tokens"
            )
        if start < previous_end:
            raise UserError(f"step span {index}{where} starts at {start}, before the previous span ends ({previous_end})")
        previous_end = end
        checked.append((start, end))
    if not checked:
        raise UserError(f"no step spans given{where}; the prompt must be span 0")
    return checked


class FCIAccumulator:
    """Capture consumer computing FCI for a batch while the model's forward runs.

    Use it directly to get FCI from a forward you run anyway (e.g. the one that computes
    behaviour log-probs)::

        acc = FCIAccumulator(spans_per_row, seq_len=T, pad_offsets=pads)
        with capture_qk(model, acc) as session, torch.no_grad():
            out = model(input_ids, attention_mask=mask, position_ids=positions, use_cache=False)
        scores = acc.scores()

    Args:
        step_spans_per_row: per row, the spans relative to the row's first real token (as
            returned by :func:`~lit_attn.attention.steps.split_steps` on the unpadded row).
        seq_len: padded length ``T`` of the batch.
        pad_offsets: per row, number of left-padding tokens (default: none).
        min_gap: Δ; ``0`` lets a step's own attention count.
        block_size: query rows per block.
        think_end_steps: per row, the index of the step holding the closing think tag (it and
            later steps are not targets), or ``None``.
        device: where the step matrices live (the device of the captured tensors).
    """

    def __init__(
        self,
        step_spans_per_row: Sequence[Sequence[Span]],
        *,
        seq_len: int,
        pad_offsets: Sequence[int] | None = None,
        min_gap: int = DEFAULT_MIN_GAP,
        block_size: int = DEFAULT_BLOCK_SIZE,
        think_end_steps: Sequence[int | None] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if min_gap < 0:
            raise UserError(f"min_gap must be >= 0, got {min_gap}")
        if block_size < 1:
            raise UserError(f"block_size must be >= 1, got {block_size}")
        batch = len(step_spans_per_row)
        pads = [0] * batch if pad_offsets is None else [int(p) for p in pad_offsets]
        ends = [None] * batch if think_end_steps is None else list(think_end_steps)
        if len(pads) != batch or len(ends) != batch:
            raise UserError("pad_offsets and think_end_steps need one entry per row of step spans")
        rows = [
            _validate_spans(spans, seq_len - pads[b], row=b if batch > 1 else None)
            for b, spans in enumerate(step_spans_per_row)
        ]
        self.batch = batch
        self.seq_len = seq_len
        self.min_gap = min_gap
        self.block_size = block_size
        self.num_spans = [len(spans) for spans in rows]
        num_steps = max(self.num_spans)
        device = torch.device(device) if device is not None else torch.device("cpu")

        # Per row: the key positions cut into runs (a step's span, or a stretch outside every
        # step: padding, gaps), and per query position its step (num_steps = none) and 1/|step|.
        self._run_ends: list[torch.Tensor] = []
        self._step_runs: list[torch.Tensor] = []
        self._inverse_lengths: list[torch.Tensor] = []
        row_step = torch.full((batch, seq_len), num_steps, dtype=torch.long)
        row_scale = torch.zeros(batch, seq_len, dtype=torch.float32)
        targets = torch.zeros(batch, num_steps, dtype=torch.bool)
        first_row = seq_len
        first_query_step = FIRST_TARGET_STEP + min_gap
        for b, spans in enumerate(rows):
            run_ends: list[int] = []
            step_runs: list[int] = []
            position = 0
            for s, (start, end) in enumerate(spans):
                start, end = pads[b] + start, pads[b] + end
                if start > position:
                    run_ends.append(start)
                step_runs.append(len(run_ends))
                run_ends.append(end)
                position = end
                row_step[b, start:end] = s
                row_scale[b, start:end] = 1.0 / (end - start)
            if position < seq_len:
                run_ends.append(seq_len)
            self._run_ends.append(torch.tensor(run_ends, dtype=torch.long))
            self._step_runs.append(torch.tensor(step_runs, dtype=torch.long))
            self._inverse_lengths.append(torch.tensor([1.0 / (e - s) for s, e in spans], dtype=torch.float32))
            target_end = len(spans) if ends[b] is None else min(len(spans), int(ends[b]))
            targets[b, FIRST_TARGET_STEP:target_end] = True
            if first_query_step < len(spans) and targets[b].any():
                first_row = min(first_row, pads[b] + spans[first_query_step][0])
        step = torch.arange(num_steps)
        # gap[j, k]: query step j counts for target k.
        gap = (step[:, None] >= step[None, :] + min_gap).float()
        self.first_row = first_row
        self._row_step = row_step
        self._row_scale = row_scale
        self._gap = gap
        self._targets = targets
        self._device = torch.device("cpu")
        self._to(device)
        self._best = torch.zeros(batch, num_steps, dtype=torch.float32, device=device)
        self.layers_done: list[int] = []

    def _to(self, device: torch.device) -> None:
        """Move the per-row step tables to ``device`` (where the captured tensors are)."""
        if device == self._device:
            return
        self._run_ends = [t.to(device) for t in self._run_ends]
        self._step_runs = [t.to(device) for t in self._step_runs]
        self._inverse_lengths = [t.to(device) for t in self._inverse_lengths]
        self._row_step = self._row_step.to(device)
        self._row_scale = self._row_scale.to(device)
        self._gap = self._gap.to(device)
        if hasattr(self, "_best"):
            self._best = self._best.to(device)
        self._device = device

    @property
    def needs_forward(self) -> bool:
        """False when no row has a step that can be influenced (all scores are then 0)."""
        return self.first_row < self.seq_len

    def __call__(self, layer: CapturedLayer) -> None:
        batch, heads, length = layer.query.shape[:3]
        if batch != self.batch or length != self.seq_len or layer.key_length != self.seq_len:
            raise UserError(
                f"captured layer has batch {batch}, {length} queries and {layer.key_length} keys; this FCI "
                f"accumulator was built for batch {self.batch} and length {self.seq_len} (run a full forward "
                "without a KV cache)"
            )
        self.layers_done.append(layer.layer_idx)
        if not self.needs_forward:
            return
        with torch.no_grad():  # also inside a caller's forward that tracks gradients
            self._accumulate(layer)

    def _accumulate(self, layer: CapturedLayer) -> None:
        batch, heads, length = layer.query.shape[:3]
        self._to(layer.query.device)
        num_steps = self._gap.shape[0]
        # alpha[b, h, j, k] = Σ over query rows t of step j (1/|j|) · Σ over keys of step k (1/|k|) A[t, ·];
        # query rows outside every step go to the extra row j = num_steps.
        alpha = torch.zeros(batch, heads, num_steps + 1, num_steps, dtype=torch.float32, device=self._device)
        for start in range(self.first_row, length, self.block_size):
            end = min(start + self.block_size, length)
            probs = layer.attention_rows(slice(start, end), trim_keys=True)  # (B, H, r, K')
            rows, keys = probs.shape[2], probs.shape[3]
            for b in range(batch):
                # Sum of A over the keys of each run of key positions: O(H · r · K'), no T × S matrix.
                run_ends = self._run_ends[b].clamp(max=keys)
                lengths = torch.diff(run_ends, prepend=run_ends.new_zeros(1))
                sums = torch.segment_reduce(
                    probs[b].reshape(heads * rows, keys), "sum", axis=1,
                    lengths=lengths.expand(heads * rows, -1).contiguous(),
                )
                # Mean over each step's keys, then weighted by 1/|query step| and added per query step.
                steps = self._step_runs[b].numel()
                per_key_step = sums.index_select(1, self._step_runs[b]) * self._inverse_lengths[b]
                per_key_step = per_key_step.view(heads, rows, steps) * self._row_scale[b, start:end, None]
                alpha[b, :, :, :steps].index_add_(1, self._row_step[b, start:end], per_key_step)
        influence = (alpha[:, :, :num_steps] * self._gap).sum(dim=-2)  # (B, H, S): Σ_j α[j, k] over j ≥ k + Δ
        torch.maximum(self._best, influence.amax(dim=1), out=self._best)

    def scores(self) -> list[torch.Tensor]:
        """Per row, a 1-D float32 CPU tensor with one FCI per span (non-targets are 0)."""
        best = self._best.cpu() * self._targets
        return [best[b, : self.num_spans[b]].clone() for b in range(self.batch)]


def fci_scores_batch(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    step_spans_per_row: Sequence[Sequence[Span]],
    *,
    min_gap: int = DEFAULT_MIN_GAP,
    block_size: int = DEFAULT_BLOCK_SIZE,
    think_end_steps: Sequence[int | None] | None = None,
) -> list[torch.Tensor]:
    """FCI of every step of every row of a left-padded batch, in one forward.

    Args:
        model: a Hugging Face causal LM whose attention uses the AttentionInterface.
        input_ids: ``(batch, T)`` token ids, left-padded.
        attention_mask: ``(batch, T)`` 1 for real tokens, 0 for left padding (``None`` = no
            padding). Positions are derived from it, padding keys are masked.
        step_spans_per_row: per row, spans relative to the row's first real token (as
            :func:`~lit_attn.attention.steps.split_steps` returns them for the unpadded row);
            span 0 is the prompt.
        min_gap: Δ of docs/attnrl.md §2.
        block_size: query rows per block (memory ∝ batch · heads · block_size · T).
        think_end_steps: per row, index of the step holding the closing think tag, or ``None``.

    Returns:
        One 1-D float32 CPU tensor per row, ``len(step_spans_per_row[b])`` long.

    The model runs once under ``torch.no_grad`` in eval mode (module modes are restored), its
    attention implementation temporarily switched to the capture one (restored on exit).
    """
    if input_ids.dim() != 2:
        raise UserError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    if len(step_spans_per_row) != batch:
        raise UserError(f"got {len(step_spans_per_row)} rows of step spans for a batch of {batch}")
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, length):
        raise UserError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {(batch, length)}")
    pads = left_pad_offsets(attention_mask) if attention_mask is not None else [0] * batch
    device = model_device(model)
    accumulator = FCIAccumulator(
        step_spans_per_row, seq_len=length, pad_offsets=pads, min_gap=min_gap, block_size=block_size,
        think_end_steps=think_end_steps, device=device,
    )
    if not accumulator.needs_forward:
        return accumulator.scores()
    capture_forward(model, input_ids, attention_mask, accumulator)
    return accumulator.scores()


def fci_scores(
    model: PreTrainedModel,
    input_ids: torch.Tensor | Sequence[int],
    step_spans: Sequence[Span],
    *,
    min_gap: int = DEFAULT_MIN_GAP,
    block_size: int = DEFAULT_BLOCK_SIZE,
    think_end_step: int | None = None,
) -> torch.Tensor:
    """FCI of every step of one unpadded ``prompt ‖ response`` sequence (1-D float32 CPU tensor).

    ``step_spans`` are the spans of :func:`~lit_attn.attention.steps.split_steps` (span 0 = the
    prompt); the result has one entry per span, 0 for spans 0 and 1 and for spans from
    ``think_end_step`` on. See :func:`fci_scores_batch` for the batched form.
    """
    ids = torch.as_tensor(input_ids, dtype=torch.long) if not isinstance(input_ids, torch.Tensor) else input_ids
    if ids.dim() != 1:
        raise UserError(f"input_ids must be one 1-D sequence, got shape {tuple(ids.shape)}; use fci_scores_batch for batches")
    return fci_scores_batch(
        model, ids[None], None, [step_spans], min_gap=min_gap, block_size=block_size,
        think_end_steps=[think_end_step],
    )[0]
