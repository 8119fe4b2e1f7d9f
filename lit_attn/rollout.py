"""Sampling completions from a Hugging Face causal LM and packing them for training.

A :class:`Rollout` holds prompt and completion tokens side by side: prompts left-padded to a
common length ``P``, completions right-padded after their first end-of-sequence token, so
completion token ``i`` sits at column ``P + i`` of ``input_ids`` for every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from lit_attn.models import eval_mode


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


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device) -> dict:
    """Left-padded prompt batch on ``device``."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends a completion (the tokenizer's and the generation config's)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    do_sample: bool = True,
    generator_seed: int | None = None,
) -> Rollout:
    """Sample ``num_samples`` completions per prompt (rows grouped by prompt) with KV cache.

    With ``do_sample=False`` decoding is greedy. ``generator_seed`` seeds torch's global RNG
    for the call (generate has no per-call generator) and restores the previous state after.
    """
    device = next(model.parameters()).device
    enc = encode_prompts(tokenizer, prompts, device)
    input_ids = enc["input_ids"].repeat_interleave(num_samples, dim=0)
    attention_mask = enc["attention_mask"].repeat_interleave(num_samples, dim=0)
    stop = eos_ids(model, tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_k=0 if do_sample else None,
        top_p=1.0 if do_sample else None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop,
    )
    state = torch.random.get_rng_state() if generator_seed is not None else None
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    try:
        with eval_mode(model):
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    finally:
        if state is not None:
            torch.random.set_rng_state(state)
    return pack(out, attention_mask, stop, tokenizer, max_new_tokens)


def pack(
    sequences: torch.Tensor,
    prompt_mask: torch.Tensor,
    stop: list[int],
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
) -> Rollout:
    """Build a :class:`Rollout` from generate's output (prompt columns first)."""
    P = prompt_mask.shape[1]
    completion = sequences[:, P:]
    is_stop = torch.isin(completion, torch.tensor(stop, device=completion.device))
    # 1 up to and including the first stop token; rows without one keep every token.
    before_stop = (is_stop.cumsum(-1) - is_stop.long()) == 0
    completion_mask = before_stop.long()
    ended = is_stop.any(-1)
    clipped = ~ended & (completion_mask.sum(-1) >= max_new_tokens)
    completion = completion.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(completion, skip_special_tokens=True)
    return Rollout(
        input_ids=torch.cat([sequences[:, :P], completion], dim=1),
        attention_mask=torch.cat([prompt_mask, completion_mask], dim=1),
        prompt_length=P,
        completion_mask=completion_mask,
        completions=texts,
        clipped=clipped,
    )


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
