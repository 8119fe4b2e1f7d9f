"""Bad input: one line `error: <problem>; <fix>`, exit status 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import T5Config, T5ForConditionalGeneration

from lit_attn.cli import main
from tests.conftest import save_tiny


def run_bad(args: list[str], tmp_path: Path, capsys) -> str:
    run_dir = tmp_path / "runs"
    rc = main([*args, f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert not run_dir.exists(), f"output written despite the error: {list(run_dir.rglob('*'))}"
    return lines[0]


def test_unknown_config_key_on_command_line(tmp_path, capsys):
    line = run_bad(["fit", "--model.not_a_key=1"], tmp_path, capsys)
    assert "not_a_key" in line and "--help" in line


def test_unknown_config_key_in_yaml(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  group_sise: 4\n")
    line = run_bad(["fit", f"--config={cfg}"], tmp_path, capsys)
    assert "group_sise" in line


def test_batch_arithmetic_names_the_sizes_that_work(tmp_path, capsys):
    line = run_bad(["fit", "--model.update.minibatch_size=48"], tmp_path, capsys)
    assert "8 × 8 = 64" in line and "use 32 or 64" in line


def test_missing_model_path(tmp_path, capsys):
    line = run_bad(["fit", f"--model.name_or_path={tmp_path / 'nope'}"], tmp_path, capsys)
    assert "does not exist" in line and "never downloads" in line


def test_model_that_is_not_a_causal_lm(tmp_path, capsys):
    t5 = tmp_path / "t5"
    config = T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    T5ForConditionalGeneration(config).save_pretrained(t5)
    line = run_bad(["fit", f"--model.name_or_path={t5}"], tmp_path, capsys)
    assert "not a causal language model" in line and "t5" in line


def test_missing_data_file(tmp_path, capsys, tiny_model_dir):
    missing = tmp_path / "train.jsonl"
    line = run_bad(["fit", f"--model.name_or_path={tiny_model_dir}", f"--data.train_path={missing}"], tmp_path, capsys)
    assert str(missing) in line


def test_malformed_data_line_names_its_number(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n{"prompt": oops}\n')
    line = run_bad(["fit", f"--model.name_or_path={tiny_model_dir}", f"--data.train_path={data}"], tmp_path, capsys)
    assert ":3" in line or "line 3" in line


def test_empty_dataset(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("\n\n")
    line = run_bad(["fit", f"--model.name_or_path={tiny_model_dir}", f"--data.train_path={data}"], tmp_path, capsys)
    assert "empty" in line.lower() or "no records" in line.lower()


def test_prompt_longer_than_the_model_context(tmp_path, capsys):
    short = save_tiny(tmp_path / "short", max_positions=80)
    line = run_bad(["fit", f"--model.name_or_path={short}", "--model.sampling.max_new_tokens=64"], tmp_path, capsys)
    assert "longer" in line or "exceeds" in line or "too long" in line


@pytest.mark.parametrize(
    ("arg", "named"),
    [("--model.sampling.temperature=0", "temperature"), ("--model.sampling.group_size=1", "group_size"), ("--data.num_ops=0", "num_ops"),
     ("--model.optimizer.lr=-1", "model.optimizer.lr"), ("--model.update.grad_clip=-1", "grad_clip"), ("--model.update.micro_batch_size=0", "micro_batch_size")],
)
def test_out_of_range_values(arg, named, tmp_path, capsys, tiny_model_dir):
    line = run_bad(["fit", f"--model.name_or_path={tiny_model_dir}", arg], tmp_path, capsys)
    assert named in line


def test_missing_checkpoint_is_one_line(tmp_path, capsys, tiny_model_dir):
    line = run_bad(["fit", f"--model.name_or_path={tiny_model_dir}", "--ckpt_path=nope.ckpt"], tmp_path, capsys)
    assert "checkpoint not found: nope.ckpt" in line and "--ckpt_path=last" in line


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m lit_attn")
    for command in ("fit", "validate", "test", "predict", "sft", "attribute"):
        assert f"\n  {command} " in out
    assert main([]) == 2  # no command: the same list, and a failing status


def test_grpo_recipe_on_the_tiny_default_says_why_it_cannot_run(tmp_path, capsys):
    root = Path(__file__).resolve().parents[1]
    line = run_bad(["fit", "--config", str(root / "lit_attn" / "configs" / "grpo.yaml"), "--trainer.accelerator=cpu"], tmp_path, capsys)
    assert "prompt budget" in line
