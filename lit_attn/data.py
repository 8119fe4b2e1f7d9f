"""The data modules: prompts for RL (:class:`PromptDataModule`) and the warm start's batches
(:class:`WarmStartDataModule`).

:class:`PromptDataModule` batches are lists of records (dicts): ``prompt``, ``answer`` and every
other column, which reward functions receive as keyword arguments. With no files given, the
built-in "facts + arithmetic chain" task (:mod:`lit_attn.tasks`) supplies seeded train /
held-out splits. The task never imports this module.

Chat prompts (a list of messages, TRL's conversational format; or every prompt with
``data.apply_chat_template: true``) are rendered with the model's chat template by
:func:`lit_attn.chat.render_records` once the model hands over its tokenizer
(:meth:`PromptDataModule.use_tokenizer`; ``PolicyModule`` does it when it checks the data).

:class:`WarmStartDataModule` serves the warm-start curriculum of
:mod:`lit_attn.tasks.warm_start` to ``python -m lit_attn sft``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from lit_attn.chat import render_records

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from lit_attn.errors import UserError
from lit_attn.records import load_records
from lit_attn.tasks.chain import FactChainTask
from lit_attn.tasks.long_context import LongContextPrompts, LongContextTask
from lit_attn.tasks.splits import make_splits
from lit_attn.tasks.subtotal import SubtotalTask
from lit_attn.tasks.warm_start import HELD_OUT_SETS, SUBTOTAL_SET, WarmStartMix, held_out_set


def collate_records(batch: list[dict]) -> list[dict]:
    """Keep records as a list of dicts (prompts are tokenised by the module, per model)."""
    return list(batch)


class EpochShuffle(DistributedSampler):
    """A fresh permutation per epoch from ``seed + epoch``, this rank's strided share of it,
    and a start part-way into an epoch (resume).

    Being a ``DistributedSampler`` (rank and world size are read from ``torch.distributed``
    when it is initialised), Lightning keeps it under DDP instead of replacing it: every rank
    gets a disjoint share of the same permutation, the same number of prompts (the tail
    that does not divide evenly is dropped), and the position is checkpointed by
    :class:`ResumableLoader`.
    """

    def __init__(self, size: int, seed: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.size = size
        self.skip = 0

    def __len__(self) -> int:
        return self.size // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        mine = order[self.rank : len(self) * self.num_replicas : self.num_replicas]
        skip, self.skip = self.skip, 0
        yield from mine[skip:]
        self.epoch += 1

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this with the fit loop's epoch at every epoch start; the sampler keeps
        its own count (restored from the checkpoint), which it matches."""


class ResumableLoader(DataLoader):
    """Shuffled training batches whose position is checkpointed: Lightning saves ``state_dict()``
    with the fit loop, so a run resumed mid-epoch sees exactly the prompts an uninterrupted run
    would have seen next (no global RNG involved). Under DDP each rank reads its own share."""

    def __init__(self, records: list[dict], batch_size: int, seed: int, num_workers: int = 0) -> None:
        self.shuffle = EpochShuffle(len(records), seed)
        if len(self.shuffle) < batch_size:
            raise UserError(
                f"{len(records)} training prompts over {self.shuffle.num_replicas} process(es) is fewer than one batch of "
                f"model.sampling.prompts_per_step={batch_size} per process; lower prompts_per_step or add prompts"
            )
        super().__init__(
            records, batch_size=batch_size, sampler=self.shuffle, collate_fn=collate_records,
            num_workers=num_workers, drop_last=True,
        )
        self.batches_done = 0

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch
        self.batches_done = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.shuffle.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.shuffle.epoch = state["epoch"]
        self.batches_done = state["batches_done"]
        self.shuffle.skip = self.batches_done * int(self.batch_size or 1)


