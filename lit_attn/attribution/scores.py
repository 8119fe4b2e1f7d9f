"""The score of each context text from one forward pass, docs/attribution.md §2 (``text_scores``).

For one sequence ``prompt ‖ answer`` (the prompt holding the texts at known token spans):

* rows R = the last prompt token (``answer_start - 1``) and every answer token;
* for every layer and every query head (grouped KV heads expanded), the causal fp32 softmax
  row of each r in R over ALL earlier positions (not renormalised to the context);
* ``v[t]`` = the mean of those rows over all layers, heads and rows in R;
* score of text i = mean of the ``top_k`` largest ``v[t]`` inside its span (all of its tokens
  when it has fewer; ``top_k=None`` = plain mean over the span). Top-K is taken once, on the
  averaged vector.

Nothing T×T is built: the model runs its normal sdpa forward while
:func:`~lit_attn.attention.capture.capture_qk` streams each layer's post-RoPE queries and keys
to :class:`TextScoreAccumulator`, which computes only the ``|R| × T`` rows, in head and row
chunks (extra memory ``4 · batch · heads_per_chunk · rows_per_chunk · T`` bytes per
temporary; for a bfloat16 / float16 model also the layer's keys copied to fp32,
``4 · batch · kv_heads · T · head_dim`` bytes, one layer at a time: docs/attribution.md §4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

# capture_forward: the one capture forward (left padding, positions, decoder only) shared with FCI
from lit_attn.attention.capture import CapturedLayer, capture_forward, left_pad_offsets
from lit_attn.attention.steps import Span
from lit_attn.errors import UserError

DEFAULT_TOP_K = 5
"""K of docs/attribution.md §2 (``top_k_tokens``)."""

DEFAULT_CHUNK_ELEMENTS = 1 << 20
"""Attention-row elements computed at once (4 MiB of fp32); bounds the extra memory (a few
temporaries of this size live at once: scores, softmax, weighted sum). Smaller chunks cost only
more, smaller matmuls: the rows are a small fraction of the forward's work."""


def _check_spans(spans: Sequence[Span], answer_start: int, length: int, row: int | None) -> list[Span]:
    """Non-empty spans inside the prompt ``[0, answer_start)``; else a one-line :class:`UserError`."""
    where = "" if row is None else f" of row {row}"
    if not 1 <= answer_start <= length:
        raise UserError(
            f"answer_start{where} is {answer_start}; it must be in [1, {length}] (the first answer token, "
            "after at least one prompt token)"
        )
    if not spans:
        raise UserError(f"no context text spans given{where}; pass one (start, end) token span per text")
    checked: list[Span] = []
    for index, span in enumerate(spans):
        start, end = int(span[0]), int(span[1])
        if not 0 <= start < end <= answer_start:
            raise UserError(
                f"text span {index}{where} is ({start}, {end}); spans must be non-empty and lie inside the "
                f"prompt of {answer_start} tokens"
            )
        checked.append((start, end))
    return checked


