"""The built-in attribution probes, as plain records: what ``examples: builtin`` resolves to.

An AttributionCallback given ``examples: builtin`` attributes the built-in task's held-out
prompts. This module turns the task's records into probe records — plain dicts with the keys
of an attribution example (:mod:`lit_attn.attribution.examples`): ``contexts``, ``question``,
``relevant``, ``reference``, ``kinds``, ``injected_answer`` — which the callback hands to
:func:`lit_attn.attribution.examples.examples_from_records`. Attribution knows nothing of the
task, and the task nothing of attribution or of the data module: the data module is read
through its ``hparams``, ``task``, ``records()`` and ``val_records()``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lit_attn.errors import UserError
from lit_attn.seeding import mix_seed
from lit_attn.tasks.splits import make_split

PROBE_KEYS = ("contexts", "question", "relevant", "reference", "kinds", "injected_answer")
"""The keys of a probe record."""


def builtin_probes(datamodule: Any, num_examples: int | None, *, num_distractors: int | None = None) -> list[dict[str, Any]]:
    """The first ``num_examples`` held-out records of a :class:`lit_attn.PromptDataModule`, as probe records.

    Records keep their ground truth: ``contexts``, ``question``, ``relevant`` (the facts the
    question needs), ``reference`` (the record's ``answer``: shown, the attributed answer is
    the model's own) and the kind of every text (:func:`record_kinds`), with the injected
    instruction's answer where the context has one (long contexts, ``data.num_texts``).
    Held-out records without ``contexts`` and ``question`` (a user's own data) are skipped,
    so the list is empty for data that has none. With ``num_distractors`` set and the
    built-in task as the data (no ``train_path`` / ``val_path``), the records are drawn
    afresh from the datamodule's task with that many distractor facts instead (seeded by the
    datamodule's seed, no prompt of the training split): useful when training uses no
    distractors, where every text is relevant and the scalars would be trivially 1.
    """
    hp = datamodule.hparams
    size = num_examples or hp.val_size
    if num_distractors is not None and hp.train_path is None and hp.val_path is None:
        if getattr(hp, "num_texts", 0):
            raise UserError(
                f"AttributionCallback num_distractors={num_distractors} redraws plain built-in examples, but the data "
                f"uses long contexts (data.num_texts={hp.num_texts}); set num_distractors: null to attribute held-out prompts"
            )
        train = {r["prompt"] for r in datamodule.records("fit").get("train", [])}
        try:
            task = replace(datamodule.task, num_distractors=num_distractors)
            records = make_split(task, size, seed=mix_seed(hp.seed, 3), exclude=train)
        except ValueError as err:
            raise UserError(f"AttributionCallback num_distractors={num_distractors}: {err}") from err
    else:
        records = [r for r in datamodule.val_records() if r.get("contexts") and r.get("question")][:size]
    return [probe_record(r) for r in records]


def probe_record(record: dict[str, Any]) -> dict[str, Any]:
    """One task record (or a user's record with ``contexts`` and ``question``) as a probe record."""
    return {
        "contexts": list(record["contexts"]),
        "question": str(record["question"]),
        "relevant": list(record["relevant"]) if record.get("relevant") is not None else None,
        "reference": str(record["answer"]) if record.get("answer") is not None else None,
        "kinds": record_kinds(record),
        "injected_answer": str(record["injected_answer"]) if record.get("injected_answer") is not None else None,
    }


def record_kinds(record: dict[str, Any]) -> Any:
    """The kind of every text of a built-in record: its own ``kinds`` (long contexts label
    needed facts, distractors, paraphrases, the injected instruction and filler; passed on
    as they are, attribution checks them as it checks a probe's), else ``needed`` for the
    ``relevant`` facts and ``distractor`` for the others; None without ``relevant``."""
    if record.get("kinds") is not None:
        return record["kinds"]
    if record.get("relevant") is None:
        return None
    needed = set(record["relevant"])
    return ["needed" if i in needed else "distractor" for i in range(len(record["contexts"]))]
