"""Attribution examples: one validation rule for the AttributionCallback and ``python -m lit_attn attribute``.

An example is an object (a dict, or one line of a JSONL file) with exactly these keys:

* ``contexts`` (required) — the texts whose influence is scored: a non-empty list of
  non-empty strings, in prompt order; or one non-empty string, a document that
  :func:`~lit_attn.attribution.prompt.split_document` cuts into consecutive texts (the prompt
  then holds the document verbatim);
* ``question`` (required) — a non-empty string;
* ``answer`` (optional) — a string, attributed as given (teacher-forced); absent or null =
  the model's greedy answer;
* ``relevant`` (optional) — distinct indices into the texts (after splitting, for a
  document): the ground truth; absent or null = none;
* ``reference`` (optional) — a string, the expected answer (shown, never attributed);
* ``kinds`` (optional) — one label per text (after splitting, for a document), any non-empty
  strings such as ``needed``, ``paraphrase``, ``injected``, ``filler``, ``distractor``: the
  AttributionCallback logs the share of credit on each kind (``attribution/share/<kind>``);
* ``injected_answer`` (optional) — a string, the answer the text of kind ``injected`` asks
  for: the callback logs how often the attributed answer gives it
  (``attribution/follows_injection``, :mod:`lit_attn.attribution.kinds`).

Anything else (another key, a wrong type, an index out of range, a duplicate index) is a
one-line :class:`~lit_attn.errors.UserError` naming where (``path:line`` or ``examples[i]``),
what is wrong, and the fix. :func:`examples_from_records` takes probe records as they are (the
built-in task's, :mod:`lit_attn.tasks.probes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_attn.attribution.prompt import SPLIT_MODES, split_document
from lit_attn.errors import UserError
from lit_attn.records import jsonl_rows

EXAMPLE_KEYS = ("contexts", "question", "answer", "relevant", "reference", "kinds", "injected_answer")
"""The keys an example may have."""

BUILTIN = "builtin"
"""The AttributionCallback's ``examples`` value for the built-in task's held-out prompts."""

INJECTED = "injected"
"""The kind of a text that instructs another answer (the one ``injected_answer`` names)."""


@dataclass(frozen=True)
class AttributionExample:
    """One probe: context texts, a question and, optionally, the answer and the ground truth.

    Attributes:
        contexts: the texts whose influence is scored, in prompt order (the pieces of
            ``document`` when the example gave one).
        question: the question asked after them.
        answer: the answer to attribute (teacher-forced). None = the current model's greedy
            answer, generated anew at every logging point.
        relevant: indices into ``contexts`` of the texts that truly drive the answer (ground
            truth for the scalars), sorted. None = no ground truth: table and heatmap only.
        reference: the expected answer, shown in the table only (e.g. the verifier's answer).
        document: the document string ``contexts`` was cut from (None for a list of texts).
        kinds: one label per text (``needed``, ``paraphrase``, ``injected``, ...). None = unlabelled.
        injected_answer: the answer the ``injected`` text asks for. None = none known.
    """

    contexts: tuple[str, ...]
    question: str
    answer: str | None = None
    relevant: tuple[int, ...] | None = None
    reference: str | None = None
    document: str | None = None
    kinds: tuple[str, ...] | None = None
    injected_answer: str | None = None

    @property
    def prompt_contexts(self) -> str | list[str]:
        """What :func:`~lit_attn.attribution.attribute` takes: the document (read verbatim,
        cut into the same ``contexts`` by the same split mode) or the list of texts."""
        return self.document if self.document is not None else list(self.contexts)


def _parse_contexts(contexts: Any, where: str, split: str) -> tuple[tuple[str, ...], str | None]:
    """The texts and, for a document string, the document."""
    if isinstance(contexts, str):
        try:
            return tuple(split_document(contexts, split)), contexts
        except UserError as err:
            raise UserError(f"{where}: 'contexts': {err}") from None
    if not isinstance(contexts, list) or not all(isinstance(t, str) for t in contexts):
        raise UserError(
            f"{where}: 'contexts' must be a list of strings (one per context text) or one document string; "
            "write the texts as a JSON list of strings"
        )
    if not contexts:
        raise UserError(f"{where}: 'contexts' is empty; give at least one context text")
    for i, text in enumerate(contexts):
        if not text:
            raise UserError(
                f"{where}: context text {i} is empty, so it would be missing from the prompt; remove it or give it content"
            )
        if not text.strip():
            raise UserError(
                f"{where}: context text {i} is only whitespace ({text!r}), so nothing in it can be attributed; "
                "remove it or give it content"
            )
    return tuple(contexts), None


def _parse_relevant(relevant: Any, where: str, n: int) -> tuple[int, ...] | None:
    """Distinct indices in ``[0, n)``, sorted; None stays None."""
    if relevant is None:
        return None
    if (
        not isinstance(relevant, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in relevant)
        or any(not 0 <= i < n for i in relevant)
        or len(set(relevant)) != len(relevant)
    ):
        raise UserError(
            f"{where}: 'relevant' must be a list of distinct indices into the {n} context texts (0 to {n - 1}), "
            f"got {relevant!r}; fix the indices or drop 'relevant'"
        )
    return tuple(sorted(relevant))


def _parse_kinds(kinds: Any, where: str, n: int) -> tuple[str, ...] | None:
    """One non-empty label per text; None stays None."""
    if kinds is None:
        return None
    if not isinstance(kinds, list) or not all(isinstance(k, str) and k.strip() for k in kinds):
        raise UserError(
            f"{where}: 'kinds' must be a list of non-empty strings (one label per context text), got {kinds!r}; "
            "fix the labels or drop 'kinds'"
        )
    if len(kinds) != n:
        raise UserError(
            f"{where}: 'kinds' has {len(kinds)} label(s) for {n} context texts; give exactly one kind per context text"
        )
    return tuple(kinds)


def _parse_injected_answer(raw: dict, kinds: tuple[str, ...] | None, where: str) -> str | None:
    """``injected_answer``: a non-empty string, only beside a text of kind ``injected``."""
    value = raw.get("injected_answer")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: 'injected_answer' must be a non-empty string or null, got {value!r}; quote it or drop it")
    if INJECTED not in (kinds or ()):
        raise UserError(
            f"{where}: 'injected_answer' is given but no text has kind {INJECTED!r}; "
            f"label the injected text {INJECTED!r} in 'kinds' or drop 'injected_answer'"
        )
    return value


def parse_example(raw: Any, where: str, *, split: str = "segment") -> AttributionExample:
    """Check one example (see the module docstring) and return it; ``where`` names it in errors,
    ``split`` cuts a document string (one of ``SPLIT_MODES``)."""
    if split not in SPLIT_MODES:
        raise UserError(f"unknown split mode {split!r}; use one of {', '.join(SPLIT_MODES)}")
    if not isinstance(raw, dict):
        raise UserError(
            f"{where}: an attribution example must be an object with 'contexts' and 'question', "
            f"got {type(raw).__name__}; write each example as a JSON object"
        )
    unknown = sorted(set(raw) - set(EXAMPLE_KEYS))
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} in attribution example; "
            f"use only {', '.join(EXAMPLE_KEYS)}"
        )
    if "contexts" not in raw:
        raise UserError(f"{where}: 'contexts' is missing; add the context texts as a JSON list of strings")
    contexts, document = _parse_contexts(raw["contexts"], where, split)
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: 'question' must be a non-empty string; add the question")
    for key in ("answer", "reference"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise UserError(
                f"{where}: {key!r} must be a string or null, got {type(raw[key]).__name__}; quote it or drop it"
            )
    kinds = _parse_kinds(raw.get("kinds"), where, len(contexts))
    return AttributionExample(
        contexts=contexts, question=question, answer=raw.get("answer"),
        relevant=_parse_relevant(raw.get("relevant"), where, len(contexts)), reference=raw.get("reference"),
        document=document, kinds=kinds, injected_answer=_parse_injected_answer(raw, kinds, where),
    )


def read_jsonl_examples(path: Path, *, split: str = "segment") -> list[tuple[str, AttributionExample]]:
    """``(path:line, example)`` for every non-blank line of a JSONL file, each checked by
    :func:`parse_example` (the caller checks that the file exists and is not empty)."""
    return [(where, parse_example(raw, where, split=split)) for where, raw in jsonl_rows(path)]


def load_examples(source: str | Path | Sequence[dict], *, split: str = "segment") -> list[AttributionExample]:
    """Examples from a list of dicts or a JSONL file (one JSON object per line, blank lines skipped)."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(
                f"attribution examples file {str(source)!r} does not exist; pass a JSONL path, a list of "
                f"examples, or {BUILTIN!r} for the built-in task's held-out prompts"
            )
        examples = [example for _, example in read_jsonl_examples(path, split=split)]
        if not examples:
            raise UserError(f"{path}: no attribution examples in the file; add one JSON object per line")
        return examples
    if not isinstance(source, Sequence) or not source:
        raise UserError(
            f"examples must be a non-empty list of dicts, a JSONL path or {BUILTIN!r}, got {source!r}"
        )
    return [parse_example(raw, f"examples[{i}]", split=split) for i, raw in enumerate(source)]


def examples_from_records(records: Sequence[dict[str, Any]], where: str = "held-out record") -> list[AttributionExample]:
    """Examples from probe records: plain dicts with ``contexts`` and ``question`` and,
    optionally, ``relevant``, ``reference``, ``kinds`` and ``injected_answer`` (the built-in
    task's probes, :mod:`lit_attn.tasks.probes`, are such records). The values are taken as
    given, except ``kinds``, checked as a probe's are (``where`` and the record's index name it)."""
    return [
        AttributionExample(
            contexts=tuple(r["contexts"]), question=str(r["question"]),
            relevant=tuple(r["relevant"]) if r.get("relevant") is not None else None,
            reference=str(r["reference"]) if r.get("reference") is not None else None,
            kinds=_parse_kinds(r.get("kinds"), f"{where} {i}", len(r["contexts"])),
            injected_answer=str(r["injected_answer"]) if r.get("injected_answer") is not None else None,
        )
        for i, r in enumerate(records)
    ]
