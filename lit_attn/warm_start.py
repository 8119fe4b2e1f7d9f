"""Warm-start data and lookup supervision: how the shipped default model learns to look facts up.

The built-in task needs one skill a freshly initialised tiny model does not pick up from the
reference solutions alone: *looking a fact up* — at ``(m=`` in a step, copy the value that
follows ``m=`` in the context. Measured here (docs/default_model.md): trained on the solutions
alone, a 0.8 M model learned format, copying and arithmetic in ~1,000 steps and then guessed
its lookups for 6,500 more; its attention on the right fact equalled that on any other fact.

Two things make the skill form within minutes on 2 CPU cores:

* **A curriculum of recall drills** beside the task itself. A drill lists facts and asks for
  several of them, drawn *with repetition* (``k,a,k?`` → ``(k=7)(a=3)(k=7)``): when every fact
  is asked exactly once, a model can answer late queries by elimination ("a value not written
  yet") and never learns to look up.
* **Lookup supervision**: an auxiliary loss that pulls the heads of one layer, at each
  solution position holding a fact key (``m=``), onto the context position of that fact's
  value — what pretrained LLMs grow on their own as *retrieval heads*. Only those heads, and
  only at those positions, are supervised; every other head and position, and the answer
  itself, is learned from the ordinary next-token loss. Switching the heads off and
  leave-one-out on the trained model both confirm that its answers depend on the facts the
  heads read (docs/default_model.md), so attribution finds a skill the model uses, not a
  planted pattern.

Every batch is one kind (drill, chain, long context), so a batch pads to similar lengths.
Batches are a pure function of ``(seed, index)``: a run is reproducible, resumes exactly from
its step count, and the held-out sets (other seeds) are never trained on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from lit_attn.attribution.longcontext import LongContextTask
from lit_attn.errors import UserError
from lit_attn.task import MAX_FACTS, MAX_OPS, FactChainTask, SubtotalTask, format_prompt, make_split, slip_subtotals

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
            task's subtotal mode (:class:`~lit_attn.task.SubtotalTask`), with 0 to 6
            distractors and 3 to 6 facts per subtotal.
        subtotal_from: the first batch that may be a subtotal batch.
        slip: in subtotal batches, the chance that each subtotal of a reference solution slips
            by ±1 (:func:`~lit_attn.task.slip_subtotals`): the warm-started policy errs at the
            load-bearing steps at about this rate, and RL has those errors to remove.
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
            num_texts=texts, num_ops=num_ops, num_distractor_facts=rng.randint(0, MAX_FACTS), modulus=self.modulus,
            paraphrases=rng.random() < 0.5, injection=rng.random() < 0.5,
        ).record(rng)

    def subtotal_example(self, rng: random.Random) -> dict[str, Any]:
        """One subtotal-mode record, its subtotals slipped at the rate ``slip``."""
        task = SubtotalTask(subtotal_facts=rng.randint(3, 6), num_distractors=rng.randint(0, 6), modulus=self.modulus)
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


class WarmStartBatches(IterableDataset):
    """Endless training batches ``start, start + 1, …`` of a :class:`WarmStartMix` (resumable)."""

    def __init__(self, mix: WarmStartMix, seed: int, batch_size: int) -> None:
        self.mix, self.seed, self.batch_size = mix, seed, batch_size
        self.start = 0

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        index = self.start
        while True:
            yield self.mix.batch(self.seed, index, self.batch_size)
            index += 1


def lookup_targets(input_ids: Sequence[int], prompt_length: int, key_ids: set[int]) -> list[tuple[int, int]]:
    """The lookups of one sequence: ``(query, source)`` position pairs.

    ``query`` is a position at or after ``prompt_length`` holding a fact key (``m=``) whose key
    occurs exactly once in the prompt; ``source`` is the prompt position right after that
    occurrence — the first token of the fact's value. A key present twice in the prompt has no
    single right answer and is left out. A key absent from the prompt is a name the solution
    defines itself (the subtotal mode's ``…=x=7``): its later occurrences look up the value
    written right after its first one.
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


# --------------------------------------------------------------------------- held-out sets

HELD_OUT_SETS: dict[str, tuple[int, int, int]] = {
    "1op_8d": (1, 8, 0),
    "1op_20d": (1, 20, 0),
    "3op_3d": (3, 3, 0),
    "long_50": (3, 22, 50),
}
"""Held-out sets of the warm start: name → (num_ops, distractor facts, texts; 0 = plain task)."""


SUBTOTAL_SET = "subtotal"
"""Held-out set of the subtotal mode (:class:`~lit_attn.task.SubtotalTask` defaults, correct solutions)."""


def held_out_set(name: str, size: int, seed: int, modulus: int = 10) -> list[dict[str, Any]]:
    """``size`` held-out records of set ``name``, drawn from seeds no training batch uses."""
    if name == SUBTOTAL_SET:
        return make_split(SubtotalTask(modulus=modulus), size, seed=f"warm-start-held-out-{name}-{seed}")
    num_ops, distractors, texts = HELD_OUT_SETS[name]
    if not texts:
        task = FactChainTask(num_ops=num_ops, num_distractors=distractors, modulus=modulus)
        return make_split(task, size, seed=f"warm-start-held-out-{name}-{seed}")
    long = LongContextTask(num_texts=texts, num_ops=num_ops, num_distractor_facts=distractors, modulus=modulus)
    rng = random.Random(f"warm-start-held-out-{name}-{seed}")
    return [long.record(rng) for _ in range(size)]


class WarmStartDataModule(LightningDataModule):
    """Training batches of a :class:`WarmStartMix`, and the held-out sets of :data:`HELD_OUT_SETS`.

    Args:
        batch_size: examples per training batch (linked from ``model.batch_size``).
        val_batch_size: prompts per validation batch (linked from ``model.val_batch_size``).
        drill: fraction of batches that are recall drills.
        long_context: fraction of batches of long contexts (facts, paraphrases, an injected
            instruction, filler texts).
        min_texts: fewest texts of a long-context example.
        max_texts: most texts of a long-context example.
        modulus: arithmetic modulus.
        recall_steps: the first batches, recall drills over 2-8 facts only.
        ramp_steps: batches over which the largest context grows from 8 facts to 26.
        absent: fraction of task chains, from batch ``absent_from`` on, whose context lacks
            some of the facts the question needs (``WarmStartMix``).
        absent_from: the first batch with such chains (the SFT command sets it to
            ``model.context_hygiene_from``).
        subtotal: fraction of batches, from batch ``subtotal_from`` on, of the task's subtotal
            mode (``WarmStartMix``).
        subtotal_from: the first batch that may be a subtotal batch.
        slip: the chance that each subtotal of a subtotal-mode reference solution slips by ±1.
        val_sets: held-out sets to validate on (names of ``HELD_OUT_SETS``, or ``subtotal``).
        val_size: examples per held-out set.
        seed: seed of the training batches and of the held-out sets.
    """

    def __init__(
        self,
        batch_size: int = 16,
        val_batch_size: int = 64,
        drill: float = 0.3,
        long_context: float = 0.15,
        min_texts: int = 20,
        max_texts: int = 64,
        modulus: int = 10,
        recall_steps: int = 300,
        ramp_steps: int = 500,
        absent: float = 0.0,
        absent_from: int = 0,
        subtotal: float = 0.0,
        subtotal_from: int = 0,
        slip: float = 0.0,
        val_sets: list[str] | None = None,
        val_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        try:
            self.mix = WarmStartMix(
                drill=drill, long_context=long_context, min_texts=min_texts, max_texts=max_texts, modulus=modulus,
                recall_steps=recall_steps, ramp_steps=ramp_steps, absent=absent, absent_from=absent_from,
                subtotal=subtotal, subtotal_from=subtotal_from, slip=slip,
            )
        except ValueError as err:
            raise UserError(f"data: {err}") from err
        self.val_sets = list(HELD_OUT_SETS) if val_sets is None else list(val_sets)
        unknown = sorted(set(self.val_sets) - set(HELD_OUT_SETS) - {SUBTOTAL_SET})
        if unknown:
            raise UserError(
                f"data.val_sets: unknown set(s) {', '.join(unknown)}; choose from {', '.join([*HELD_OUT_SETS, SUBTOTAL_SET])}"
            )
        if batch_size < 1 or val_batch_size < 1 or val_size < 1:
            raise UserError("data.batch_size, data.val_batch_size and data.val_size must be >= 1")
        self.batches = WarmStartBatches(self.mix, seed, batch_size)

    def train_dataloader(self) -> DataLoader:
        # Batch i is a pure function of (seed, i) and each optimiser step takes one: a run
        # resumed from a checkpoint continues at batch `global_step`.
        self.batches.start = self.trainer.global_step if self.trainer is not None else 0
        return DataLoader(self.batches, batch_size=None, collate_fn=_identity)

    def val_dataloader(self) -> list[DataLoader]:
        hp = self.hparams
        return [
            DataLoader(held_out_set(name, hp.val_size, hp.seed, hp.modulus), batch_size=hp.val_batch_size, collate_fn=list)
            for name in self.val_sets
        ]


def _identity(batch: Any) -> Any:
    return batch
