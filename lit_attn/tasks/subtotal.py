"""The built-in task's ``subtotal`` mode: two subtotals named mid-answer, then a chain that reads them back.

:class:`SubtotalTask` draws the examples; :func:`slip_subtotals` turns a reference solution into
that of a policy that slips at the subtotals (docs/task.md, ``subtotal`` mode).
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


@dataclass(frozen=True)
class SubtotalTask:
    """The built-in task's reasoning mode: two subtotals, then a chain that reads them back.

    The question defines two intermediate results from facts of the context, then a final
    chain over facts *and* those results::

        x:a+b-c+d,y:f-g+h+i;x+j+y-k+y+l+x-m+y?

    The reference solution computes ``x`` and ``y`` step by step in the format of
    :class:`~lit_attn.tasks.chain.FactChainTask` and names each result where it is reached (``…=x=7``); each step of
    the final chain opens with one of :data:`OPENERS` and reads the subtotals back by name,
    exactly as it looks a fact up (``(x=7)``)::

        a=3 | a+b:3+(b=5)=8 | a+b-c:8-(c=2)=6 | a+b-c+d:6+(d=1)=x=7 |
        f=4 | … | f-g+h+i:9+(i=2)=y=1 |
        so x+j:(x=7)+(j=4)=1 | then x+j+y:1+(y=1)=2 | … | answer 5

    So the steps that name ``x`` and ``y`` sit in the middle of the answer, and steps well
    after them read them (what AttnRL's FCI measures). The warm start teaches a policy that
    *slips* at exactly those steps (:func:`slip_subtotals`): a fresh sample carries the slip of
    either subtotal to a wrong answer, while regenerating a slipped step from the prefix
    before it usually repairs it (docs/task.md).

    Args:
        subtotal_facts: facts summed into each subtotal (its steps: ``subtotal_facts``).
        pattern: the subtotals the final chain reads, in order; a fact comes between each two
            (the chain has ``2·len(pattern) - 1`` terms and as many steps, its answer line
            included). Subtotals are always added, and ``x`` and ``y`` are read a different
            number of times, so that a slip of either, or of both, always changes the answer.
        num_distractors: facts in the context that the question does not need.
        modulus: values are ``0 .. modulus-1`` and every result is taken modulo it.
        ops: the operators questions draw from (any of ``"+-"``).
    """

    subtotal_facts: int = 4
    pattern: str = "xyyxy"
    num_distractors: int = 6
    modulus: int = 10
    ops: str = "+-"

    def __post_init__(self) -> None:
        if not 2 <= self.subtotal_facts <= 8:
            raise ValueError(f"subtotal_facts must be in 2..8, got {self.subtotal_facts}")
        if not 1 <= len(self.pattern) <= 6 or set(self.pattern) - set(SUBTOTALS):
            raise ValueError(f"pattern must be 1-6 letters of {SUBTOTALS!r}, got {self.pattern!r}")
        counts = [self.pattern.count(c) for c in SUBTOTALS]
        if any((dx * counts[0] + dy * counts[1]) % self.modulus == 0 for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy):
            raise ValueError(
                f"pattern {self.pattern!r}: with {counts[0]} x and {counts[1]} y, slips of ±1 can cancel modulo "
                f"{self.modulus}; read x and y a different number of times (e.g. 'xyyxy')"
            )
        if self.num_distractors < 0 or self.facts_needed + self.num_distractors > MAX_FACTS - len(SUBTOTALS):
            raise ValueError(
                f"subtotal mode: the question needs {self.facts_needed} facts, so num_distractors must be in "
                f"0..{MAX_FACTS - len(SUBTOTALS) - self.facts_needed}; got {self.num_distractors}"
            )
        check_arithmetic(self.modulus, self.ops)

    @property
    def facts_needed(self) -> int:
        """Facts the question uses: two subtotals' worth, and the final chain's."""
        return 2 * self.subtotal_facts + len(self.pattern) - 1

    @property
    def num_steps(self) -> int:
        """Steps of a solution, the final ``answer`` line included."""
        return 2 * self.subtotal_facts + 2 * len(self.pattern) - 1

    def example(self, rng: random.Random) -> dict[str, Any]:
        """Draw one example from ``rng`` (its ``solution`` is the correct one)."""
        letters = [c for c in string.ascii_lowercase if c not in SUBTOTALS]
        names = rng.sample(letters, self.facts_needed + self.num_distractors)
        values = {name: rng.randrange(self.modulus) for name in names}
        k = self.subtotal_facts
        groups = [names[:k], names[k : 2 * k]]
        final_facts = names[2 * k : self.facts_needed]
        terms = [self.pattern[i // 2] if i % 2 == 0 else final_facts[i // 2] for i in range(2 * len(self.pattern) - 1)]
        ops = [[rng.choice(self.ops) for _ in range(k - 1)] for _ in groups]
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
        steps: list[str] = []
        for sub, group, group_ops in zip(SUBTOTALS, groups, ops):
            chain = chain_steps(group, group_ops, values, self.modulus)
            chain[-1] = _name_result(chain[-1], sub)
            steps += chain
        steps += _final_steps(terms, final_ops, openers, {**values, **_subtotal_values(steps)}, self.modulus)
        return {
            "prompt": format_prompt(contexts, question),
            "answer": steps[-1].removeprefix("answer "),
            "solution": STEP_DELIMITER.join(steps),
            "contexts": contexts,
            "question": question,
            "relevant": sorted(order.index(name) for name in names[: self.facts_needed]),
            "mode": "subtotal",
        }


def _name_result(step: str, name: str) -> str:
    """``…=7`` → ``…=x=7``: the step names its result."""
    head, value = step.rsplit("=", 1)
    return f"{head}={name}={value}"


def _subtotal_values(steps: list[str]) -> dict[str, int]:
    """The subtotals a list of steps names (``…=x=7`` → ``{"x": 7}``)."""
    found = {}
    for step in steps:
        match = re.search(r"=([a-z])=(-?\d+)$", step)
        if match and match.group(1) in SUBTOTALS:
            found[match.group(1)] = int(match.group(2))
    return found


def _final_steps(terms: list[str], ops: list[str], openers: list[str], values: dict[str, int], modulus: int) -> list[str]:
    """The final chain's steps (each opened by a word of :data:`OPENERS`) and the answer line."""
    acc = values[terms[0]]
    written = terms[0]
    steps = []
    for i, (op, term, opener) in enumerate(zip(ops, terms[1:], openers)):
        new = (acc + values[term] if op == "+" else acc - values[term]) % modulus
        left = f"({terms[0]}={acc})" if i == 0 else str(acc)
        written += op + term
        steps.append(f"{opener} {written}:{left}{op}({term}={values[term]})={new}")
        acc = new
    steps.append(f"answer {acc}")
    return steps



def slip_subtotals(record: dict[str, Any], rng: random.Random, rate: float, modulus: int = 10) -> dict[str, Any]:
    """``record`` (subtotal mode) with each subtotal's value slipped by ±1 with probability
    ``rate``, and every later step recomputed from the slipped value — the solution of a
    policy that errs at the load-bearing steps and reasons consistently from its error.
    ``answer`` stays the correct one; ``slipped`` lists the subtotals that slipped."""
    steps = record["solution"].split(STEP_DELIMITER)
    slipped = []
    for i, step in enumerate(steps):
        match = re.search(r"=([a-z])=(-?\d+)$", step)
        if match and match.group(1) in SUBTOTALS and rng.random() < rate:
            wrong = (int(match.group(2)) + rng.choice((-1, 1))) % modulus
            steps[i] = step[: match.start(2)] + str(wrong)
            slipped.append(match.group(1))
    if not slipped:
        return record
    subtotals = _subtotal_values(steps)
    first_final = next(i for i, s in enumerate(steps) if s.split(" ", 1)[0] in OPENERS)
    values = {m.group(1): int(m.group(2)) for m in re.finditer(r"\(([a-z])=(-?\d+)\)", record["solution"])}
    values.update(subtotals)
    final = [s.split(" ", 1) for s in steps[first_final:-1]]
    openers = [opener for opener, _ in final]
    expression = final[-1][1].split(":", 1)[0]
    terms = re.findall(r"[a-z]", expression)
    ops = re.findall(r"[+-]", expression)
    steps[first_final:] = _final_steps(terms, ops, openers, values, modulus)
    return {**record, "solution": STEP_DELIMITER.join(steps), "slipped": slipped}
