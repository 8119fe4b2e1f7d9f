"""The built-in task's ``subtotal`` mode: two subtotals worked out, written down in steps of their own, then read back.

:class:`SubtotalTask` draws the examples; :func:`slip_subtotals` turns a reference solution into
that of a policy that slips when it writes a subtotal down (docs/task.md, ``subtotal`` mode).
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import Any

from lit_attn.attention.steps import STEP_DELIMITER
from lit_attn.tasks.chain import MAX_FACTS, chain_steps, check_arithmetic, format_prompt

SUBTOTALS = "xy"
"""Names of the subtotal mode's two intermediate results (never the name of a fact there)."""
OPENERS = ("so", "then", "next", "hence")
"""Words that may open a step of the subtotal mode's final chain; any of them is right."""
FACT = "."
"""In :attr:`SubtotalTask.pattern`, a term of the final chain that is a fact of the context."""
_NAMED = re.compile(r"^([a-z])=(-?\d+)$")


@dataclass(frozen=True)
class SubtotalTask:
    """The built-in task's reasoning mode: two subtotals, each written down in a step of its own,
    then a final chain that reads them back.

    The question defines two intermediate results from facts of the context, then a final
    chain over them (and, if the pattern asks, more facts)::

        x:a+b-c+d+e,y:h-i+j+k;x+y+x+y+y?

    The reference solution works ``x`` out in the chain format of
    :class:`~lit_attn.tasks.chain.FactChainTask`, writes it down in a short step of its own
    (``x=7``), works ``y`` out (its chain opens with two lookups, so no other step is that
    short), writes it down (``y=1``), and runs the final chain, each step opening with one of
    :data:`OPENERS` and reading the subtotals back by name, as it looks a fact up::

        a=3 | a+b:3+(b=5)=8 | … | a+b-c+d+e:4+(e=3)=7 | x=7 |
        h-i:(h=4)-(i=2)=2 | h-i+j:2+(j=5)=7 | h-i+j+k:7+(k=4)=1 | y=1 |
        so x+y:(x=7)+(y=1)=8 | then x+y+x:8+(x=7)=5 | … | answer 8

    Most of the answer's tokens come before the two short steps ``x=…`` and ``y=…``, and the
    final chain reads both of them again and again: they are the load-bearing steps, read by
    whole later steps, and late in the answer (what AttnRL's FCI is meant to find). The warm
    start teaches a policy that *slips* when it writes a subtotal down (:func:`slip_subtotals`):
    a fresh sample must get both write-downs right, while regenerating a slipped one from the
    prefix before it needs that one only (docs/task.md).

    Args:
        x_facts: facts summed into ``x`` (its chain has as many steps).
        y_facts: facts summed into ``y`` (its chain has one step fewer: it opens with two).
        pattern: the final chain's terms, in order: ``x``, ``y``, or ``.`` for a fact of the
            context. Subtotals are always added, and ``x`` and ``y`` are read a different
            number of times, so that a slip of either, or of both, always changes the answer.
        num_distractors: facts in the context that the question does not need.
        modulus: values are ``0 .. modulus-1`` and every result is taken modulo it.
        ops: the operators questions draw from (any of ``"+-"``).
    """

    x_facts: int = 5
    y_facts: int = 4
    pattern: str = "xyxyy"
    num_distractors: int = 6
    modulus: int = 10
    ops: str = "+-"

    def __post_init__(self) -> None:
        if not (2 <= self.x_facts <= 9 and 2 <= self.y_facts <= 9):
            raise ValueError(f"x_facts and y_facts must be in 2..9, got {self.x_facts} and {self.y_facts}")
        if not 2 <= len(self.pattern) <= 9 or set(self.pattern) - set(SUBTOTALS + FACT) or self.pattern[0] == FACT:
            raise ValueError(
                f"pattern must be 2-9 terms of x, y and '{FACT}' (a fact), opening with a subtotal; got {self.pattern!r}"
            )
        counts = [self.pattern.count(c) for c in SUBTOTALS]
        if any((dx * counts[0] + dy * counts[1]) % self.modulus == 0 for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy):
            raise ValueError(
                f"pattern {self.pattern!r}: with {counts[0]} x and {counts[1]} y, slips of ±1 can cancel modulo "
                f"{self.modulus}; read x and y a different number of times (e.g. 'xyxyy')"
            )
        if self.num_distractors < 0 or self.facts_needed + self.num_distractors > MAX_FACTS - len(SUBTOTALS):
            raise ValueError(
                f"subtotal mode: the question needs {self.facts_needed} facts, so num_distractors must be in "
                f"0..{MAX_FACTS - len(SUBTOTALS) - self.facts_needed}; got {self.num_distractors}"
            )
        check_arithmetic(self.modulus, self.ops)

    @property
    def facts_needed(self) -> int:
        """Facts the question uses: the two subtotals' and the final chain's."""
        return self.x_facts + self.y_facts + self.pattern.count(FACT)

    @property
    def num_steps(self) -> int:
        """Steps of a solution, the final ``answer`` line included."""
        return self.x_facts + 1 + (self.y_facts - 1) + 1 + len(self.pattern)

    @property
    def named_steps(self) -> tuple[int, int]:
        """Indices (0-based) of the two steps that write ``x`` and ``y`` down."""
        return self.x_facts, self.x_facts + self.y_facts

    def example(self, rng: random.Random) -> dict[str, Any]:
        """Draw one example from ``rng`` (its ``solution`` is the correct one)."""
        letters = [c for c in string.ascii_lowercase if c not in SUBTOTALS]
        names = rng.sample(letters, self.facts_needed + self.num_distractors)
        values = {name: rng.randrange(self.modulus) for name in names}
        kx, ky = self.x_facts, self.y_facts
        groups = [names[:kx], names[kx : kx + ky]]
        extra = iter(names[kx + ky : self.facts_needed])
        terms = [next(extra) if t == FACT else t for t in self.pattern]
        ops = [[rng.choice(self.ops) for _ in range(len(group) - 1)] for group in groups]
        final_ops = ["+" if t in SUBTOTALS else rng.choice(self.ops) for t in terms[1:]]
        openers = [rng.choice(OPENERS) for _ in terms[1:]]
        order = list(names)
        rng.shuffle(order)
        contexts = [f"{name}={values[name]}" for name in order]
        definitions = [
            f"{sub}:" + group[0] + "".join(op + n for op, n in zip(group_ops, group[1:]))
            for sub, group, group_ops in zip(SUBTOTALS, groups, ops)
        ]
        final = terms[0] + "".join(op + t for op, t in zip(final_ops, terms[1:]))
        question = ",".join(definitions) + ";" + final
        steps = chain_steps(groups[0], ops[0], values, self.modulus)
        steps.append(f"x={_result(steps[-1])}")
        y_chain = chain_steps(groups[1], ops[1], values, self.modulus, first_looked_up=True)
        steps += y_chain + [f"y={_result(y_chain[-1])}"]
        steps += _final_chain(terms, final_ops, openers, {**values, **named_values(steps)}, self.modulus)
        steps.append(f"answer {_result(steps[-1])}")
        return {
            "prompt": format_prompt(contexts, question),
            "answer": steps[-1].removeprefix("answer "),
            "solution": STEP_DELIMITER.join(steps),
            "contexts": contexts,
            "question": question,
            "relevant": sorted(order.index(name) for name in names[: self.facts_needed]),
            "mode": "subtotal",
        }


