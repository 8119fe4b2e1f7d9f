"""Sampling continuations of token prefixes, each prefix encoded once (docs/attnrl.md §3, §5).

AttnRL's one generation call per step carries two kinds of work: the initial rollouts of new
prompts (a prompt is a prefix) and ``T`` continuations at the branch points of earlier
responses (prompt + the response up to the chosen step). :func:`sample_continuations` does
both in one batched call:

1. the distinct prefixes (identical token lists are merged) are left-padded and run through
   the model once — one prefill forward that fills a KV cache and gives the next-token logits
   of every prefix;
2. the cache rows are index-selected to the continuations (``Cache.batch_select_indices``),
   so a prefix with ``k`` continuations is encoded once, not ``k`` times;
3. a small decoding loop samples one token per step for every unfinished continuation,
   recording the behaviour log-prob ``log_softmax(logits / temperature)`` of the chosen
   token in float32; continuations that emit a stop token leave the batch (their cache rows
   are dropped), so the cost follows the new tokens actually generated.

The cost of a continuation token is one decoding step over a cache that holds the prefix, so
it grows with new tokens, not with re-encoding the prefix.

Randomness: with ``generator_seed`` the call draws from its own ``torch.Generator`` and leaves
torch's global RNG untouched; without it the global RNG is used (and advanced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_attn.errors import UserError
from lit_attn.kv_cache import new_cache
from lit_attn.logprobs import position_ids_from_mask
from lit_attn.models import cache_keyword, context_length, eval_mode, model_device
from lit_attn.rollout import Rollout, eos_ids, left_pad, pad_id
from lit_attn.settings import check_temperature


@dataclass
class Continuations:
    """Continuations sampled from prefixes, right-padded to the longest one.

    Rows are grouped by prefix, in prefix order: all continuations of prefix 0, then of
    prefix 1, and so on (prefixes with count 0 have none).

    Attributes:
        prefixes: the prefixes as given (token-id lists), indexed by ``prefix_index``.
        tokens: ``(N, C)`` new token ids, stop token included, pad id after it.
        logprobs: ``(N, C)`` float32 behaviour log-prob of each new token,
            ``log_softmax(logits / temperature)`` at the token; 0 on padding.
        mask: ``(N, C)`` long, 1 on new tokens up to and including the stop token.
        prefix_index: ``(N,)`` long, which prefix each continuation extends.
        clipped: ``(N,)`` bool, True where the continuation hit ``max_new_tokens`` without a
            stop token.
        texts: decoded new tokens (special tokens removed).
    """

    prefixes: list[list[int]]
    tokens: torch.Tensor
    logprobs: torch.Tensor
    mask: torch.Tensor
    prefix_index: torch.Tensor
    clipped: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """``(N,)`` number of new tokens per continuation (stop token included)."""
        return self.mask.sum(-1)

    def new_tokens(self, i: int) -> list[int]:
        """The new tokens of continuation ``i`` (stop token included, no padding)."""
        return self.tokens[i, : int(self.lengths[i])].tolist()

    def sequence(self, i: int) -> list[int]:
        """Full token ids of continuation ``i``: its prefix followed by its new tokens."""
        return list(self.prefixes[int(self.prefix_index[i])]) + self.new_tokens(i)

    def to_rollout(self, pad_id: int) -> Rollout:
        """The continuations packed as a :class:`~lit_attn.rollout.Rollout`: each row's prefix
        left-padded to the longest, its new tokens after it."""
        ids, prefix_mask, _ = left_pad([self.prefixes[int(i)] for i in self.prefix_index], pad_id)
        device = self.tokens.device
        return Rollout(
            input_ids=torch.cat([ids.to(device), self.tokens], dim=1),
            attention_mask=torch.cat([prefix_mask.to(device), self.mask], dim=1),
            prompt_length=ids.shape[1], completion_mask=self.mask, completions=list(self.texts), clipped=self.clipped,
        )


def _check_inputs(
    model: nn.Module,
    prefixes: Sequence[Sequence[int]],
    counts: int | Sequence[int],
    max_new_tokens: int | Sequence[int],
    temperature: float,
) -> tuple[list[int], list[int]]:
    """Validate the call; return one count and one token budget per prefix. Raises :class:`UserError`."""
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(prefixes)
    budgets = [int(b) for b in max_new_tokens]
    if len(budgets) != len(prefixes):
        raise UserError(
            f"got {len(budgets)} max_new_tokens values for {len(prefixes)} prefixes; pass one per prefix or a single int"
        )
    if isinstance(counts, int):
        counts = [counts] * len(prefixes)
    counts = [int(c) for c in counts]
    if len(counts) != len(prefixes):
        raise UserError(
            f"got {len(counts)} counts for {len(prefixes)} prefixes; pass one count per prefix or a single int"
        )
    for i, count in enumerate(counts):
        if count < 0:
            raise UserError(f"count {i} is {count}; the number of continuations per prefix must be >= 0")
    for i, budget in enumerate(budgets):
        if budget < 1:
            raise UserError(f"max_new_tokens is {budget} for prefix {i}; it must be >= 1")
    check_temperature(temperature)
    limit = context_length(model)
    for i, prefix in enumerate(prefixes):
        if len(prefix) == 0:
            raise UserError(f"prefix {i} is empty; every prefix needs at least one token (the prompt)")
        if limit is not None and counts[i] > 0 and len(prefix) + budgets[i] > limit:
            raise UserError(
                f"prefix {i} has {len(prefix)} tokens and max_new_tokens is {budgets[i]}, beyond the model's "
                f"{limit} positions; shorten the prefix or lower max_new_tokens to {max(limit - len(prefix), 0)}"
            )
    return counts, budgets


def _next_tokens(
    logits: torch.Tensor, temperature: float, do_sample: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row from ``(R, V)`` logits; return it and its log-prob at ``temperature``."""
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    if do_sample:
        chosen = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(-1)
    else:
        chosen = logits.argmax(dim=-1)
    return chosen, log_probs.gather(-1, chosen[:, None]).squeeze(-1)


