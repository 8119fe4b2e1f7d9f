"""The built-in task's ``chain`` mode: "facts + arithmetic chain".

A context of named facts (one text per fact, e.g. ``k=7``), some of them distractors, and
a question that chains several facts with ``+`` / ``-`` modulo ``modulus``::

    k=7
    a=3
    q=5
    m=2
    a+m-k?

The reference solution writes one step per ``"\\n\\n"``-separated block and ends with a
final answer line::

    a=3

    a+m:3+(m=2)=5

    a+m-k:5-(k=7)=8

    answer 8

Each step restates the question up to the fact it adds, then the running value, the operator
and the fact it uses, copied from the context in parentheses, then the result — so a step can
be read on its own. The format keeps every ``name=`` pair unique to its fact: a lookup is a
plain copy of one context text. (When a step also wrote ``name=`` before some other number, a
tiny model's copy heads split between the two and the lookups were never learned.)

Every example carries ``relevant``: the indices (into ``contexts``) of the facts the question
needs — the ground truth for attribution. Examples are a pure function of ``(seed, index)``,
so splits are reproducible and held-out prompts never appear in the training split.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import Any

from lit_attn.attention.steps import STEP_DELIMITER

MAX_OPS = 6
"""Most arithmetic steps a question may chain (the shipped model is trained on 1 to 6)."""
MAX_FACTS = 26
"""Most facts in a context: one per letter."""


@dataclass(frozen=True)
class FactChainTask:
    """Difficulty knobs of the built-in task.

    Args:
        num_ops: arithmetic steps per question; the question needs ``num_ops + 1`` facts.
        lookup_drill: fraction of examples that are recall drills instead (warm-start data
            only): the question names facts drawn *with repetition* (``k,a,k,m?``) and the
            solution copies them in that order (``(k=7)(a=3)(k=7)(m=2)``). Drawing with
            repetition matters: when every fact is named exactly once, late queries can be
            answered by elimination and the model never learns to look up
            (lit_attn/tasks/warm_start.py).
        num_distractors: facts in the context that the question does not need.
        modulus: values are ``0 .. modulus-1`` and every result is taken modulo it.
        ops: the operators questions draw from (any of ``"+-"``).
    """

    num_ops: int = 3
    lookup_drill: float = 0.0
    num_distractors: int = 3
    modulus: int = 10
    ops: str = "+-"

    def __post_init__(self) -> None:
        if not 1 <= self.num_ops <= MAX_OPS:
            raise ValueError(f"num_ops must be in 1..{MAX_OPS}, got {self.num_ops}")
        if not 0.0 <= self.lookup_drill <= 1.0:
            raise ValueError(f"lookup_drill must be in [0, 1], got {self.lookup_drill}")
        if self.num_distractors < 0:
            raise ValueError(f"num_distractors must be >= 0, got {self.num_distractors}")
        if self.num_ops + 1 + self.num_distractors > MAX_FACTS:
            raise ValueError(
                f"num_ops + 1 + num_distractors must be <= {MAX_FACTS} (one letter per fact); "
                f"got {self.num_ops + 1 + self.num_distractors}"
            )
        check_arithmetic(self.modulus, self.ops)

    def example(self, rng: random.Random) -> dict[str, Any]:
        """Draw one example from ``rng``."""
        num_ops = self.num_ops
        n_needed = num_ops + 1
        names = rng.sample(string.ascii_lowercase, n_needed + self.num_distractors)
        values = {name: rng.randrange(self.modulus) for name in names}
        chain = names[:n_needed]
        ops = [rng.choice(self.ops) for _ in range(num_ops)]
        order = list(names)
        rng.shuffle(order)
        contexts = [f"{name}={values[name]}" for name in order]
        relevant = sorted(order.index(name) for name in chain)
        question = chain[0] + "".join(op + name for op, name in zip(ops, chain[1:]))

        steps = chain_steps(chain, ops, values, self.modulus)
        acc = int(steps[-1].rsplit("=", 1)[1])
        steps.append(f"answer {acc}")
        if self.lookup_drill and rng.random() < self.lookup_drill:
            return drill(contexts, rng)
        return {
            "prompt": format_prompt(contexts, question),
            "answer": str(acc),
            "solution": STEP_DELIMITER.join(steps),
            "contexts": contexts,
            "question": question,
            "relevant": relevant,
        }



def chain_steps(
    names: list[str], ops: list[str], values: dict[str, int], modulus: int, *, first_looked_up: bool = False
) -> list[str]:
    """:class:`FactChainTask`'s steps for the chain ``names`` joined by ``ops`` (no answer line).

    With ``first_looked_up`` there is no bare first step (``a=3``): the first step looks both
    of its terms up (``a+b:(a=3)+(b=5)=8``), as the subtotal mode's later chains do."""
    acc = values[names[0]]
    steps = [] if first_looked_up else [f"{names[0]}={acc}"]
    written = names[0]
    for i, (op, name) in enumerate(zip(ops, names[1:])):
        new = (acc + values[name] if op == "+" else acc - values[name]) % modulus
        written += op + name
        left = f"({names[0]}={acc})" if first_looked_up and i == 0 else str(acc)
        steps.append(f"{written}:{left}{op}({name}={values[name]})={new}")
        acc = new
    return steps



def check_arithmetic(modulus: int, ops: str) -> None:
    """Check the arithmetic knobs every mode shares (``ValueError`` when one is out of range)."""
    if modulus < 2:
        raise ValueError(f"modulus must be >= 2, got {modulus}")
    if not ops or set(ops) - set("+-"):
        raise ValueError(f"ops must be a non-empty string of '+' and '-', got {ops!r}")



DRILL_QUERIES = 8
"""Queries of one recall drill."""


def drill(contexts: list[str], rng: random.Random) -> dict[str, Any]:
    """A recall drill over ``contexts``: name ``DRILL_QUERIES`` facts drawn with repetition,
    copy each one."""
    order = [rng.randrange(len(contexts)) for _ in range(DRILL_QUERIES)]
    names = ",".join(contexts[i].split("=")[0] for i in order)
    last = contexts[order[-1]].split("=")[1]
    return {
        "prompt": "\n".join(contexts) + f"\n{names}?{STEP_DELIMITER}",
        "answer": last,
        "solution": "".join(f"({contexts[i]})" for i in order),
        "contexts": contexts,
        "question": names,
        "relevant": sorted(set(order)),
    }



def format_prompt(contexts: list[str], question: str) -> str:
    """The built-in prompt: one fact per line, the question, then the step delimiter."""
    return "\n".join(contexts) + f"\n{question}?{STEP_DELIMITER}"



def in_format(completion: str, question: str) -> bool:
    """True when ``completion`` has the reference solution's shape for ``question`` (whatever
    its numbers): the first fact ``a=3``, one step per operation that restates the question up
    to the fact it adds (``a+m:3+(m=2)=5``), then ``answer N``, joined by the step delimiter."""
    steps = completion.strip().split(STEP_DELIMITER)
    names, ops = question[0::2], question[1::2]
    if len(steps) != len(names) + 1 or not re.fullmatch(rf"{names[0]}=\d+", steps[0]):
        return False
    for i, (op, name) in enumerate(zip(ops, names[1:]), start=1):
        prefix = re.escape(question[: 2 * i + 1])
        if not re.fullmatch(rf"{prefix}:\d+{re.escape(op)}\({name}=\d+\)=\d+", steps[i]):
            return False
    return re.fullmatch(r"answer -?\d+", steps[-1]) is not None
