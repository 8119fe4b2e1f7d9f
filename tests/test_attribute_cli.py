"""``python -m lit_attn attribute`` end to end (through ``lit_attn.cli.main``), and its one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, MambaConfig

from lit_attn.callbacks import AttributionCallback
from lit_attn.cli import main
from lit_attn.errors import UserError
from lit_attn.tasks import FactChainTask
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


BAD_ROWS = [
    ({"contexts": [], "question": "a"}, "'contexts' is empty"),
    ({"question": "a"}, "'contexts' is missing"),
    ({"contexts": ["a=1", 2], "question": "a"}, "'contexts' must be a list of strings"),
    ({"contexts": " \n ", "question": "a"}, "'contexts': the document is empty"),
    ({"contexts": ["a=1"]}, "'question' must be a non-empty string"),
    ({"contexts": ["a=1"], "question": " "}, "'question' must be a non-empty string"),
    ({"contexts": ["a=1"], "question": "a", "answer": 1}, "'answer' must be a string or null"),
    ({"contexts": ["a=1"], "question": "a", "relevant": [3]}, "'relevant' must be a list of distinct indices into the 1 context texts (0 to 0)"),
    ({"contexts": ["a=1", "b=2"], "question": "a", "relevant": [1, 1]}, "'relevant' must be a list of distinct indices"),
    ({"contexts": ["a=1"], "question": "a", "relevent": [0]}, "unknown key(s) 'relevent'"),
    ({"contexts": ["a=1", ""], "question": "a", "answer": "1"}, "context text 1 is empty, so it would be missing from the prompt"),
]


@pytest.mark.parametrize("row,message", BAD_ROWS)
def test_bad_examples(row: dict, message: str, tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [row])
    output = tmp_path / "scores.jsonl"
    code, _, err = run(["--input", str(source), "--output", str(output)], capsys)
    assert_one_line_error(code, err, "in.jsonl:1", message)
    assert not output.exists()


@pytest.mark.parametrize("row,message", BAD_ROWS)
def test_the_callback_applies_the_same_rule(row: dict, message: str) -> None:
    """One validation function: the AttributionCallback rejects the same example with the same message."""
    with pytest.raises(UserError) as err:
        AttributionCallback([row])
    assert str(err.value).startswith("examples[0]: ") and message in str(err.value)


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


DOCUMENT = "a=1. b=2!  c=3?\nd=4.\n\ne=5 f=6.\n"


@pytest.mark.parametrize("mode", ["segment", "paragraph", "sentence"])
def test_split_cuts_a_document_given_as_one_string(mode: str, tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from lit_attn.attribution import split_document

    source = write_jsonl(tmp_path / "in.jsonl", [{"contexts": DOCUMENT, "question": "b", "answer": "2", "relevant": [0]}])
    output = tmp_path / "scores.jsonl"
    code, _, err = run(
        ["--model", str(tiny_model_dir), "--input", str(source), "--output", str(output), "--split", mode,
         "--method", "attention"], capsys,
    )
    assert code == 0, err
    row = json.loads(output.read_text())
    assert row["contexts"] == split_document(DOCUMENT, mode) and "".join(row["contexts"]) == DOCUMENT
    assert len(row["scores"]) == len(row["contexts"]) and row["relevant"] == [0]


def test_split_relevant_indices_count_the_pieces(tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"contexts": DOCUMENT, "question": "b", "relevant": [3]}])
    code, _, err = run(["--input", str(source), "--split", "paragraph"], capsys)
    assert_one_line_error(code, err, "in.jsonl:1", "into the 2 context texts (0 to 1)")
    code, _, err = run(["--input", str(source), "--split", "words"], capsys)
    assert_one_line_error(code, err, "argument --split: invalid choice: 'words'")


def spy_on_loading(monkeypatch) -> list[tuple[str, torch.device]]:
    """Record the dtype and device of every model the attribute command loads."""
    import lit_attn.attribution.cli as cli

    loaded: list[tuple[str, torch.device]] = []
    real = cli.load_model

    def load_model(name_or_path, device, dtype):
        model, tokenizer = real(name_or_path, device, dtype)
        loaded.append((str(next(model.parameters()).dtype), next(model.parameters()).device))
        return model, tokenizer

    monkeypatch.setattr(cli, "load_model", load_model)
    return loaded


def test_device_and_dtype(tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"contexts": ["a=1", "b=2"], "question": "a+b", "answer": "a=1"}])
    loaded = spy_on_loading(monkeypatch)
    output = tmp_path / "scores.jsonl"
    base = ["--model", str(tiny_model_dir), "--input", str(source), "--output", str(output), "--num-subsamples", "2"]
    for extra in ([], ["--device", "cpu", "--dtype", "bfloat16"], ["--dtype", "float16"]):
        code, _, err = run(base + extra, capsys)
        assert code == 0, err
        assert all(s == s for s in json.loads(output.read_text())["scores"])  # finite, not NaN
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    want = [("torch.bfloat16" if default_device == "cuda" else "torch.float32", default_device),
            ("torch.bfloat16", "cpu"), ("torch.float16", default_device)]
    assert [(dtype, device.type) for dtype, device in loaded] == want


def test_bad_device_and_dtype(tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", task_rows(1))
    code, _, err = run(["--input", str(source), "--device", "gpu0"], capsys)
    assert_one_line_error(code, err, "--device 'gpu0' is not a device; use cpu, cuda or cuda:<index>")
    code, _, err = run(["--input", str(source), "--device", "meta"], capsys)
    assert_one_line_error(code, err, "only cpu and cuda devices are supported")
    code, _, err = run(["--input", str(source), "--dtype", "float64"], capsys)
    assert_one_line_error(code, err, "argument --dtype: invalid choice: 'float64'")
    if not torch.cuda.is_available():
        code, _, err = run(["--input", str(source), "--device", "cuda:1"], capsys)
        assert_one_line_error(code, err, "asks for CUDA, which this machine does not have; use --device cpu")
    else:
        code, _, err = run(["--input", str(source), "--device", f"cuda:{torch.cuda.device_count()}"], capsys)
        assert_one_line_error(code, err, "CUDA device(s)", "pick one of them")


CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_chat_template_wraps_the_prompt(tmp_path: Path, capsys, monkeypatch) -> None:
    import lit_attn.attribution.cli as cli
    from tests.conftest import save_tiny

    model_dir = save_tiny(tmp_path / "chat")
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT}))
    templates = []
    real = cli.attribute

    def attribute(*args, **kwargs):
        templates.append(kwargs["template"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "attribute", attribute)
    source = write_jsonl(tmp_path / "in.jsonl", [{"contexts": ["a=1", "b=2"], "question": "b", "answer": "b=2"}])
    output = tmp_path / "scores.jsonl"
    code, _, err = run(["--model", str(model_dir), "--input", str(source), "--output", str(output), "--chat-template",
                        "--num-subsamples", "2"], capsys)
    assert code == 0, err
    [template] = templates
    assert template.before == "<|user|>\n" and template.after == "\n{question}?\n\n\n<|assistant|>\n"
    assert len(json.loads(output.read_text())["scores"]) == 2


def test_chat_template_without_one_is_a_one_line_error(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", task_rows(1))
    code, _, err = run(["--model", str(tiny_model_dir), "--input", str(source), "--chat-template"], capsys)
    assert_one_line_error(code, err, "--chat-template: the tokenizer", "has no chat template", "drop --chat-template")


def test_attntrace_options_have_the_callbacks_names() -> None:
    """`attribute --top-k-tokens` is the callback's and AttnTrace's `top_k_tokens` (issue 22: it was `--top-k`)."""
    import inspect

    from lit_attn.attribution import AttnTrace
    from lit_attn.attribution.cli import _TRACE_ONLY, build_parser, method_params

    parser = build_parser()
    dests = {action.dest for action in parser._actions}
    for name in _TRACE_ONLY:
        assert name in dests
        assert name in inspect.signature(AttributionCallback.__init__).parameters
        assert name in inspect.signature(AttnTrace).parameters
    args = parser.parse_args(["--input", "x.jsonl", "--top-k-tokens", "3"])
    assert method_params(args)["top_k_tokens"] == 3
    assert method_params(parser.parse_args(["--input", "x.jsonl", "--top-k-tokens", "0"]))["top_k_tokens"] is None
    # the former spelling is a prefix of the new flag: argparse still reads it, as the same option
    assert method_params(parser.parse_args(["--input", "x.jsonl", "--top-k", "3"])) == method_params(args)