def _concatenate(
    prefixes: list[list[int]], parts: list[Continuations], firsts: list[int], tokenizer: PreTrainedTokenizerBase
) -> Continuations:
    """One :class:`Continuations` from calls over consecutive groups of prefixes (group ``k``
    starts at prefix ``firsts[k]``)."""
    pad = pad_id(tokenizer)
    kept = [(part, first) for part, first in zip(parts, firsts) if len(part)]
    if not kept:
        parts[0].prefixes = prefixes
        return parts[0]
    parts, firsts = [part for part, _ in kept], [first for _, first in kept]
    width = max(part.tokens.shape[1] for part in parts)

    def padded(t: torch.Tensor, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Continuations(
        prefixes=prefixes,
        tokens=torch.cat([padded(p.tokens, pad) for p in parts]),
        logprobs=torch.cat([padded(p.logprobs, 0.0) for p in parts]),
        mask=torch.cat([padded(p.mask, 0) for p in parts]),
        prefix_index=torch.cat([p.prefix_index.cpu() + first for p, first in zip(parts, firsts)]).to(parts[0].tokens.device),
        clipped=torch.cat([p.clipped for p in parts]),
        texts=[t for p in parts for t in p.texts],
    )


@torch.no_grad()
def sample_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prefixes: Sequence[Sequence[int]],
    counts: int | Sequence[int],
    *,
    max_new_tokens: int | Sequence[int],
    temperature: float = 1.0,
    do_sample: bool = True,
    generator_seed: int | None = None,
    batch_size: int | None = None,
) -> Continuations:
    """Sample ``counts[i]`` continuations of each prefix, encoding every distinct prefix once.

    Args:
        model: a Hugging Face causal LM with a KV cache (runs in eval mode under no_grad;
            module modes are restored after).
        tokenizer: its tokenizer (stop tokens via :func:`~lit_attn.rollout.eos_ids`, pad id,
            decoding).
        prefixes: unpadded token-id lists; a prompt alone or prompt + part of a response.
        counts: continuations per prefix, one int for all or one per prefix (0 allowed).
        max_new_tokens: most new tokens per continuation, one int for all or one per prefix
            (e.g. what is left of a response's length budget after a branch point).
        temperature: sampling temperature; the returned log-probs are those of
            ``log_softmax(logits / temperature)`` also when decoding greedily.
        do_sample: False decodes greedily (every continuation of a prefix is then the same).
        generator_seed: seed of a private ``torch.Generator`` (reproducible, the global RNG
            is not touched); ``None`` samples from the global RNG.
        batch_size: most continuations sampled at once (bounds the KV cache and the prefill):
            consecutive prefixes are grouped up to it (a prefix with more continuations goes
            alone) and each group is one call, seeded ``generator_seed + group``. None = one call.

    Returns:
        :class:`Continuations`, rows grouped by prefix in prefix order.
    """
    counts, budgets = _check_inputs(model, prefixes, counts, max_new_tokens, temperature)
    prefixes = [[int(t) for t in prefix] for prefix in prefixes]
    groups = _call_groups(counts, batch_size)
    if len(groups) == 1:
        return _sample(model, tokenizer, prefixes, counts, budgets, temperature, do_sample, generator_seed)
    parts = [
        _sample(
            model, tokenizer, [prefixes[i] for i in group], [counts[i] for i in group], [budgets[i] for i in group],
            temperature, do_sample, None if generator_seed is None else generator_seed + k,
        )
        for k, group in enumerate(groups)
    ]
    return _concatenate(prefixes, parts, [group[0] for group in groups], tokenizer)


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
    batch_size: int | None = None,
) -> Rollout:
    """``num_samples`` completions of each prompt string (rows grouped by prompt), as a
    :class:`~lit_attn.rollout.Rollout`: :func:`sample_continuations` on the tokenized prompts.
    ``do_sample=False`` decodes greedily (evaluation and predictions)."""
    ids = [list(tokenizer(prompt)["input_ids"]) for prompt in prompts]
    pad = pad_id(tokenizer)
    return sample_continuations(
        model, tokenizer, ids, num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
        do_sample=do_sample, generator_seed=generator_seed, batch_size=batch_size,
    ).to_rollout(pad)


