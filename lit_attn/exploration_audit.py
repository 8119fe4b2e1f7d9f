"""What branching finds: where branch points sit, whether they come before a response's first
wrong step, and whether a wrong response's continuations reach a correct answer.

Pure functions over one response's step spans and texts, shared by ``bench/branching.py``
(exploration measured on its own, docs/bench_branching.md) and the tree step's TensorBoard
metrics (``branching/position``, ``branching/before_first_error``, ``branching/rescued``).
"""

from __future__ import annotations

from collections.abc import Sequence

from lit_attn.attention.steps import Span
from lit_attn.task import first_wrong_step


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
