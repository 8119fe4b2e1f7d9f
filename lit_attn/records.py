"""Loading user datasets of prompts and answers.

A dataset is a JSONL file (one JSON object per line, suffix ``.jsonl`` or ``.json``) or a
Parquet file (suffix ``.parquet``). Every record needs a prompt — a non-empty string, or a list
of chat messages ``[{"role": "user", "content": "..."}]`` (TRL's conversational format, rendered
with the model's chat template by :mod:`lit_attn.chat`) — and an answer; ``contexts`` (a list
of strings) is optional. Any further columns are kept untouched,
because reward functions receive them as keyword arguments.

Every problem with the file is reported as a one-line :class:`~lit_attn.errors.UserError`
that names the file, where in it the problem is (1-based line for JSONL, 0-based row for
Parquet), what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lit_attn.chat import check_messages, is_chat
from lit_attn.errors import UserError, one_line
from lit_attn.files import publish_file
from lit_attn.tokenizer import describe_characters, unknown_characters

JSONL_SUFFIXES: tuple[str, ...] = (".jsonl", ".json")
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet",)

# Reward functions are called as ``fn(prompts=..., completions=..., **columns)``, so a column
# with one of these names would collide with the positional arguments.
RESERVED_COLUMNS: frozenset[str] = frozenset({"prompts", "completions"})

_SCALARS = (str, int, float, bool)


def load_records(
    path: str | Path, *, prompt_key: str = "prompt", answer_key: str = "answer"
) -> list[dict]:
    """Read and check a dataset file.

    Args:
        path: a ``.jsonl`` / ``.json`` (JSON lines) or ``.parquet`` file.
        prompt_key: the column holding the prompt text.
        answer_key: the column holding the reference answer.

    Returns:
        One dict per record. The prompt (a string, or the checked list of messages) is stored
        under ``"prompt"`` and the answer, turned
        into a string, under ``"answer"`` (whatever ``prompt_key`` / ``answer_key`` were; the
        source columns are not kept a second time, and a column already called ``"prompt"``
        or ``"answer"`` is replaced). Every other column is kept as it was read.

    Raises:
        UserError: the file is missing, has an unsupported suffix, cannot be parsed, holds a
            bad record, or holds no records at all.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        raise UserError(
            f"{p}: unsupported dataset format {suffix or '(no suffix)'!r}; "
            "use JSON lines (.jsonl or .json) or Parquet (.parquet)"
        )
    if not p.exists():
        raise UserError(f"dataset file not found: {p}; check the path")
    if not p.is_file():
        raise UserError(f"dataset path is not a file: {p}; point it at a .jsonl or .parquet file")

    if suffix in PARQUET_SUFFIXES:
        rows: Iterator[tuple[str, Any]] = _parquet_rows(p)
    else:
        rows = jsonl_rows(p)

    records = [
        _check_record(raw, where, prompt_key=prompt_key, answer_key=answer_key) for where, raw in rows
    ]
    if not records:
        raise UserError(
            f"{p}: dataset is empty (no records); add at least one record with "
            f"{prompt_key!r} and {answer_key!r}"
        )
    return records


def validate_prompt_lengths(
    records: Sequence[dict], tokenizer: Any, max_length: int, *, path_hint: str = ""
) -> None:
    """Fail early when a prompt cannot fit the model's prompt budget.

    Args:
        records: as returned by :func:`load_records` (each has a ``"prompt"``).
        tokenizer: a Hugging Face tokenizer; prompts are tokenised the default way
            (``tokenizer(texts)``, special tokens included).
        max_length: the most prompt tokens allowed (usually the context length minus
            ``max_new_tokens``).
        path_hint: the dataset's file name, put at the front of the message.

    Raises:
        UserError: naming the first record (0-based index) whose prompt is too long.
    """
    where = f"{path_hint}: " if path_hint else ""
    if max_length < 1:
        raise UserError(
            f"{where}no room for prompts: the prompt budget is {max_length} tokens; "
            "lower max_new_tokens or use a model with a longer context"
        )
    batch = 256
    for start in range(0, len(records), batch):
        texts = [r["prompt"] for r in records[start : start + batch]]
        ids = tokenizer(texts)["input_ids"]
        for offset, seq in enumerate(ids):
            if len(seq) > max_length:
                raise UserError(
                    f"{where}record {start + offset} has a prompt of {len(seq)} tokens, longer than "
                    f"the {max_length} allowed; use shorter prompts, or a model with a longer "
                    "context / a lower max_new_tokens"
                )


SPELLED_FIELDS: tuple[str, ...] = ("prompt", "contexts")
"""The fields of a record the model reads (``contexts``: a list of texts)."""


def _field_texts(record: dict, field: str) -> list[str]:
    value = record.get(field)
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def check_spelling(records: Sequence[dict], tokenizer: Any, *, path_hint: str = "") -> None:
    """Fail when a prompt or context text holds characters the model's tokenizer cannot spell
    (it would read each as its unknown token, e.g. non-ASCII text with the shipped character
    tokenizer), naming the characters and the first record that has one.

    Raises:
        UserError: one line, with the characters as ``'é' (U+00E9)``.
    """
    bad = unknown_characters(tokenizer, (t for r in records for f in SPELLED_FIELDS for t in _field_texts(r, f)))
    if not bad:
        return
    where = f"{path_hint}: " if path_hint else ""
    first, field = next(
        (i, f) for i, r in enumerate(records) for f in SPELLED_FIELDS
        if any(c in t for t in _field_texts(r, f) for c in bad)
    )
    prompt = " ".join(str(records[first]["prompt"]).split())
    shown = (prompt[:40] + "…") if len(prompt) > 40 else prompt
    raise UserError(
        f"{where}the model's tokenizer cannot spell {describe_characters(bad)}: it reads each as "
        f"{tokenizer.unk_token} (first in the {field} of record {first}, prompt {shown!r}); write the data in characters "
        "the tokenizer knows (the shipped character tokenizer spells printable ASCII and newlines), or use a model "
        "whose tokenizer covers them"
    )