def _call_groups(counts: list[int], batch_size: int | None) -> list[list[int]]:
    """Consecutive prefixes grouped so that each group asks for at most ``batch_size``
    continuations (a prefix that asks for more goes alone); one group when None."""
    if batch_size is None:
        return [list(range(len(counts)))]
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1 (or None for one call), got {batch_size}")
    groups: list[list[int]] = [[]]
    for i, count in enumerate(counts):
        if groups[-1] and sum(counts[j] for j in groups[-1]) + count > batch_size:
            groups.append([])
        groups[-1].append(i)
    return groups


@dataclass
class _Rows:
    """The batch rows of one sampling call: distinct prefixes, and for each continuation its
    distinct prefix row, the index of the prefix it extends and its token budget."""

    distinct: list[list[int]]
    row_of: list[int]
    prefix_index: list[int]
    budget: list[int]

    @classmethod
    def of(cls, prefixes: list[list[int]], counts: list[int], budgets: list[int]) -> _Rows:
        distinct: dict[tuple[int, ...], int] = {}
        rows = cls([], [], [], [])
        for i, (prefix, count) in enumerate(zip(prefixes, counts)):
            if count == 0:
                continue
            row = distinct.setdefault(tuple(prefix), len(distinct))
            rows.row_of += [row] * count
            rows.prefix_index += [i] * count
            rows.budget += [budgets[i]] * count
        rows.distinct = [list(prefix) for prefix in distinct]
        return rows


