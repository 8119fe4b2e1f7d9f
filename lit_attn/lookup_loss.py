"""Lookup supervision: the losses that teach the shipped default model to look facts up.

An auxiliary loss pulls the heads of one layer, at each solution position holding a fact key
(``m=``), onto the context position of that fact's value — what pretrained LLMs grow on their
own as *retrieval heads*. Only those heads, and only at those positions, are supervised;
every other head and position, and the answer itself, is learned from the ordinary
next-token loss. Switching the heads off and leave-one-out on the trained model both confirm
that its answers depend on the facts the heads read (docs/default_model.md), so attribution
finds a skill the model uses, not a planted pattern. Measured here: trained on the solutions
alone, a 0.8 M model learned format, copying and arithmetic in ~1,000 steps and then guessed
its lookups for 6,500 more; its attention on the right fact equalled that on any other fact.

:class:`lit_attn.sft.SFTModule` applies these losses to the warm-start curriculum
(:mod:`lit_attn.tasks.warm_start`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def lookup_targets(
    input_ids: Sequence[int], prompt_length: int, key_ids: set[int], delimiter_id: int | None = None
) -> list[tuple[int, int]]:
    """The lookups of one sequence: ``(query, source)`` position pairs.

    ``query`` is a position at or after ``prompt_length`` holding a fact key (``m=``) whose key
    occurs exactly once in the prompt; ``source`` is the prompt position right after that
    occurrence — the first token of the fact's value. A key present twice in the prompt has no
    single right answer and is left out. A key absent from the prompt is a name the solution
    defines itself (the subtotal mode's ``x=7``): its later occurrences look up the value
    written right after its first one. With ``delimiter_id``, a name defined at the start of a
    step (right after the step delimiter) writes the previous step's result down: its first
    occurrence looks up that result, the token before the delimiter (the subtotal mode's
    ``…=7 | x=7``).
    """
    seen: dict[int, list[int]] = {}
    for pos in range(prompt_length):
        if input_ids[pos] in key_ids:
            seen.setdefault(int(input_ids[pos]), []).append(pos)
    named: dict[int, int] = {}  # keys the solution itself defines (the subtotal mode's x=, y=)
    pairs = []
    for pos in range(prompt_length, len(input_ids)):
        key = int(input_ids[pos])
        where = seen.get(key)
        if where is not None:
            if len(where) == 1 and where[0] + 1 < prompt_length:
                pairs.append((pos, where[0] + 1))
        elif key in key_ids:
            first = named.setdefault(key, pos)
            if first != pos:
                pairs.append((pos, first + 1))
            elif delimiter_id is not None and pos >= prompt_length + 2 and input_ids[pos - 1] == delimiter_id:
                pairs.append((pos, pos - 2))
    return pairs


def lookup_attention_loss(attention: torch.Tensor, sources: torch.Tensor, *, log: bool = False) -> torch.Tensor:
    """Mean of ``-log attention[j, …, sources[j]]`` over the lookups ``j`` (and heads).

    ``attention`` is ``(L, T)`` — one head's attention rows at the ``L`` lookup queries — or
    ``(L, H, T)`` for ``H`` heads; ``sources`` holds the ``(L,)`` positions of the right
    values (:func:`lookup_targets`). Zero when there are no lookups (a batch without fact keys).
    With ``log=True`` the rows are log-probabilities (``attention_rows(..., log=True)``): use
    them for training. From probabilities, the clamp at 1e-9 leaves no gradient where a head
    starts with (almost) no attention on the source — measured here: a lookup of a name the
    solution defines (``x=``) never formed that way, while one that started at 0.001 did.
    """
    if sources.numel() == 0:
        return attention.sum() * 0.0
    index = sources.to(attention.device).view(-1, *([1] * (attention.dim() - 1)))
    picked = attention.gather(-1, index.expand(*attention.shape[:-1], 1))
    if log:
        return -picked.mean()
    return -torch.log(picked.clamp_min(1e-9)).mean()


def context_hygiene_loss(attention: torch.Tensor, keep: torch.Tensor, context_end: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log(1 - m)`` where ``m`` is the attention mass a row puts on the context texts.

    ``attention`` is ``(B, H, R, T)`` (all heads of one layer at ``R`` rows), ``keep`` a
    ``(B, R)`` boolean mask of the rows to count (solution positions that are not lookups),
    ``context_end`` the ``(B,)`` end of each row's context texts (positions ``[0, end)``).
    Zero when no row is kept.
    """
    columns = torch.arange(attention.shape[-1], device=attention.device)
    on_context = (columns[None, :] < context_end.to(attention.device)[:, None]).to(attention.dtype)  # (B, T)
    mass = (attention * on_context[:, None, None, :]).sum(-1)  # (B, H, R)
    kept = mass.permute(0, 2, 1)[keep.to(attention.device)]  # (N, H)
    if kept.numel() == 0:
        return attention.sum() * 0.0
    return -torch.log((1 - kept).clamp_min(1e-6)).mean()


def fact_span(input_ids: Sequence[int], source: int, newline_ids: set[int]) -> tuple[int, int]:
    """The ``[start, end)`` token span of the context text holding position ``source`` (the
    built-in contexts hold one text per line, so the span runs between newline tokens)."""
    start = source
    while start > 0 and int(input_ids[start - 1]) not in newline_ids:
        start -= 1
    end = source
    while end < len(input_ids) and int(input_ids[end]) not in newline_ids:
        end += 1
    return start, end