def _result(step: str) -> int:
    return int(step.rsplit("=", 1)[1])


def named_values(steps: list[str]) -> dict[str, int]:
    """The subtotals a list of steps writes down (``x=7`` → ``{"x": 7}``)."""
    found = {}
    for step in steps:
        match = _NAMED.match(step)
        if match and match.group(1) in SUBTOTALS:
            found[match.group(1)] = int(match.group(2))
    return found


def _final_chain(terms: list[str], ops: list[str], openers: list[str], values: dict[str, int], modulus: int) -> list[str]:
    """The final chain's steps, each opened by its word of :data:`OPENERS` (no answer line)."""
    steps = chain_steps(terms, ops, values, modulus, first_looked_up=True)
    return [f"{opener} {step}" for opener, step in zip(openers, steps)]


def slip_subtotals(record: dict[str, Any], rng: random.Random, rate: float, modulus: int = 10) -> dict[str, Any]:
    """``record`` (subtotal mode) with each written-down subtotal (``x=7``) slipped by ±1 with
    probability ``rate``, and the final chain recomputed from the slipped values — the solution
    of a policy that slips when it writes a subtotal down and reasons on consistently from its
    error. ``answer`` stays the correct one; ``slipped`` lists the subtotals that slipped."""
    steps = record["solution"].split(STEP_DELIMITER)
    slipped = []
    for i, step in enumerate(steps):
        match = _NAMED.match(step)
        if match and match.group(1) in SUBTOTALS and rng.random() < rate:
            wrong = (int(match.group(2)) + rng.choice((-1, 1))) % modulus
            steps[i] = f"{match.group(1)}={wrong}"
            slipped.append(match.group(1))
    if not slipped:
        return record
    first_final = next(i for i, s in enumerate(steps) if s.split(" ", 1)[0] in OPENERS)
    values = {m.group(1): int(m.group(2)) for m in re.finditer(r"\(([a-z])=(-?\d+)\)", record["solution"])}
    values.update(named_values(steps))
    final = [s.split(" ", 1) for s in steps[first_final:-1]]
    openers = [opener for opener, _ in final]
    expression = final[-1][1].split(":", 1)[0]
    terms = re.findall(r"[a-z]", expression)
    ops = re.findall(r"[+-]", expression)
    steps[first_final:-1] = _final_chain(terms, ops, openers, values, modulus)
    steps[-1] = f"answer {_result(steps[-2])}"
    return {**record, "solution": STEP_DELIMITER.join(steps), "slipped": slipped}
