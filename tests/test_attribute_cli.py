"""``python -m lit_attn attribute`` end to end (through ``lit_attn.cli.main``), and its one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, MambaConfig

from lit_attn.cli import main
from lit_attn.task import FactChainTask
from lit_attn.tokenizer import build_char_tokenizer


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def task_rows(count: int) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for _ in range(count):
        ex = FactChainTask(num_distractors=3).example(rng)
        rows.append({"contexts": ex["contexts"], "question": ex["question"], "relevant": ex["relevant"]})
    return rows


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["attribute", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_attribute_shipped_model_prints_tables_and_writes_jsonl(tmp_path: Path, capsys) -> None:
    rows = task_rows(2)
    rows[1]["answer"] = "a=1\n\nanswer 1"
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out" / "scores.jsonl"
    code, out, err = run(["--input", str(source), "--output", str(output), "--num-subsamples", "4"], capsys)
    assert code == 0, err
    assert out.count("attntrace:") == 2 and "✓" in out and f"wrote 2 results to {output}" in out
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(written) == 2 and not list(output.parent.glob(".*.tmp"))
    for row, source_row in zip(written, rows):
        assert row["method"] == "attntrace" and row["params"]["rounds"] == 4
        assert len(row["scores"]) == len(source_row["contexts"]) == len(row["ranking"])
        assert row["relevant"] == source_row["relevant"] and row["contexts"] == source_row["contexts"]
    assert written[1]["answer"] == "a=1\n\nanswer 1"
    assert written[0]["answer"]  # generated greedily


@pytest.mark.parametrize("method", ["leave_one_out", "attention"])
def test_attribute_baseline_methods_on_a_local_model(method: str, tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"contexts": ["a=1", "b=2"], "question": "a+b", "answer": "a=1"}])
    output = tmp_path / "scores.jsonl"
    code, out, err = run(["--model", str(tiny_model_dir), "--input", str(source), "--output", str(output), "--method", method], capsys)
    assert code == 0, err
    assert json.loads(output.read_text())["method"] == method


def assert_one_line_error(code: int, err: str, *patterns: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for pattern in patterns:
        assert pattern in lines[0], lines[0]


def test_missing_input_file(tmp_path: Path, capsys) -> None:
    code, _, err = run(["--input", str(tmp_path / "nope.jsonl")], capsys)
    assert_one_line_error(code, err, "nope.jsonl' does not exist", "--input")


def test_malformed_line_names_its_number(tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [task_rows(1)[0], "", '{"contexts": ["a=1"], "question": '])
    code, _, err = run(["--input", str(source)], capsys)
    assert_one_line_error(code, err, "in.jsonl:3: malformed JSON")


@pytest.mark.parametrize(
    "row,message",
    [
        ({"contexts": [], "question": "a"}, "'contexts' is empty"),
        ({"question": "a"}, "'contexts' must be a list of strings"),
        ({"contexts": ["a=1"]}, "'question' must be a string"),
        ({"contexts": ["a=1"], "question": "a", "relevant": [3]}, "'relevant' must be a list of text indices in [0, 1)"),
        ({"contexts": ["a=1", ""], "question": "a", "answer": "1"}, "context text 1 is empty, so it would be missing from the prompt"),
    ],
)
def test_bad_examples(row: dict, message: str, tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [row])
    output = tmp_path / "scores.jsonl"
    code, _, err = run(["--input", str(source), "--output", str(output)], capsys)
    assert_one_line_error(code, err, "in.jsonl:1", message)
    assert not output.exists()


def test_prompt_longer_than_the_model_context(tmp_path: Path, capsys) -> None:
    rows = [task_rows(1)[0], {"contexts": ["a=1" * 100] * 8, "question": "a", "answer": "a+1"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "scores.jsonl"
    code, _, err = run(["--input", str(source), "--output", str(output), "--num-subsamples", "2"], capsys)
    assert_one_line_error(code, err, "in.jsonl:2", "tokens plus 3 answer tokens", "longer than the model's context of 1024 tokens")
    assert not output.exists()  # the first example's result is not half-written


def test_model_without_attention_capture(tmp_path: Path, capsys) -> None:
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    mamba = AutoModelForCausalLM.from_config(
        MambaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, state_size=4,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    )
    mamba.save_pretrained(tmp_path / "mamba")
    tok.save_pretrained(tmp_path / "mamba")
    source = write_jsonl(tmp_path / "in.jsonl", [{"contexts": ["a=1", "b=2"], "question": "a", "answer": "1"}])
    code, _, err = run(["--model", str(tmp_path / "mamba"), "--input", str(source)], capsys)
    assert_one_line_error(code, err, "MambaForCausalLM (mamba) does not route its attention")


def test_bad_options(tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", task_rows(1))
    code, _, err = run(["--input", str(source), "--method", "leave_one_out", "--num-subsamples", "3"], capsys)
    assert_one_line_error(code, err, "--num-subsamples applies to --method attntrace only")
    code, _, err = run(["--input", str(source), "--method", "shapley"], capsys)
    assert_one_line_error(code, err, "invalid choice: 'shapley'", "--help")
    code, _, err = run(["--input", str(source), "--subsample-ratio", "1.5"], capsys)
    assert_one_line_error(code, err, "subsample_ratio must be in (0, 1]")
    code, _, err = run(["--input", str(source), "--model", str(tmp_path / "missing")], capsys)
    assert_one_line_error(code, err, "does not exist", "never downloads")