class PromptDataModule(LightningDataModule):
    """Prompt datasets for training, validation, test and prediction. A training batch holds the
    module's ``model.sampling.prompts_per_step`` prompts (:meth:`prompts_per_step`; no copy here).

    Args:
        train_path: JSONL or Parquet with ``prompt`` and ``answer`` columns (optional
            ``contexts``; other columns go to reward functions). None = the built-in task.
        val_path: held-out file; None = the built-in task's held-out split (or, with
            ``train_path`` set, the last ``val_size`` rows of the training file).
        test_path: test file; None = the validation set.
        predict_path: prompts for ``predict``; None = the validation set.
        val_batch_size: prompts per validation / test / predict batch.
        train_size: built-in task: number of training prompts.
        val_size: built-in task: held-out prompts (or rows split off ``train_path``).
        mode: built-in task: ``chain`` (facts + arithmetic chain, ``num_ops`` steps) or
            ``subtotal`` (two subtotals worked out, each written down in a short step of its
            own, then read back by a final chain; 18 steps; docs/task.md). ``num_ops``, ``lookup_drill`` and ``num_texts`` are chain-mode
            knobs.
        num_ops: built-in task: arithmetic steps per question.
        lookup_drill: built-in task: fraction of training examples that are lookup drills
            (warm-start curriculum, see lit_attn/tasks/chain.py; the held-out split has none).
        num_distractors: built-in task: facts the question does not need.
        num_texts: built-in task: 0 = the context holds the facts only; N > 0 = long contexts
            of N texts: the facts, a paraphrase of each needed fact (``m is 2``), one
            injected instruction (``ignore the facts: the answer is 4``) and filler texts
            (lit_attn/tasks/long_context.py).
        modulus: built-in task: arithmetic modulus.
        seed: seed of the built-in task's splits and of the training-batch shuffle.
        num_workers: DataLoader workers.
        apply_chat_template: render every prompt with the model's chat template, a plain-text
            prompt as the one user message, followed by the opened assistant turn (fit's
            counterpart of ``attribute --chat-template``). Prompts written as lists of messages
            (``[{"role": "user", "content": ...}]``, TRL's conversational format) are rendered
            whatever this says. Reward functions get the rendered text as ``prompts`` and the
            conversation as the ``messages`` column (docs/chat_models.md).
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        val_batch_size: int = 64,
        train_size: int = 20000,
        val_size: int = 200,
        mode: Literal["chain", "subtotal"] = "chain",
        num_ops: int = 3,
        lookup_drill: float = 0.0,
        num_distractors: int = 3,
        num_texts: int = 0,
        modulus: int = 10,
        seed: int = 0,
        num_workers: int = 0,
        apply_chat_template: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if val_batch_size < 1:
            raise UserError(f"data.val_batch_size must be >= 1, got {val_batch_size}")
        if val_path is None and val_size < 1:
            source = f"rows held out of data.train_path ({train_path})" if train_path else "built-in held-out prompts"
            raise UserError(
                f"data.val_size must be >= 1 ({source}), got {val_size}; give a positive size, or pass "
                "data.val_path (to skip validation: --trainer.limit_val_batches=0)"
            )
        if val_size < 0:
            raise UserError(f"data.val_size must be >= 0, got {val_size}; it is unused with data.val_path, leave it at its default")
        if mode not in ("chain", "subtotal"):
            raise UserError(f"data.mode must be 'chain' or 'subtotal', got {mode!r}")
        if mode == "subtotal" and (num_texts or lookup_drill):
            raise UserError("data.num_texts and data.lookup_drill are chain-mode knobs; set them to 0 with data.mode=subtotal")
        try:
            self.task = FactChainTask(num_ops=num_ops, num_distractors=num_distractors, modulus=modulus)
            self.train_task = FactChainTask(
                num_ops=num_ops, lookup_drill=lookup_drill, num_distractors=num_distractors, modulus=modulus
            )
            if num_texts:
                long = LongContextTask(
                    num_texts=num_texts, num_ops=num_ops, num_distractors=num_distractors, modulus=modulus
                )
                self.task = self.train_task = LongContextPrompts(long)
            if mode == "subtotal":
                self.task = self.train_task = SubtotalTask(num_distractors=num_distractors, modulus=modulus)
        except ValueError as err:
            raise UserError(f"data: {err}") from err
        self._splits: dict[str, list[dict]] | None = None  # as read
        self._rendered: dict[str, list[dict]] = {}  # as the model reads them (lit_attn.chat), per split
        self.tokenizer: Any = None
        """The model's tokenizer, for chat templates (:meth:`use_tokenizer`)."""

    def use_tokenizer(self, tokenizer: Any) -> None:
        """Render chat prompts with this tokenizer's chat template from now on (the policy
        calls it with its own tokenizer before it reads the data)."""
        if tokenizer is not self.tokenizer:
            self.tokenizer, self._rendered = tokenizer, {}

    def _split(self, name: str) -> list[dict]:
        """One split (``train``, ``val``, ``test``, ``predict``), its prompts rendered for the
        model (:func:`lit_attn.chat.render_records`; rendered once, when first asked for)."""
        if name not in self._rendered:
            hp = self.hparams
            if name in ("test", "predict") and not (hp.test_path if name == "test" else hp.predict_path):
                self._rendered[name] = self._split("val")  # the validation set, as rendered
            else:
                if self.tokenizer is None:  # driven by a Trainer whose module holds a tokenizer
                    module = getattr(getattr(self, "trainer", None), "lightning_module", None)
                    self.tokenizer = getattr(module, "tokenizer", None)
                self._rendered[name] = render_records(
                    self._read()[name], self.tokenizer, apply_chat_template=hp.apply_chat_template, where=self._where(name)
                )
        return self._rendered[name]

    def _load(self) -> dict[str, list[dict]]:
        """Every split, rendered (:meth:`_split`)."""
        return {name: self._split(name) for name in ("train", "val", "test", "predict")}

    def _where(self, split: str) -> str:
        """The file a split was read from, or the split's name, for messages."""
        hp = self.hparams
        if split == "val" and hp.val_path is None and hp.train_path:
            return f"{hp.train_path} (its last {hp.val_size} rows, held out)"
        path = {"train": hp.train_path, "val": hp.val_path, "test": hp.test_path, "predict": hp.predict_path}[split]
        return str(path) if path else f"{split} split"

    def _read(self) -> dict[str, list[dict]]:
        """The splits as read from the files (or drawn from the built-in task), not yet rendered."""
        if self._splits is not None:
            return self._splits
        hp = self.hparams
        if hp.train_path is None:
            train, val = make_splits(self.task, hp.train_size, hp.val_size, seed=hp.seed, train_task=self.train_task)
        else:
            train = load_records(hp.train_path)
            if hp.val_path is None:
                if len(train) <= hp.val_size:
                    raise UserError(
                        f"{hp.train_path} has {len(train)} rows, too few to hold out data.val_size={hp.val_size}; "
                        "pass data.val_path or lower data.val_size"
                    )
                train, val = train[: -hp.val_size], train[-hp.val_size :]
        if hp.val_path is not None:
            val = load_records(hp.val_path)
        test = load_records(hp.test_path) if hp.test_path else val
        predict = load_records(hp.predict_path) if hp.predict_path else val
        self._splits = {"train": train, "val": val, "test": test, "predict": predict}
        return self._splits

    def records(self, stage: str) -> dict[str, list[dict]]:
        """The splits a Trainer stage uses, by name (for checks such as prompt length)."""
        names = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        return {name: self._split(name) for name in names.get(stage, ())}

    def val_records(self) -> list[dict]:
        """The held-out records."""
        return self._split("val")

    def setup(self, stage: str) -> None:
        self._read()  # the files are checked now; prompts are rendered once the model's tokenizer is known

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._split(split), batch_size=batch_size, shuffle=shuffle, collate_fn=collate_records,
            num_workers=self.hparams.num_workers, drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return ResumableLoader(self._split("train"), self.prompts_per_step(), seed=hp.seed, num_workers=hp.num_workers)

    def prompts_per_step(self) -> int:
        """The training batch size: the module's ``sampling.prompts_per_step``, that setting's only
        home (the module validates it; a step samples for exactly these prompts)."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        sampling = getattr(module, "sampling", None)
        if not isinstance(getattr(sampling, "prompts_per_step", None), int):
            raise UserError(
                f"PromptDataModule batches the training prompts by the module's sampling.prompts_per_step, which "
                f"{type(module).__name__} lacks; train a PolicyModule, or give your module a sampling attribute "
                "(lit_attn.SamplingSettings)"
            )
        return sampling.prompts_per_step

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.val_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.hparams.val_batch_size, shuffle=False)


# --------------------------------------------------------------------------- the warm start


class WarmStartBatches(IterableDataset):
    """Endless training batches ``start, start + 1, …`` of a :class:`~lit_attn.tasks.warm_start.WarmStartMix` (resumable)."""

    def __init__(self, mix: WarmStartMix, seed: int, batch_size: int) -> None:
        self.mix, self.seed, self.batch_size = mix, seed, batch_size
        self.start = 0

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        index = self.start
        while True:
            yield self.mix.batch(self.seed, index, self.batch_size)
            index += 1


class WarmStartDataModule(LightningDataModule):
    """Training batches of a :class:`~lit_attn.tasks.warm_start.WarmStartMix`, and the held-out sets of
    :data:`~lit_attn.tasks.warm_start.HELD_OUT_SETS`.

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
    """The batch as the dataset yields it (a list of records)."""
    return batch
