"""Sampled completions laid out for training, and the token helpers the sampler shares.

A :class:`Rollout` holds prompt and completion tokens side by side: prompts left-padded to a
common length ``P``, completions right-padded after their first end-of-sequence token, so
completion token ``i`` sits at column ``P + i`` of ``input_ids`` for every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Rollout:
    """Packed prompts + completions.

    Attributes:
        input_ids: ``(N, P + C)`` prompt then completion tokens.
        attention_mask: ``(N, P + C)`` 1 on real prompt tokens and on completion tokens up to
            and including the first end-of-sequence token.
        prompt_length: ``P``, the padded prompt width.
        completion_mask: ``(N, C)`` the completion part of ``attention_mask``.
        completions: decoded completion texts (special tokens removed).
        clipped: ``(N,)`` True where the completion hit ``max_new_tokens`` without ending.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    completion_mask: torch.Tensor
    completions: list[str]
    clipped: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Completion lengths in tokens (end-of-sequence included)."""
        return self.completion_mask.sum(-1)


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends a completion (the tokenizer's and the generation config's)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding (pad, else end-of-sequence, else 0); padded positions are masked."""
    for name in ("pad_token_id", "eos_token_id"):  # a host's minimal tokenizer may lack the second
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(input_ids, attention_mask, pad_offsets)`` of a left-padded batch."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    pads = []
    for row, seq in enumerate(sequences):
        pad = width - len(seq)
        ids[row, pad:] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, pad:] = 1
        pads.append(pad)
    return ids, mask, pads


def pad_prompts_and_completions(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(input_ids, attention_mask, P)`` of prompt + completion rows aligned at their boundary:
    each prompt left-padded to the longest (``P`` columns), each completion right-padded after it
    (the layout of :class:`~lit_attn.experience.Experience`)."""
    P = max((len(p) for p in prompts), default=1)
    C = max((len(c) for c in completions), default=1)
    ids = torch.full((len(prompts), P + C), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P + C), dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        p, c = len(prompt), len(completion)
        ids[row, P - p : P] = torch.as_tensor(list(prompt), dtype=torch.long)
        ids[row, P : P + c] = torch.as_tensor(list(completion), dtype=torch.long)
        mask[row, P - p : P + c] = 1
    return ids, mask, P