def _sample(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prefixes: list[list[int]], counts: list[int],
    budgets: list[int], temperature: float, do_sample: bool, generator_seed: int | None,
) -> Continuations:
    """One sampling call: prefill the distinct prefixes, repeat their cache rows, decode."""
    device = model_device(model)
    pad = pad_id(tokenizer)
    rows = _Rows.of(prefixes, counts, budgets)
    if not rows.row_of:
        empty = torch.zeros(0, 0, dtype=torch.long)
        return Continuations(
            prefixes=prefixes, tokens=empty, logprobs=empty.float(), mask=empty.clone(),
            prefix_index=torch.zeros(0, dtype=torch.long), clipped=torch.zeros(0, dtype=torch.bool), texts=[],
        )
    generator = None
    if generator_seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(generator_seed))
    budget = torch.tensor(rows.budget, dtype=torch.long, device=device)
    stop = torch.tensor(eos_ids(model, tokenizer), dtype=torch.long, device=device)
    with eval_mode(model):
        tokens, logprobs, lengths, ended = _decode(model, rows, budget, stop, pad, temperature, do_sample, generator)
    width = int(lengths.max())
    columns = torch.arange(width, device=device)
    token_mask = (columns[None, :] < lengths[:, None]).long()
    tokens = tokens[:, :width].masked_fill(token_mask == 0, pad)
    return Continuations(
        prefixes=prefixes,
        tokens=tokens,
        logprobs=logprobs[:, :width] * token_mask,
        mask=token_mask,
        prefix_index=torch.tensor(rows.prefix_index, dtype=torch.long, device=device),
        clipped=~ended & (lengths >= budget),
        texts=tokenizer.batch_decode(tokens.cpu(), skip_special_tokens=True),
    )


def _decode(
    model: PreTrainedModel, rows: _Rows, budget: torch.Tensor, stop: torch.Tensor, pad_id: int, temperature: float,
    do_sample: bool, generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prefill, then decode one token per step for every unfinished continuation; finished ones
    leave the batch. Returns the (total, longest) new tokens and their log-probs, the lengths
    and whether each continuation emitted a stop token."""
    device = budget.device
    total, longest = len(rows.row_of), int(budget.max())
    # 1. One prefill over the left-padded distinct prefixes.
    ids, prefix_mask, _ = left_pad(rows.distinct, pad_id)
    ids, prefix_mask = ids.to(device), prefix_mask.to(device)
    cache_kw = cache_keyword(model)
    cache = new_cache(model, ids.shape[1] + longest)
    new_tokens = torch.full((total, longest), pad_id, dtype=torch.long, device=device)
    new_logprobs = torch.zeros(total, longest, dtype=torch.float32, device=device)
    lengths = torch.zeros(total, dtype=torch.long, device=device)
    ended = torch.zeros(total, dtype=torch.bool, device=device)
    out = model(
        input_ids=ids, attention_mask=prefix_mask, position_ids=position_ids_from_mask(prefix_mask), use_cache=True,
        logits_to_keep=1, **{cache_kw: cache},
    )
    # 2. Cache rows and next-token logits repeated to the continuations.
    select = torch.tensor(rows.row_of, dtype=torch.long, device=device)
    cache.batch_select_indices(select)
    logits = out.logits[:, -1][select]
    del out
    mask = prefix_mask[select]
    next_position = prefix_mask.sum(-1)[select]
    active = torch.arange(total, device=device)  # continuation of each batch row
    # 3. Decode; finished continuations leave the batch.
    for step in range(longest):
        chosen, logprob = _next_tokens(logits, temperature, do_sample, generator)
        new_tokens[active, step] = chosen
        new_logprobs[active, step] = logprob
        lengths[active] = step + 1
        stopped = torch.isin(chosen, stop)
        ended[active[stopped]] = True
        finished = stopped | (budget[active] <= step + 1)  # a stop token, or its budget is spent
        if step + 1 == longest:
            break
        if finished.any():
            keep = (~finished).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            active, chosen, mask, next_position = active[keep], chosen[keep], mask[keep], next_position[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out = model(
            input_ids=chosen[:, None], attention_mask=mask, position_ids=next_position[:, None],
            use_cache=True, logits_to_keep=1, **{cache_kw: cache},
        )
        logits = out.logits[:, -1]
        next_position = next_position + 1
    return new_tokens, new_logprobs, lengths, ended
