"""What branching finds: where branch points sit, whether they come before a response's first
wrong step, and whether a wrong response's continuations reach a correct answer.

Pure functions over one response's step spans and texts, shared by ``bench/branching.py``
(exploration measured on its own, docs/bench_branching.md) and the tree step's TensorBoard
metrics (``branching/position``, ``branching/before_first_error``, ``branching/rescued``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lit_attn.attention.steps import STEP_DELIMITER, Span, split_steps
from lit_attn.tasks.verifier import first_wrong_step


def step_of_offset(spans: Sequence[Span], prompt_length: int, offset: int) -> int:
    """The response step (0-based, span 1 = step 0) that holds response token ``offset``;
    an offset at the end of the response belongs to its last step."""
    position = prompt_length + offset
    for k in range(1, len(spans)):
        if spans[k][0] <= position < spans[k][1]:
            return k - 1
    return max(len(spans) - 2, 0)


def first_error(record: dict, completion: str) -> int | None:
    """The first wrong step of ``completion`` (0-based), when ``record`` carries the built-in
    task's reference ``solution``; None when every step is right or the record has no
    reference (a user's data: no step-level truth)."""
    solution = record.get("solution")
    if not isinstance(solution, str) or not solution:
        return None
    return first_wrong_step(completion, solution)


def before_first_error(spans: Sequence[Span], prompt_length: int, offsets: Sequence[int], error_step: int) -> list[bool]:
    """For each branch offset: does it regenerate the first wrong step (the branch point sits
    at or before step ``error_step``)?"""
    return [step_of_offset(spans, prompt_length, off) <= error_step for off in offsets]


def branch_audit(groups: Sequence[Any], tokenizer: Any, threshold: float, delimiter: str = STEP_DELIMITER) -> list[bool]:
    """For every branch point of a wrong response whose record carries the built-in task's
    ``solution``: does it sit at or before the response's first wrong step? ``groups`` are
    prompt groups (:class:`~lit_attn.exploration.groups.PromptGroup`: ``record``,
    ``prompt_ids``, ``responses``, ``offsets``); a response is wrong when its reward is below
    ``threshold``. Empty for a user's data (no step-level truth)."""
    flags: list[bool] = []
    for group in groups:
        for response, offsets in zip(group.responses, group.offsets):
            if not offsets or response.reward >= threshold or not group.record.get("solution"):
                continue
            error = first_error(group.record, tokenizer.decode(list(response.tokens), skip_special_tokens=True))
            if error is None:
                continue
            ids = list(group.prompt_ids) + list(response.tokens)
            spans = split_steps(ids, tokenizer, delimiter, prompt_length=len(group.prompt_ids))
            flags += before_first_error(spans, len(group.prompt_ids), offsets, error)
    return flags


def rescued(groups: Sequence[Any], continuations: dict, threshold: float) -> list[bool]:
    """For every wrong response that was branched: did any of its continuations reach a
    reward of at least ``threshold``? ``continuations`` maps ``(group, response, offset)`` to
    the continuations sampled there (:func:`lit_attn.exploration.stages.sample`)."""
    found = []
    for p, group in enumerate(groups):
        for i, (response, offsets) in enumerate(zip(group.responses, group.offsets)):
            if not offsets or response.reward >= threshold:
                continue
            found.append(any(c.reward >= threshold for off in offsets for c in continuations.get((p, i, off), ())))
    return found
