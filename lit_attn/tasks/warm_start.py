"""The built-in task's warm-start curriculum: what the shipped default model is trained on first.

The built-in task needs one skill a freshly initialised tiny model does not pick up from the
reference solutions alone: *looking a fact up* — at ``(m=`` in a step, copy the value that
follows ``m=`` in the context (docs/default_model.md). Beside the lookup supervision of the SFT
module (:mod:`lit_attn.lookup_loss`), the data teaches it with **a curriculum of recall
drills** beside the task itself. A drill lists facts and asks for several of them, drawn
*with repetition* (``k,a,k?`` → ``(k=7)(a=3)(k=7)``): when every fact is asked exactly once, a
model can answer late queries by elimination ("a value not written yet") and never learns to
look up.

Every batch is one kind (drill, chain, long context), so a batch pads to similar lengths.
Batches are a pure function of ``(seed, index)``: a run is reproducible, resumes exactly from
its step count, and the held-out sets (other seeds) are never trained on. The Lightning side
(:class:`lit_attn.data.WarmStartDataModule`) reads :class:`WarmStartMix` and :func:`held_out_set`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from lit_attn.tasks.chain import MAX_FACTS, MAX_OPS, FactChainTask, format_prompt
from lit_attn.tasks.long_context import LongContextTask
from lit_attn.tasks.splits import make_split
from lit_attn.tasks.subtotal import SubtotalTask, slip_subtotals

SUBTOTAL_PATTERNS = ("xyxyy", "xyyxy", "yxyxy", "xy.yxy", "x.yxyy")
"""Final chains of the subtotal batches (``.`` is a fact); the held-out set and RL use the default ``xyxyy``."""

FIRST_FACTS = 8
"""Most facts per context while the curriculum starts (recall drills only)."""


@dataclass(frozen=True)
class WarmStartMix:
    """What the warm start trains on, by batch.

    The first ``recall_steps`` batches are recall drills over 2-8 facts only; then the number
    of facts a batch may hold grows to 26 over ``ramp_steps`` batches, with task chains and long
    contexts mixed in. Measured here: with every size of context from the first step, the
    supervised head found the right fact within 300 steps but the model never learned to copy
    the value it read (lookup accuracy at chance after 1,000 steps); starting on small
    contexts, it copies correctly by step 300 and then carries the skill to long contexts.

    Args:
        drill: fraction of batches that are recall drills (queries with repetition).
        long_context: fraction of batches drawn from the long-context set's generator
            (facts, paraphrases, an injected instruction, filler texts; ``min_texts`` to
            ``max_texts`` texts). The rest are task chains with 1-``MAX_OPS`` operations and
            0 to all remaining letters as distractors.
        min_texts: fewest texts in a long-context example.
        max_texts: most texts in a long-context example.
        modulus: arithmetic modulus of every example.
        recall_steps: the first batches, recall drills over 2-8 facts only.
        ramp_steps: batches over which the largest context grows from 8 facts to 26.
        absent: from batch ``absent_from`` on, the fraction of task chains whose context
            lacks some of the facts the question needs (:func:`drop_needed_facts`): the model
            learns that a fact key with no fact behind it is read from nowhere in the context
            (with context hygiene on, its heads look away), as attribution needs when it
            drops texts from the context.
        absent_from: the first batch that may hold such chains.
        subtotal: from batch ``subtotal_from`` on, the fraction of batches drawn from the
            task's subtotal mode (:class:`~lit_attn.tasks.subtotal.SubtotalTask`), with 0 to 6
            distractors, 5 to 8 facts in ``x``, 3 to 6 in ``y`` and a final chain of
            :data:`SUBTOTAL_PATTERNS`.
        subtotal_from: the first batch that may be a subtotal batch.
        slip: in subtotal batches, the chance that each subtotal of a reference solution slips
            by ±1 where it is written down (:func:`~lit_attn.tasks.subtotal.slip_subtotals`): the
            warm-started policy errs at the load-bearing steps at about this rate, and RL has those
            errors to remove.
    """

    drill: float = 0.3
    long_context: float = 0.15
    min_texts: int = 20
    max_texts: int = 64
    modulus: int = 10
    recall_steps: int = 300
    ramp_steps: int = 500
    absent: float = 0.0
    absent_from: int = 0
    subtotal: float = 0.0
    subtotal_from: int = 0
    slip: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.subtotal <= 1 or not 0 <= self.slip <= 1 or self.subtotal_from < 0:
            raise ValueError(
                f"subtotal and slip must be in [0, 1] and subtotal_from >= 0; got {self.subtotal}, {self.slip}, {self.subtotal_from}"
            )
        if not 0 <= self.absent <= 1 or self.absent_from < 0:
            raise ValueError(f"absent must be in [0, 1] and absent_from >= 0; got {self.absent}, {self.absent_from}")
        if not (0 <= self.drill and 0 <= self.long_context and self.drill + self.long_context <= 1):
            raise ValueError(
                f"drill and long_context are fractions with drill + long_context <= 1; got {self.drill}, {self.long_context}"
            )
        if self.recall_steps < 0 or self.ramp_steps < 0:
            raise ValueError(f"recall_steps and ramp_steps must be >= 0; got {self.recall_steps}, {self.ramp_steps}")
        if not 2 * (MAX_OPS + 1) + 1 <= self.min_texts <= self.max_texts:
            raise ValueError(
                f"need {2 * (MAX_OPS + 1) + 1} <= min_texts <= max_texts; got {self.min_texts}, {self.max_texts}"
            )

    def max_facts(self, index: int) -> int:
        """The most facts a context of batch ``index`` may hold (the curriculum)."""
        if index < self.recall_steps:
            return FIRST_FACTS
        progress = min(1.0, (index - self.recall_steps + 1) / max(1, self.ramp_steps))
        return round(FIRST_FACTS + progress * (MAX_FACTS - FIRST_FACTS))

    def kind(self, rng: random.Random, index: int) -> str:
        """The kind of batch ``index``: ``drill``, ``long`` or ``chain``."""
        u = rng.random()  # drawn for every batch, so later draws do not depend on the curriculum
        if index < self.recall_steps or u < self.drill:
            return "drill"
        if u < self.drill + self.long_context and index >= self.recall_steps + self.ramp_steps:
            return "long"
        return "chain"

    def example(self, kind: str, rng: random.Random, max_facts: int = MAX_FACTS) -> dict[str, Any]:
        """One training record (``prompt``, ``solution``, …) of ``kind`` with at most ``max_facts`` facts."""
        num_ops = rng.randint(1, min(MAX_OPS, max_facts - 1))  # drawn for drills too: one stream for every kind
        if kind == "drill":
            facts = rng.randint(2, max_facts)
            return FactChainTask(num_ops=1, num_distractors=facts - 2, modulus=self.modulus, lookup_drill=1.0).example(rng)
        if kind == "chain":
            distractors = rng.randint(0, max_facts - num_ops - 1)
            return FactChainTask(num_ops=num_ops, num_distractors=distractors, modulus=self.modulus).example(rng)
        texts = rng.randint(max(self.min_texts, 2 * (num_ops + 1) + 1), self.max_texts)
        return LongContextTask(
            num_texts=texts, num_ops=num_ops, num_distractors=rng.randint(0, MAX_FACTS), modulus=self.modulus,
            paraphrases=rng.random() < 0.5, injection=rng.random() < 0.5,
        ).record(rng)

    def subtotal_example(self, rng: random.Random) -> dict[str, Any]:
        """One subtotal-mode record, its subtotals slipped at the rate ``slip``."""
        task = SubtotalTask(
            x_facts=rng.randint(5, 8), y_facts=rng.randint(3, 6), pattern=rng.choice(SUBTOTAL_PATTERNS),
            num_distractors=rng.randint(0, 6), modulus=self.modulus,
        )
        return slip_subtotals(task.example(rng), rng, self.slip, self.modulus)

    def batch(self, seed: int, index: int, size: int) -> list[dict[str, Any]]:
        """Training batch ``index`` of the run seeded ``seed`` (a pure function of the three)."""
        if self.subtotal > 0 and index >= self.subtotal_from:
            # A stream of its own, so the other batches stay those of a run without this mode.
            own = random.Random(f"warm-start-subtotal-{seed}-{index}")
            if own.random() < self.subtotal:
                return [self.subtotal_example(own) for _ in range(size)]
        rng = random.Random(f"warm-start-{seed}-{index}")
        kind = self.kind(rng, index)
        facts = self.max_facts(index)
        batch = [self.example(kind, rng, facts) for _ in range(size)]
        if kind == "chain" and self.absent > 0 and index >= self.absent_from:
            # A stream of its own, so the other batches stay those of a run without absent facts.
            gaps = random.Random(f"warm-start-absent-{seed}-{index}")
            batch = [drop_needed_facts(rec, gaps) if gaps.random() < self.absent else rec for rec in batch]
        return batch


def drop_needed_facts(record: dict[str, Any], rng: random.Random, rate: float = 0.5) -> dict[str, Any]:
    """``record`` (a task chain) with some of the facts its question needs removed from the
    context: each with probability ``rate``, at least one. ``absent`` lists the removed fact
    names; the solution is kept as it was (its lookups of the removed facts now have nothing
    to read, and :meth:`lit_attn.sft.SFTModule.encode_lookups` trains nothing after the first)."""
    needed = [record["contexts"][i] for i in record["relevant"]]
    dropped = [text for text in needed if rng.random() < rate] or [rng.choice(needed)]
    contexts = [text for text in record["contexts"] if text not in dropped]
    return {
        **record,
        "prompt": format_prompt(contexts, record["question"]),
        "contexts": contexts,
        "relevant": [i for i, text in enumerate(contexts) if text in needed],
        "absent": [text.split("=")[0] for text in dropped],
    }


HELD_OUT_SETS: dict[str, tuple[int, int, int]] = {
    "1op_8d": (1, 8, 0),
    "1op_20d": (1, 20, 0),
    "3op_3d": (3, 3, 0),
    "long_50": (3, 22, 50),
}
"""Held-out sets of the warm start: name → (num_ops, distractor facts, texts; 0 = plain task)."""


SUBTOTAL_SET = "subtotal"
"""Held-out set of the subtotal mode (:class:`~lit_attn.tasks.subtotal.SubtotalTask` defaults, correct solutions)."""


def held_out_set(name: str, size: int, seed: int, modulus: int = 10) -> list[dict[str, Any]]:
    """``size`` held-out records of set ``name``, drawn from seeds no training batch uses."""
    if name == SUBTOTAL_SET:
        return make_split(SubtotalTask(modulus=modulus), size, seed=f"warm-start-held-out-{name}-{seed}")
    num_ops, distractors, texts = HELD_OUT_SETS[name]
    if not texts:
        task = FactChainTask(num_ops=num_ops, num_distractors=distractors, modulus=modulus)
        return make_split(task, size, seed=f"warm-start-held-out-{name}-{seed}")
    long = LongContextTask(num_texts=texts, num_ops=num_ops, num_distractors=distractors, modulus=modulus)
    rng = random.Random(f"warm-start-held-out-{name}-{seed}")
    return [long.record(rng) for _ in range(size)]
