"""Tests for lit_attn.records: loading JSONL / Parquet datasets and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_attn.errors import UserError
from lit_attn.records import load_records, validate_prompt_lengths
from lit_attn.tokenizer import build_char_tokenizer


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def good_rows() -> list[dict]:
    return [
        {"prompt": "1+1=?", "answer": 2, "contexts": ["a=1", "b=1"], "difficulty": "easy"},
        {"prompt": "What is half?", "answer": "1/2", "difficulty": "hard", "tags": ["x", "y"]},
    ]


def test_jsonl_round_trip_keeps_extra_columns(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in good_rows()[:1]] + ["", "   "]
                       + [json.dumps(good_rows()[1])])
    records = load_records(path)
    assert len(records) == 2  # blank lines skipped
    assert records[0] == {"prompt": "1+1=?", "answer": "2", "contexts": ["a=1", "b=1"], "difficulty": "easy"}
    assert records[1]["answer"] == "1/2"
    assert records[1]["tags"] == ["x", "y"]
    assert "contexts" not in records[1]


def test_parquet_round_trip_keeps_extra_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"question": "1+1=?", "gold": 2, "contexts": ["a=1"], "difficulty": "easy"},
        {"question": "2+2=?", "gold": 4, "contexts": None, "difficulty": "hard"},
    ]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    records = load_records(path, prompt_key="question", answer_key="gold")
    assert records[0] == {"prompt": "1+1=?", "answer": "2", "contexts": ["a=1"], "difficulty": "easy"}
    assert records[1] == {"prompt": "2+2=?", "answer": "4", "difficulty": "hard"}


def test_custom_keys_jsonl(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.json", [json.dumps({"q": "hi", "a": 1.5})])
    assert load_records(path, prompt_key="q", answer_key="a") == [{"prompt": "hi", "answer": "1.5"}]


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,answer\n")
    with pytest.raises(UserError, match=r"\.jsonl.*\.parquet"):
        load_records(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found.*nope.jsonl"):
        load_records(tmp_path / "nope.jsonl")


def test_malformed_json_names_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good_rows()[0]), "", '{"prompt": "x", '])
    with pytest.raises(UserError) as err:
        load_records(path)
    msg = str(err.value)
    assert "d.jsonl:3:" in msg and "malformed JSON" in msg and "\n" not in msg


def test_json_array_file_gets_hint(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(good_rows(), indent=2))
    with pytest.raises(UserError, match=r"d\.json:1:.*one JSON object per line"):
        load_records(path)


def test_line_not_an_object(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good_rows()[0]), "[1, 2]"])
    with pytest.raises(UserError, match=r"d\.jsonl:2: .*array, not an object"):
        load_records(path)


def test_missing_prompt(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"answer": "1"})])
    with pytest.raises(UserError, match=r"d\.jsonl:1: missing 'prompt'.*prompt_key"):
        load_records(path)


def test_empty_prompt(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"prompt": "  ", "answer": "1"})])
    with pytest.raises(UserError, match=r"d\.jsonl:1: 'prompt' is an empty string"):
        load_records(path)


def test_non_string_prompt(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"prompt": 3, "answer": "1"})])
    with pytest.raises(UserError, match=r"d\.jsonl:1: 'prompt' is a number"):
        load_records(path)


def test_missing_answer(tmp_path: Path) -> None:
    lines = [json.dumps(good_rows()[0]), json.dumps({"prompt": "p"})]
    with pytest.raises(UserError, match=r"d\.jsonl:2: missing 'answer'.*answer_key"):
        load_records(write_lines(tmp_path / "d.jsonl", lines))


def test_non_scalar_answer(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"prompt": "p", "answer": [1]})])
    with pytest.raises(UserError, match=r"d\.jsonl:1: 'answer' is a array"):
        load_records(path)


@pytest.mark.parametrize("contexts", ["a=1", [1, 2], {"a": 1}])
def test_bad_contexts(tmp_path: Path, contexts: object) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"prompt": "p", "answer": 1, "contexts": contexts})])
    with pytest.raises(UserError, match=r"d\.jsonl:1: 'contexts' is .*list of strings"):
        load_records(path)


def test_reserved_column(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"prompt": "p", "answer": 1, "completions": 2})])
    with pytest.raises(UserError, match="'completions' clashes"):
        load_records(path)


def test_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(good_rows()[0]).encode() + b"\n\xff\xfe\n")
    with pytest.raises(UserError, match=r"d\.jsonl:2: .*UTF-8"):
        load_records(path)


def test_empty_jsonl(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", ["", "  "])
    with pytest.raises(UserError, match="empty"):
        load_records(path)


def test_parquet_errors_name_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": None}]), path)
    with pytest.raises(UserError, match=r"d\.parquet row 1: missing 'answer'"):
        load_records(path)

    empty = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), empty)
    with pytest.raises(UserError, match="empty"):
        load_records(empty)

    broken = tmp_path / "b.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(UserError, match="cannot read Parquet"):
        load_records(broken)


def test_validate_prompt_lengths() -> None:
    tok = build_char_tokenizer()
    records = [{"prompt": "abc", "answer": "1"}, {"prompt": "abcdefgh", "answer": "2"}]
    validate_prompt_lengths(records, tok, 8)
    with pytest.raises(UserError) as err:
        validate_prompt_lengths(records, tok, 5, path_hint="d.jsonl")
    msg = str(err.value)
    assert msg.startswith("d.jsonl: record 1 ") and "8 tokens" in msg and "5" in msg
    assert "max_new_tokens" in msg
    with pytest.raises(UserError, match="max_new_tokens"):
        validate_prompt_lengths(records, tok, 0)
