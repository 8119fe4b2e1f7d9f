"""The built-in task: "facts + arithmetic chain".

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
from lit_attn.seeding import mix_seed

MAX_OPS = 6
"""Most arithmetic steps a question may chain (the shipped model is trained on 1 to 6)."""
MAX_FACTS = 26
"""Most facts in a context: one per letter."""
_ANSWER_RE = re.compile(r"answer\s*(-?\d+)")


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
            (lit_attn/warm_start.py).
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
        _check_arithmetic(self.modulus, self.ops)

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

        steps = _chain_steps(chain, ops, values, self.modulus)
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
    :class:`FactChainTask` and names each result where it is reached (``…=x=7``); each step of
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
        _check_arithmetic(self.modulus, self.ops)

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
            chain = _chain_steps(group, group_ops, values, self.modulus)
            chain[-1] = _name_result(chain[-1], sub)
            steps += chain
        steps += _final_steps(terms, final_ops, openers, {**values, **_subtotal_values(steps)}, self.modulus)
        return {
            "prompt": format_prompt(contexts, question),
            "answer": extract_answer(steps[-1]),
            "solution": STEP_DELIMITER.join(steps),
            "contexts": contexts,
            "question": question,
            "relevant": sorted(order.index(name) for name in names[: self.facts_needed]),
            "mode": "subtotal",
        }


def _chain_steps(names: list[str], ops: list[str], values: dict[str, int], modulus: int) -> list[str]:
    """:class:`FactChainTask`'s steps for the chain ``names`` joined by ``ops`` (no answer line)."""
    acc = values[names[0]]
    steps = [f"{names[0]}={acc}"]
    written = names[0]
    for op, name in zip(ops, names[1:]):
        new = (acc + values[name] if op == "+" else acc - values[name]) % modulus
        written += op + name
        steps.append(f"{written}:{acc}{op}({name}={values[name]})={new}")
        acc = new
    return steps


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


def _check_arithmetic(modulus: int, ops: str) -> None:
    """The arithmetic knobs every mode shares."""
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


def extract_answer(completion: str) -> str | None:
    """The number on the last ``answer N`` line of a completion, or None if there is none."""
    found = _ANSWER_RE.findall(completion)
    return found[-1] if found else None


def verify(completion: str, answer: str) -> float:
    """1.0 when the completion's final answer equals ``answer``, else 0.0."""
    got = extract_answer(completion)
    return 1.0 if got is not None and got == str(answer).strip() else 0.0


def make_split(task: FactChainTask, size: int, seed: int | str, exclude: set[str] | None = None) -> list[dict]:
    """``size`` examples drawn with ``seed``; prompts in ``exclude`` are skipped (held-out guard)."""
    rng = random.Random(seed)
    out: list[dict] = []
    seen: set[str] = set(exclude or ())
    attempts = 0
    while len(out) < size:
        attempts += 1
        if attempts > 20 * size + 1000:
            raise ValueError(
                f"could not draw {size} distinct examples from {task}; lower the split size "
                "or raise num_distractors / num_ops"
            )
        ex = task.example(rng)
        if ex["prompt"] in seen:
            continue
        seen.add(ex["prompt"])
        out.append(ex)
    return out


def make_splits(
    task: FactChainTask, train_size: int, val_size: int, seed: int = 0, *, train_task: FactChainTask | None = None
) -> tuple[list[dict], list[dict]]:
    """Train and held-out splits; no held-out prompt appears in train.

    ``train_task`` (default: ``task``) lets the training split differ, e.g. a warm-start
    curriculum with lookup drills, while the held-out split stays the task being measured.
    """
    val = make_split(task, val_size, seed=mix_seed(seed, 1))
    train = make_split(train_task or task, train_size, seed=mix_seed(seed, 2), exclude={e["prompt"] for e in val})
    return train, val
