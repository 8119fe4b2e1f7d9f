"""Forward Context Influence (FCI) of reasoning steps, docs/attnrl.md §2.

For every layer ``l`` and query head ``h`` (grouped KV heads expanded), with ``A`` the causal
fp32 softmax attention over the whole ``prompt ‖ response`` sequence:

* ``α[j, k]`` = mean of ``A[t, s]`` over query tokens ``t`` of step ``j`` and key tokens ``s``
  of step ``k`` (``α = W A Wᵀ``, ``W[s, t] = 1/|s|`` for ``t`` in step ``s``);
* ``y[l, h, k] = Σ_{j ≥ k + min_gap} α[j, k]``;
* ``y[k] = max over (l, h)``. The prompt (span 0), the first response step (span 1) and, for
  thinking models, the step holding the closing think tag and every later one score 0; they
  still count as queries.

How it is computed (exactly, nothing T×T is built). Written per key position,
``y[l, h, k] = (1/|k|) Σ_{s ∈ k} c[s]`` with the weighted column sum
``c[s] = Σ_t w[t] · A[t, s]`` over the query rows ``t`` whose step is at least ``k + min_gap``
(``w[t]`` = 1/|step of t|). So only the target columns of ``A`` (keys of steps ``2 …`` up to
each row's own limit: the end of step ``step(t) − min_gap``) are needed, and each only as a
sum over rows. With ``lse[t]`` the row's log-sum-exp (the softmax normaliser),
``w[t] · A[t, s] = 2^(log2(e) · (scale · q_t · k_s − lse[t]) + log2 w[t])``: one matmul of
the queries, extended by that per-row constant, with the keys, extended by a column of ones,
gives the exponent directly; ``exp2`` and a sum over the rows follow. No softmax pass, no
per-row step sums. The queries and keys are streamed out of a normal sdpa forward
(:mod:`lit_attn.attention.capture`), which on CPU also hands over ``lse`` from its flash
kernel; elsewhere ``lse`` is computed here from the fp32 scores of each row block. A layer
with attention logit soft-capping (Gemma 2) gets the cap applied to each tile before ``exp2``.

Work is cut into tiles of ``rows`` query rows × ``key_chunk`` key columns (per batch row and
head) so that a tile stays cache-sized on CPU: :func:`fci_block_shape` picks them
(``block_size`` = rows; ``None`` = auto). Extra memory per layer: one tile, the fp32 keys, a
``batch · heads · T`` accumulator, and without a captured ``lse`` the full-row scores of one
block (``4 · batch · heads · rows · T`` bytes).
Only query rows from the first step that can reach a target (step ``2 + min_gap``) are
processed; a sequence with fewer steps needs no forward at all and scores all zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from lit_attn.attention.capture import CapturedLayer, capture_forward, left_pad_offsets
from lit_attn.attention.steps import Span
from lit_attn.errors import UserError
from lit_attn.models import model_device

DEFAULT_MIN_GAP = 4
"""Δ of docs/attnrl.md §2 (``min_step_gap``): a step is influenced only by steps at least Δ later."""

DEFAULT_BLOCK_SIZE: int | None = None
"""Query rows per block; ``None`` = chosen from the batch, head count and length
(:func:`fci_block_shape`). Measured in docs/bench_attention_scoring.md."""

FIRST_TARGET_STEP = 2
"""Spans 0 (prompt) and 1 (first response step) are never FCI targets."""

CPU_TILE_ELEMENTS = 1 << 19
"""fp32 elements of one score tile on CPU, all batch rows and heads together (2 MiB: a core's
share of the cache; measured fastest in docs/bench_attention_scoring.md)."""

DEVICE_TILE_ELEMENTS = 1 << 26
"""The same on an accelerator (256 MiB): few, large kernels. Not measured here."""

MIN_KEY_CHUNK = 256
"""Fewest key columns per tile (shorter chunks cost more in per-call overhead than they save)."""

_LOG2E = 1.0 / math.log(2.0)
_NO_WEIGHT = -1e30
"""Exponent of rows that count for nothing (2^-1e30 = 0); finite, so the matmul never sees inf."""


def fci_block_shape(
    block_size: int | None, *, batch: int, heads: int, length: int, device: torch.device | str = "cpu"
) -> tuple[int, int]:
    """``(rows, key_chunk)`` of the FCI tiles for ``batch`` rows of ``length`` tokens and
    ``heads`` query heads.

    ``rows`` is ``block_size`` when given. ``None`` (auto) takes the largest power of two
    (16 to 1024) for which ``batch · heads · rows`` rows of 1024 keys (CPU) or of the whole
    sequence (other devices) fit the tile budget (:data:`CPU_TILE_ELEMENTS`,
    :data:`DEVICE_TILE_ELEMENTS`). ``key_chunk`` fills the budget with those rows, at least
    :data:`MIN_KEY_CHUNK` keys.
    """
    if block_size is not None and block_size < 1:
        raise UserError(f"block_size must be >= 1 or None (auto), got {block_size}")
    on_cpu = torch.device(device).type == "cpu"
    budget = CPU_TILE_ELEMENTS if on_cpu else DEVICE_TILE_ELEMENTS
    lanes = max(1, batch * heads)
    if block_size is None:
        width = min(max(length, 1), 1024) if on_cpu else max(length, 1)
        rows = max(1, budget // (lanes * width))
        rows = min(1024, max(16, 1 << (rows.bit_length() - 1)))
    else:
        rows = int(block_size)
    key_chunk = max(MIN_KEY_CHUNK, budget // (lanes * rows))
    return rows, key_chunk


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
        block_size: query rows per block, ``None`` = auto (:func:`fci_block_shape`).
        think_end_steps: per row, the index of the step holding the closing think tag (it and
            later steps are not targets), or ``None``.
        device: where the step tables live (the device of the captured tensors).
    """

    wants_logsumexp = True
    """Asks the capture for the forward kernel's log-sum-exp (see :mod:`lit_attn.attention.capture`)."""

    def __init__(
        self,
        step_spans_per_row: Sequence[Sequence[Span]],
        *,
        seq_len: int,
        pad_offsets: Sequence[int] | None = None,
        min_gap: int = DEFAULT_MIN_GAP,
        block_size: int | None = DEFAULT_BLOCK_SIZE,
        think_end_steps: Sequence[int | None] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if min_gap < 0:
            raise UserError(f"min_gap must be >= 0, got {min_gap}")
        if block_size is not None and block_size < 1:
            raise UserError(f"block_size must be >= 1 or None (auto), got {block_size}")
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

        # Per row and position: the step of the key there (num_steps = none); for a query row,
        # its weight w = 1/|step| (0 when it reaches no target) and its key limit (the end of
        # step `step - min_gap`, never past the last target nor past itself).
        key_step = torch.full((batch, seq_len), num_steps, dtype=torch.long)
        weight = torch.zeros(batch, seq_len, dtype=torch.float32)
        limit = torch.zeros(batch, seq_len, dtype=torch.long)
        inverse_lengths = torch.zeros(batch, num_steps, dtype=torch.float32)
        targets = torch.zeros(batch, num_steps, dtype=torch.bool)
        first_key = seq_len
        for b, spans in enumerate(rows):
            pad = pads[b]
            for s, (start, end) in enumerate(spans):
                key_step[b, pad + start : pad + end] = s
                inverse_lengths[b, s] = 1.0 / (end - start)
            target_end = len(spans) if ends[b] is None else min(len(spans), int(ends[b]))
            if target_end <= FIRST_TARGET_STEP:
                continue
            targets[b, FIRST_TARGET_STEP:target_end] = True
            key_start = pad + spans[FIRST_TARGET_STEP][0]
            key_end = pad + spans[target_end - 1][1]
            first_key = min(first_key, key_start)
            for j in range(FIRST_TARGET_STEP + min_gap, len(spans)):
                start, end = pad + spans[j][0], pad + spans[j][1]
                step_limit = min(pad + spans[j - min_gap][1], key_end)
                positions = torch.arange(start, end)
                row_limit = positions + 1 if min_gap == 0 else torch.full_like(positions, step_limit)
                row_limit = row_limit.clamp(max=step_limit)
                reaches = row_limit > key_start
                limit[b, start:end] = torch.where(reaches, row_limit, 0)
                weight[b, start:end] = torch.where(reaches, 1.0 / (end - start), 0.0)
        active = (weight > 0).any(dim=0)
        self.first_row = int(active.nonzero()[0]) if bool(active.any()) else seq_len
        self._first_key = first_key
        self._key_step = key_step
        self._weight = weight
        self._limit = limit
        self._inverse_lengths = inverse_lengths
        self._targets = targets
        self._schedules: dict[int, list[tuple[int, int, int, int]]] = {}
        self._device = torch.device("cpu")
        self._to(device)
        self._best = torch.zeros(batch, num_steps, dtype=torch.float32, device=device)
        self.layers_done: list[int] = []

    def _to(self, device: torch.device) -> None:
        """Move the per-row tables to ``device`` (where the captured tensors are)."""
        if device == self._device:
            return
        for name in ("_key_step", "_weight", "_limit", "_inverse_lengths"):
            setattr(self, name, getattr(self, name).to(device))
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

    def _schedule(self, rows: int) -> list[tuple[int, int, int, int]]:
        """Row blocks ``(start, end, lowest, highest key limit of its weighted rows)``; blocks
        without a weighted row are left out. Computed once per block height, on the CPU."""
        if rows not in self._schedules:
            weight, limit = self._weight.cpu(), self._limit.cpu()
            blocks = []
            for start in range(self.first_row, self.seq_len, rows):
                end = min(start + rows, self.seq_len)
                block_limits = limit[:, start:end][weight[:, start:end] > 0]
                if block_limits.numel():
                    blocks.append((start, end, int(block_limits.min()), int(block_limits.max())))
            self._schedules[rows] = blocks
        return self._schedules[rows]

    def _accumulate(self, layer: CapturedLayer) -> None:
        batch, heads, length, dim = layer.query.shape
        kv_heads, group = layer.num_kv_heads, layer.group_size
        self._to(layer.query.device)
        device = self._device
        rows, key_chunk = fci_block_shape(self.block_size, batch=batch, heads=heads, length=length, device=device)
        schedule = self._schedule(rows)
        first_key = self._first_key
        last_key = max(block[3] for block in schedule)
        width_all = last_key - first_key
        # Keys of the target columns, extended by a column of ones (the per-row constant's
        # partner), laid out (batch · kv_heads, keys, dim + 1): each tile is one batched matmul
        # over a contiguous run of keys, and comes out key-major, so the sum over query rows
        # runs along contiguous memory.
        keys = layer.key[:, :, first_key:last_key].float()
        keys = torch.cat([keys, keys.new_ones(batch, kv_heads, width_all, 1)], dim=-1)
        keys = keys.reshape(batch * kv_heads, width_all, dim + 1)
        column_sums = torch.zeros(batch, kv_heads, width_all, group, device=device)
        mask = layer.attention_mask
        softcap = layer.softcap
        # With a soft-cap (Gemma 2) the score is not linear in q·k: the matmul gives the scaled
        # score in natural units, the cap and the per-row constant are applied to the tile.
        query_scale = layer.scaling * (_LOG2E if softcap is None else 1.0)
        for start, end, low, high in schedule:
            count = end - start
            # Per row: log2(w) − log2(e) · lse, or "nothing" for rows without weight.
            weight = self._weight[:, None, start:end]
            lse = layer.row_logsumexp(slice(start, end))
            offset = torch.where(weight > 0, torch.log2(weight) - lse * _LOG2E, _NO_WEIGHT)
            in_matmul = offset if softcap is None else torch.zeros_like(offset)
            queries = torch.cat([layer.query[:, :, start:end].float() * query_scale, in_matmul[..., None]], dim=-1)
            queries = queries.reshape(batch * kv_heads, group * count, dim + 1).transpose(1, 2).contiguous()
            block_limit = self._limit[:, None, start:end]  # (batch, 1, rows)
            for chunk_start in range(first_key, high, key_chunk):
                chunk_end = min(chunk_start + key_chunk, high)
                width = chunk_end - chunk_start
                tile = torch.bmm(keys[:, chunk_start - first_key : chunk_end - first_key], queries)
                tile = tile.view(batch, kv_heads, width, group, count)  # [b, kv, s, g, t]
                if softcap is not None:
                    tile = torch.tanh(tile / softcap).mul_(softcap * _LOG2E)
                    tile.add_(offset.view(batch, kv_heads, 1, group, count))
                layer_mask = None
                if mask is not None:  # the layer's own mask (padding, sliding window), as [b, kv, s, g, t]
                    layer_mask = mask[:, :, start:end, chunk_start:chunk_end]
                    if layer_mask.shape[1] > 1:
                        layer_mask = layer_mask.unflatten(1, (kv_heads, group)).permute(0, 1, 4, 2, 3)
                    else:
                        layer_mask = layer_mask.transpose(-1, -2)[:, :, :, None, :]
                    if layer_mask.dtype != torch.bool:
                        tile.add_(layer_mask.float() * _LOG2E)
                tile.exp2_()  # = w[t] · A[t, s]
                if layer_mask is not None and layer_mask.dtype == torch.bool:
                    tile.masked_fill_(~layer_mask, 0.0)
                if chunk_end > low:  # keys past some row's limit: not its targets
                    cut = max(chunk_start, low)
                    columns = torch.arange(cut, chunk_end, device=device)
                    beyond = columns[None, :, None] >= block_limit  # (batch, keys, rows)
                    tile[:, :, cut - chunk_start :].masked_fill_(beyond[:, None, :, None, :], 0.0)
                column_sums[:, :, chunk_start - first_key : chunk_end - first_key] += tile.sum(dim=-1)
        column_sums = column_sums.permute(0, 1, 3, 2).reshape(batch, heads, width_all)
        # y[b, h, k] = (1/|k|) Σ over the keys s of step k of c[s].
        num_steps = self._inverse_lengths.shape[1]
        key_step = self._key_step[:, None, first_key:last_key].expand(batch, heads, width_all)
        influence = column_sums.new_zeros(batch, heads, num_steps + 1)
        influence.scatter_add_(2, key_step, column_sums)
        influence = influence[..., :num_steps] * self._inverse_lengths[:, None, :]
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
    block_size: int | None = DEFAULT_BLOCK_SIZE,
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
        block_size: query rows per block, ``None`` = auto (:func:`fci_block_shape`).
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
    block_size: int | None = DEFAULT_BLOCK_SIZE,
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
