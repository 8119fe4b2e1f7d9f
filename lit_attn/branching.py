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
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from lit_attn.errors import UserError
from lit_attn.logprobs import position_ids_from_mask
from lit_attn.models import cache_keyword, context_length, eval_mode
from lit_attn.rollout import Rollout, eos_ids, left_pad


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
    if not temperature > 0:
        raise UserError(f"temperature is {temperature}; it must be > 0 (use do_sample=False for greedy decoding)")
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


class _ReservedLayer(DynamicLayer):
    """A :class:`~transformers.cache_utils.DynamicLayer` whose keys and values live in a buffer
    with room for ``capacity`` positions.

    ``DynamicLayer.update`` concatenates, which copies the whole cache at every decoding step
    (a cost that grows with the prefix length); here a step writes only its new position and
    ``keys`` / ``values`` are views of the filled part. Batch selection copies the filled part.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def _set_buffers(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._key_buffer, self._value_buffer = keys, values
        self.keys = keys[:, :, : self.length]
        self.values = values[:, :, : self.length]

    def _reallocate(self, capacity: int, rows: torch.Tensor | None = None) -> None:
        """New buffers of ``capacity`` positions holding the filled part (of ``rows`` only, if given)."""
        keys, values = self.keys, self.values
        if rows is not None:
            keys, values = keys[rows], values[rows]
        batch, heads, _, key_dim = keys.shape
        new_keys = keys.new_empty(batch, heads, capacity, key_dim)
        new_values = values.new_empty(batch, heads, capacity, values.shape[-1])
        new_keys[:, :, : self.length] = keys
        new_values[:, :, : self.length] = values
        self.capacity = capacity
        self._set_buffers(new_keys, new_values)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions into the buffers; return views of everything cached."""
        new = key_states.shape[-2]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states[:, :, :0], value_states[:, :, :0]
            self._reallocate(max(self.capacity, new))
        elif self.length + new > self.capacity:
            self._reallocate(max(2 * self.capacity, self.length + new))
        self._key_buffer[:, :, self.length : self.length + new] = key_states
        self._value_buffer[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._set_buffers(self._key_buffer, self._value_buffer)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (and repeat) the batch rows ``indices``."""
        if self.is_initialized:
            self._reallocate(self.capacity, rows=indices.to(self.keys.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row ``repeats`` times."""
        if self.is_initialized:
            rows = torch.arange(self.keys.shape[0], device=self.keys.device).repeat_interleave(repeats)
            self.batch_select_indices(rows)

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` positions (transformers' convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of positions to remove, got {tokens_to_remove}")
        if self.is_initialized and tokens_to_remove < 0:
            self.length = max(self.length + tokens_to_remove, 0)
            self._set_buffers(self._key_buffer, self._value_buffer)


def _new_cache(model: nn.Module, capacity: int) -> DynamicCache:
    """A DynamicCache for ``model``; plain full-attention layers get room for ``capacity`` positions.

    Other layer kinds (sliding window, linear attention, ...) keep transformers' own classes.
    """
    cache = DynamicCache(config=model.config)
    layers = getattr(cache, "layers", None)
    if layers:
        cache.layers = [_ReservedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in layers]
    return cache


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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
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
        tokens=torch.cat([padded(p.tokens, pad_id) for p in parts]),
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
    if batch_size is not None:
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1 (or None for one call), got {batch_size}")
        groups: list[list[int]] = [[]]
        for i, count in enumerate(counts):
            if groups[-1] and sum(counts[j] for j in groups[-1]) + count > batch_size:
                groups.append([])
            groups[-1].append(i)
        if len(groups) > 1:
            parts = [
                sample_continuations(
                    model, tokenizer, [prefixes[i] for i in group], [counts[i] for i in group],
                    max_new_tokens=[budgets[i] for i in group], temperature=temperature, do_sample=do_sample,
                    generator_seed=None if generator_seed is None else generator_seed + k,
                )
                for k, group in enumerate(groups)
            ]
            return _concatenate(prefixes, parts, [group[0] for group in groups], tokenizer)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop = torch.tensor(eos_ids(model, tokenizer), dtype=torch.long, device=device)

    # Distinct prefixes that get at least one continuation; continuation → distinct row.
    distinct: dict[tuple[int, ...], int] = {}
    row_of: list[int] = []
    prefix_index: list[int] = []
    row_budget: list[int] = []
    for i, (prefix, count) in enumerate(zip(prefixes, counts)):
        if count == 0:
            continue
        row = distinct.setdefault(tuple(prefix), len(distinct))
        row_of += [row] * count
        prefix_index += [i] * count
        row_budget += [budgets[i]] * count
    total = len(row_of)
    if total == 0:
        empty = torch.zeros(0, 0, dtype=torch.long)
        return Continuations(
            prefixes=prefixes, tokens=empty, logprobs=empty.float(), mask=empty.clone(),
            prefix_index=torch.zeros(0, dtype=torch.long), clipped=torch.zeros(0, dtype=torch.bool), texts=[],
        )

    # 1. One prefill over the left-padded distinct prefixes.
    rows = list(distinct)
    ids, prefix_mask, _ = left_pad(rows, pad_id)
    width = ids.shape[1]
    ids, prefix_mask = ids.to(device), prefix_mask.to(device)
    positions = position_ids_from_mask(prefix_mask)
    cache_kw = cache_keyword(model)
    longest = max(row_budget)
    budget = torch.tensor(row_budget, dtype=torch.long, device=device)
    cache = _new_cache(model, width + longest)
    generator = None
    if generator_seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(generator_seed))

    new_tokens = torch.full((total, longest), pad_id, dtype=torch.long, device=device)
    new_logprobs = torch.zeros(total, longest, dtype=torch.float32, device=device)
    lengths = torch.zeros(total, dtype=torch.long, device=device)
    ended = torch.zeros(total, dtype=torch.bool, device=device)

    with eval_mode(model):
        out = model(
            input_ids=ids, attention_mask=prefix_mask, position_ids=positions, use_cache=True,
            logits_to_keep=1, **{cache_kw: cache},
        )
        # 2. Cache rows and next-token logits repeated to the continuations.
        select = torch.tensor(row_of, dtype=torch.long, device=device)
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

    width = int(lengths.max())
    columns = torch.arange(width, device=device)
    token_mask = (columns[None, :] < lengths[:, None]).long()
    tokens = new_tokens[:, :width].masked_fill(token_mask == 0, pad_id)
    logprobs = new_logprobs[:, :width] * token_mask
    return Continuations(
        prefixes=prefixes,
        tokens=tokens,
        logprobs=logprobs,
        mask=token_mask,
        prefix_index=torch.tensor(prefix_index, dtype=torch.long, device=device),
        clipped=~ended & (lengths >= budget),
        texts=tokenizer.batch_decode(tokens.cpu(), skip_special_tokens=True),
    )