class TextScoreAccumulator:
    """Capture consumer: the averaged attention vector ``v`` of docs/attribution.md §2 for a left-padded batch.

    Args:
        answer_starts: per batch row, the index of the first answer token relative to the row's
            first real token (the row's R starts one token earlier).
        seq_len: padded length ``T``.
        pad_offsets: per row, number of left-padding tokens.
        chunk_elements: attention-row elements computed at once (memory bound).

    After the forward, :meth:`vectors` gives ``v`` per row over the row's real tokens.
    """

    def __init__(
        self,
        answer_starts: Sequence[int],
        *,
        seq_len: int,
        pad_offsets: Sequence[int],
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        self.batch = len(answer_starts)
        self.seq_len = seq_len
        self.pad_offsets = [int(p) for p in pad_offsets]
        # First row of R in padded coordinates; rows of R run to the end of the sequence.
        self.row_starts = [p + int(a) - 1 for p, a in zip(self.pad_offsets, answer_starts)]
        self.first_row = min(self.row_starts)
        self.chunk_elements = chunk_elements
        positions = torch.arange(self.first_row, seq_len)
        starts = torch.tensor(self.row_starts)[:, None]
        counts = (seq_len - starts).float()
        # weights[b, r] = 1/|R_b| on the rows of R_b, 0 on union rows outside it.
        self._row_weights = (positions[None, :] >= starts).float() / counts
        self._sum: torch.Tensor | None = None
        self.layers_done: list[int] = []
        self.num_heads = 0

    def __call__(self, layer: CapturedLayer) -> None:
        batch, heads, length = layer.query.shape[:3]
        if batch != self.batch or length != self.seq_len or layer.key_length != self.seq_len:
            raise UserError(
                f"captured layer has batch {batch}, {length} queries and {layer.key_length} keys; the text-score "
                f"accumulator was built for batch {self.batch} and length {self.seq_len} (run a full forward "
                "without a KV cache)"
            )
        self.layers_done.append(layer.layer_idx)
        self.num_heads = heads
        with torch.no_grad():
            self._accumulate(layer)

    def _accumulate(self, layer: CapturedLayer) -> None:
        batch, heads = layer.query.shape[:2]
        device = layer.query.device
        if self._sum is None:
            self._sum = torch.zeros(batch, self.seq_len, dtype=torch.float32, device=device)
            self._row_weights = self._row_weights.to(device)
        num_rows = self.seq_len - self.first_row
        per_row = batch * self.seq_len
        rows_per_chunk = max(1, min(num_rows, self.chunk_elements // max(1, per_row)))
        heads_per_chunk = max(1, min(heads, self.chunk_elements // max(1, per_row * rows_per_chunk)))
        for row_start in range(self.first_row, self.seq_len, rows_per_chunk):
            row_end = min(row_start + rows_per_chunk, self.seq_len)
            weights = self._row_weights[:, row_start - self.first_row : row_end - self.first_row]
            for head_start in range(0, heads, heads_per_chunk):
                heads_slice = slice(head_start, min(head_start + heads_per_chunk, heads))
                probs = layer.attention_rows(slice(row_start, row_end), heads=heads_slice)  # (B, h, r, T)
                # Σ_h Σ_r w[b, r] · A[b, h, r, t]
                self._sum += torch.einsum("bhrt,br->bt", probs, weights)

    def vectors(self) -> list[torch.Tensor]:
        """Per row, ``v`` over the row's real tokens (1-D float32 CPU tensors)."""
        if self._sum is None or not self.layers_done:
            raise UserError("no attention layer was captured; run the model's forward inside capture_qk")
        mean = self._sum.cpu() / (len(self.layers_done) * self.num_heads)
        return [mean[b, pad:].clone() for b, pad in enumerate(self.pad_offsets)]


def span_scores(vector: torch.Tensor, spans: Sequence[Span], top_k: int | None = DEFAULT_TOP_K) -> torch.Tensor:
    """Mean of the ``top_k`` largest entries of ``vector`` in each span (``None`` = all entries)."""
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be >= 1 (or None for all tokens), got {top_k}")
    out = torch.empty(len(spans), dtype=torch.float32)
    for i, (start, end) in enumerate(spans):
        values = vector[start:end]
        if top_k is not None and top_k < values.numel():
            values = torch.topk(values, top_k).values
        out[i] = values.mean()
    return out


def text_scores_batch(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    text_spans_per_row: Sequence[Sequence[Span]],
    answer_starts: Sequence[int],
    *,
    top_k: int | None = DEFAULT_TOP_K,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> list[torch.Tensor]:
    """docs/attribution.md §2: scores of every row of a left-padded batch, in one forward.

    Args:
        model: a Hugging Face causal LM whose attention uses the AttentionInterface.
        input_ids: ``(batch, T)`` left-padded ``prompt ‖ answer`` token ids.
        attention_mask: ``(batch, T)``, 1 on real tokens, 0 on left padding (``None`` = none).
        text_spans_per_row: per row, the token span of each text, relative to the row's first
            real token.
        answer_starts: per row, the first answer token, relative to the row's first real token.
        top_k: K of docs/attribution.md §2 (``None``: mean over all tokens of a text).
        chunk_elements: attention-row elements computed at once (memory bound).

    Returns:
        One 1-D float32 CPU tensor per row, one score per text.
    """
    if input_ids.dim() != 2:
        raise UserError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    if len(text_spans_per_row) != batch or len(answer_starts) != batch:
        raise UserError(
            f"got {len(text_spans_per_row)} rows of text spans and {len(answer_starts)} answer starts for a "
            f"batch of {batch}; pass one of each per row"
        )
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, length):
        raise UserError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {(batch, length)}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be >= 1 (or None for all tokens), got {top_k}")
    pads = left_pad_offsets(attention_mask) if attention_mask is not None else [0] * batch
    spans = [
        _check_spans(row_spans, int(answer_starts[b]), length - pads[b], b if batch > 1 else None)
        for b, row_spans in enumerate(text_spans_per_row)
    ]
    accumulator = TextScoreAccumulator(answer_starts, seq_len=length, pad_offsets=pads, chunk_elements=chunk_elements)
    capture_forward(model, input_ids, attention_mask, accumulator)
    return [span_scores(v, row_spans, top_k) for v, row_spans in zip(accumulator.vectors(), spans)]


def text_scores(
    model: PreTrainedModel,
    input_ids: torch.Tensor | Sequence[int],
    text_spans: Sequence[Span],
    answer_start: int,
    *,
    top_k: int | None = DEFAULT_TOP_K,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """docs/attribution.md §2: score of each text of one unpadded ``prompt ‖ answer`` sequence.

    Args:
        model: a Hugging Face causal LM (Qwen2, Llama, GPT-2, ...).
        input_ids: one 1-D token sequence.
        text_spans: token span ``(start, end)`` of each context text (inside the prompt).
        answer_start: index of the first answer token; rows R are ``answer_start - 1`` and
            every later token.
        top_k: K of docs/attribution.md §2 (``None``: mean over all tokens of a text).
        chunk_elements: attention-row elements computed at once (memory bound).

    Returns:
        1-D float32 CPU tensor, one score per text.
    """
    ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.as_tensor(list(input_ids), dtype=torch.long)
    if ids.dim() != 1:
        raise UserError(
            f"input_ids must be one 1-D sequence, got shape {tuple(ids.shape)}; use text_scores_batch for batches"
        )
    return text_scores_batch(
        model, ids[None], None, [text_spans], [answer_start], top_k=top_k, chunk_elements=chunk_elements
    )[0]
