"""The built-in task's verifier: the final answer of a completion, and the first wrong step.

:func:`verify` is what the ``task_reward`` reward (lit_attn/rewards.py) scores;
:func:`first_wrong_step` compares a completion step by step with the reference solution
(the exploration audit reads it, docs/task.md).
"""

from __future__ import annotations

import re

from lit_attn.attention.steps import STEP_DELIMITER
from lit_attn.tasks.subtotal import OPENERS

ANSWER_RE = re.compile(r"answer\s*(-?\d+)")
"""The final answer line of the built-in format, ``answer N``."""


def extract_answer(completion: str) -> str | None:
    """The number on the last ``answer N`` line of a completion, or None if there is none."""
    found = ANSWER_RE.findall(completion)
    return found[-1] if found else None


def verify(completion: str, answer: str) -> float:
    """1.0 when the completion's final answer equals ``answer``, else 0.0."""
    got = extract_answer(completion)
    return 1.0 if got is not None and got == str(answer).strip() else 0.0


def solution_steps(text: str) -> list[str]:
    """The steps of a built-in solution or completion, the opening word of a final-chain step
    dropped (any of :data:`OPENERS` is as right as another)."""
    steps = text.strip().split(STEP_DELIMITER)
    return [s.split(" ", 1)[1] if s.split(" ", 1)[0] in OPENERS and " " in s else s for s in steps]


def first_wrong_step(completion: str, solution: str) -> int | None:
    """Index (0-based, among the completion's steps) of the first step of ``completion`` that
    differs from the correct ``solution`` of the same example, or None when every step is
    right. A completion that stops early is wrong at its first missing step. The built-in
    task's format is deterministic, so "differs" is plain text comparison (the opening word of
    a subtotal-mode final step is free)."""
    got, want = solution_steps(completion), solution_steps(solution)
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return i
    return None if len(got) == len(want) else min(len(got), len(want))