# --------------------------------------------------------------------------- readers


def jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``(location, parsed value)`` for each non-blank line; the location is ``path:line``."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{where}: line is not valid UTF-8; save the file as UTF-8") from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                hint = (
                    " (the file looks like one JSON array; write one JSON object per line instead)"
                    if lineno == 1 and text.lstrip().startswith("[")
                    else ""
                )
                raise UserError(
                    f"{where}: malformed JSON ({e.msg} at column {e.colno}){hint}; "
                    "fix the line so it holds exactly one JSON object"
                ) from None
            yield where, value


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """Write one JSON value per line to a temporary file beside ``path``, then rename it over
    ``path``: a reader never sees half a file, and a failure leaves no partial file behind.
    The file gets the mode ``open(path, "w")`` would give it (0666 & ~umask, or the mode of
    the file it replaces), not mkstemp's private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        publish_file(temporary, path)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``(location, row dict)`` for each row; the location is ``path row i`` (0-based)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise UserError(
            f"{path}: reading Parquet needs pyarrow; pip install pyarrow, or convert the file to JSONL"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - any pyarrow failure means an unreadable file
        raise UserError(
            f"{path}: cannot read Parquet file ({one_line(e)}); check that it is a valid Parquet file"
        ) from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row {i}", row


# --------------------------------------------------------------------------- checks


def _check_record(raw: Any, where: str, *, prompt_key: str, answer_key: str) -> dict:
    """Validate one raw record and return it in canonical form."""
    if not isinstance(raw, dict):
        raise UserError(
            f"{where}: record is a JSON {_json_type(raw)}, not an object; write each record as "
            f'{{"{prompt_key}": ..., "{answer_key}": ...}}'
        )
    keys = _key_list(raw)
    prompt = raw.get(prompt_key)
    if prompt is None:
        raise UserError(
            f"{where}: missing {prompt_key!r} (keys: {keys}); add a {prompt_key!r} field, or rename the "
            f"column that holds the prompt to {prompt_key!r} (data files are read by column name; "
            "from Python, load_records(path, prompt_key=...) reads another column)"
        )
    if is_chat(prompt):  # TRL's conversational format: rendered with the chat template (lit_attn.chat)
        prompt = check_messages(prompt, where, prompt_key)
    elif not isinstance(prompt, str) or not prompt.strip():
        got = "an empty string" if isinstance(prompt, str) else f"a {_json_type(prompt)}"
        raise UserError(
            f"{where}: {prompt_key!r} is {got}; it must be a non-empty string or a list of chat messages "
            '([{"role": "user", "content": "..."}])'
        )
    answer = raw.get(answer_key)
    if answer is None:
        raise UserError(
            f"{where}: missing {answer_key!r} (keys: {keys}); add an {answer_key!r} field, or rename the "
            f"column that holds the reference answer to {answer_key!r} (data files are read by column name; "
            "from Python, load_records(path, answer_key=...) reads another column)"
        )
    if not isinstance(answer, _SCALARS):
        raise UserError(
            f"{where}: {answer_key!r} is a {_json_type(answer)}; it must be a single "
            "string or number"
        )
    if isinstance(answer, bool):
        raise UserError(
            f"{where}: {answer_key!r} is {str(answer).lower()}, a JSON boolean; write the reference answer "
            f'as a string or number (e.g. "{str(answer).lower()}" in quotes)'
        )
    if isinstance(answer, float) and not math.isfinite(answer):
        raise UserError(
            f"{where}: {answer_key!r} is {answer}, not a finite number (a missing value?); give the "
            "reference answer as a string or finite number, or drop the row"
        )
    if isinstance(answer, str) and not answer.strip():
        raise UserError(
            f"{where}: {answer_key!r} is an empty string{' (only whitespace)' if answer else ''}; give the reference answer, or drop the row"
        )
    reserved = sorted(RESERVED_COLUMNS & raw.keys())
    if reserved:
        raise UserError(
            f"{where}: column {reserved[0]!r} clashes with the reward-function argument of the "
            "same name; rename the column"
        )

    record = {k: v for k, v in raw.items() if k not in (prompt_key, answer_key)}
    record["prompt"] = prompt
    record["answer"] = str(answer)
    if "contexts" in record:
        contexts = record["contexts"]
        if contexts is None:
            del record["contexts"]
        elif isinstance(contexts, (list, tuple)) and all(isinstance(c, str) for c in contexts):
            record["contexts"] = list(contexts)
        else:
            bad = (
                f"a {_json_type(contexts)}"
                if not isinstance(contexts, (list, tuple))
                else "a list with a non-string item"
            )
            raise UserError(
                f"{where}: 'contexts' is {bad}; it must be a list of strings "
                "(or leave the field out)"
            )
    return record


def _json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _key_list(raw: dict, limit: int = 8) -> str:
    """The record's keys, shortened for a one-line message."""
    names = [str(k) for k in raw]
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return shown or "none"
