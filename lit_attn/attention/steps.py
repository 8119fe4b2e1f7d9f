"""Reasoning steps of a response, as token spans (docs/attnrl.md §1).

A sequence is ``prompt ‖ response``. The prompt is step 0. The response is cut at the step
delimiter (``"\\n\\n"`` by default): a step ends with, and includes, its delimiter token(s);
text after the last delimiter is the last step. A *delimiter token* is any vocabulary token
whose decoded text contains the delimiter, and every delimiter token closes a step, as in the
authors' code (so ``"\n\n\n\n"`` written as two tokens gives a step that is only a delimiter).

The set of delimiter token ids is computed once per (tokenizer, delimiter, vocabulary size) by
decoding every vocabulary entry, and cached. With a large vocabulary (~150k entries) the first
call costs about a second; later calls are set look-ups.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from lit_attn.errors import UserError

Span = tuple[int, int]
"""A half-open token range ``[start, end)`` of a sequence: a reasoning step, a context text."""

STEP_DELIMITER = "\n\n"

_CACHE: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[tuple[str, int], frozenset[int]]]" = (
    weakref.WeakKeyDictionary()
)
_CACHE_LOCK = threading.Lock()


def _as_id_list(token_ids: Sequence[int] | torch.Tensor) -> list[int]:
    """Token ids as a plain list of ints (a 1-D tensor or any integer sequence)."""
    if isinstance(token_ids, torch.Tensor):
        if token_ids.dim() != 1:
            raise UserError(f"token_ids must be one 1-D sequence, got a tensor of shape {tuple(token_ids.shape)}")
        return [int(t) for t in token_ids.tolist()]
    return [int(t) for t in token_ids]


def delimiter_token_ids(tokenizer: PreTrainedTokenizerBase, delimiter: str = STEP_DELIMITER) -> frozenset[int]:
    """Ids of every vocabulary token whose decoded text contains ``delimiter`` (cached).

    Raises :class:`UserError` when no token contains it: every response would then be a
    single step, which is a configuration mistake (choose a delimiter the tokenizer can emit).
    """
    if not delimiter:
        raise UserError("the step delimiter must be a non-empty string (the default is '\\n\\n')")
    vocab_size = len(tokenizer)
    key = (delimiter, vocab_size)
    with _CACHE_LOCK:
        per_tokenizer = _CACHE.get(tokenizer)
        if per_tokenizer is not None and key in per_tokenizer:
            return per_tokenizer[key]
    texts = tokenizer.batch_decode(
        [[i] for i in range(vocab_size)], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    ids = frozenset(i for i, text in enumerate(texts) if delimiter in text)
    if not ids:
        raise UserError(
            f"no token of this tokenizer ({type(tokenizer).__name__}) decodes to text containing the step "
            f"delimiter {delimiter!r}; pick a delimiter the tokenizer can emit as (part of) one token"
        )
    with _CACHE_LOCK:
        _CACHE.setdefault(tokenizer, {})[key] = ids
    return ids


def split_steps(
    token_ids: Sequence[int] | torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    delimiter: str = STEP_DELIMITER,
    *,
    prompt_length: int,
) -> list[Span]:
    """Split one unpadded ``prompt ‖ response`` sequence into step spans.

    Args:
        token_ids: the whole sequence (1-D tensor or list of ints), without padding. A trailing
            EOS token, if present, belongs to the last step.
        tokenizer: decides which ids are delimiter tokens (see :func:`delimiter_token_ids`).
        delimiter: the step delimiter text.
        prompt_length: number of prompt tokens at the start of ``token_ids`` (``1 ≤ prompt_length
            ≤ len(token_ids)``).

    Returns:
        Contiguous half-open spans covering the sequence: ``[(0, prompt_length), step_1, …]``.
        With an empty response the result is just the prompt span.
    """
    ids = _as_id_list(token_ids)
    if not 1 <= prompt_length <= len(ids):
        raise UserError(
            f"prompt_length must be between 1 and the sequence length {len(ids)}, got {prompt_length}"
        )
    delimiters = delimiter_token_ids(tokenizer, delimiter)
    spans: list[Span] = [(0, prompt_length)]
    start = prompt_length
    for position in range(prompt_length, len(ids)):
        if ids[position] in delimiters:
            spans.append((start, position + 1))
            start = position + 1
    if start < len(ids):
        spans.append((start, len(ids)))
    return spans


def find_think_end_step(
    token_ids: Sequence[int] | torch.Tensor,
    step_spans: Sequence[Span],
    tokenizer: PreTrainedTokenizerBase,
    tag: str = "</think>",
) -> int | None:
    """Index of the response step in which the *last* occurrence of ``tag`` is complete, or
    ``None`` when the response never writes it (the authors' code takes the last closing tag).

    For thinking models, this step and every later one are not FCI targets
    (docs/attnrl.md §2): pass the result as ``think_end_step`` to the FCI functions. Found by
    binary search over decoded prefixes (O(log steps) decodes), so a tag split across two steps
    counts in the step holding its last character.
    """
    ids = _as_id_list(token_ids)
    if len(step_spans) < 2:
        return None
    prompt_end = step_spans[0][1]

    def count_by(step_index: int) -> int:
        return tokenizer.decode(ids[prompt_end : step_spans[step_index][1]], skip_special_tokens=False).count(tag)

    low, high = 1, len(step_spans) - 1
    total = count_by(high)
    if total == 0:
        return None

    def closed_by(step_index: int) -> bool:
        return count_by(step_index) == total

    while low < high:
        middle = (low + high) // 2
        if closed_by(middle):
            high = middle
        else:
            low = middle + 1
    return low
