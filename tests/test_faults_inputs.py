"""Issue 19, the rest of its inputs: tracebacks that are now one line, things that went silently
wrong, output file modes, and what a user saw in the progress bar and the warnings. Each case
runs the way a user reaches it (``lit_attn.cli.main``) and fails on the code before the fix;
checks fail before the model is loaded or before training wherever they can."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lit_attn.cli import main
from tests.test_bad_input import run_bad
from tests.test_cli import small_fit_args
from tests.test_faults import one_error_line, refused_fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def fit_args(model_dir: Path, run_dir: Path, *extra: str, steps: int = 1) -> list[str]:
    """tests.test_cli.small_fit_args, one step, no validation at the start."""
    return small_fit_args(
        model_dir, run_dir, "--model.evaluation.validate_at_start=false", f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}", *extra,
    )


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def copy_model(source: Path, target: Path, *, skip: tuple[str, ...] = ()) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name not in skip:
            shutil.copy(path, target / path.name)
    return target


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` made read-only for this process: mode 0555, or for root (whom modes do not
    stop) the immutable attribute; skips where neither is possible."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    try:
        subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("running as root, and chattr +i (a folder root cannot write) is not available here")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


# ------------------------------------------------------------------------------ tracebacks → one line


@pytest.fixture
def raising_rewards(tmp_path, monkeypatch) -> str:
    (tmp_path / "raising_rewards.py").write_text(textwrap.dedent(
        '''
        def lookup_reward(prompts, completions, answer, **kw):
            scores = {}
            return [scores["exact"] for _ in completions]
        '''
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "raising_rewards.lookup_reward"


@pytest.mark.parametrize("at_start", [False, True], ids=["training-step", "validation-at-start"])
def test_a_reward_function_that_raises_is_one_line_naming_it_and_the_first_row(
    at_start, raising_rewards, tiny_model_dir, tmp_path, capsys
):
    args = fit_args(tiny_model_dir, tmp_path / "runs", f"--model.rewards.functions=[{raising_rewards}]")
    rc = main([*args, f"--model.evaluation.validate_at_start={str(at_start).lower()}"])
    line = one_error_line(capsys)
    assert rc == 2
    assert "reward function 'lookup_reward' raised KeyError: 'exact'" in line
    assert "the first for prompt '" in line and "return None" in line


@pytest.mark.parametrize("damage", ["truncated-weights", "invalid-config-json"])
def test_a_damaged_model_folder_is_one_line(damage, tiny_model_dir, tmp_path, capsys):
    model = copy_model(tiny_model_dir, tmp_path / "model")
    if damage == "truncated-weights":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
        expected = ("cannot load the model weights", "damaged or truncated")
    else:
        (model / "config.json").write_text('{"model_type": "qwen2", "hidden_size": 32,\n')
        expected = ("cannot read the model config", "config.json", "save_pretrained")
    line = run_bad(["fit", f"--model.name_or_path={model}"], tmp_path, capsys)
    assert str(model) in line and all(part in line for part in expected), line


def test_a_read_only_run_folder_is_refused_before_the_model_is_loaded(tmp_path, capsys):
    """The logger's save_dir (where config.yaml, logs, checkpoints and the export go)."""
    missing_model = tmp_path / "no-model-here"  # checked after the folders: never reached
    with read_only(tmp_path / "shared") as folder:
        rc = main([
            "fit", f"--model.name_or_path={missing_model}", f"--trainer.logger.init_args.save_dir={folder / 'runs'}",
        ])
        line = one_error_line(capsys)
        assert rc == 2
        assert "cannot write to trainer.logger.init_args.save_dir" in line and "read-only" in line
        assert str(folder) in line and not any(folder.iterdir())


def test_a_read_only_default_root_dir_without_a_logger_is_refused(tmp_path, capsys):
    with read_only(tmp_path / "shared") as folder:
        rc = main(["fit", f"--model.name_or_path={tmp_path / 'no-model-here'}", "--trainer.logger=false",
                   f"--trainer.default_root_dir={folder}"])
        line = one_error_line(capsys)
        assert rc == 2 and "cannot write to trainer.default_root_dir" in line and "read-only" in line


@pytest.mark.parametrize(
    ("subcommand", "callback", "init_arg", "named"),
    [("fit", "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath", "ModelCheckpoint's dirpath"),
     ("fit", "lit_attn.callbacks.ExportPolicy", "dirpath", "the folder of ExportPolicy's dirpath"),
     ("predict", "lit_attn.callbacks.PredictionWriter", "path", "PredictionWriter's path")],
)
def test_a_callback_output_in_a_read_only_folder_is_refused(subcommand, callback, init_arg, named, tmp_path, capsys):
    with read_only(tmp_path / "shared") as folder:
        config = tmp_path / "outputs.yaml"
        target = folder / ("policy" if init_arg == "dirpath" else "predictions.jsonl")
        config.write_text(f"trainer:\n  callbacks:\n    - class_path: {callback}\n      init_args:\n        {init_arg}: {target}\n")
        line = run_bad([subcommand, f"--config={config}", f"--model.name_or_path={tmp_path / 'no-model-here'}"], tmp_path, capsys)
        assert named in line and "read-only" in line, line


@pytest.mark.parametrize("option", ["--output", "--html"])
def test_attribute_output_in_a_read_only_folder_is_refused_before_the_work(option, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"contexts": ["a=1", "b=2"], "question": "a+b?"}])
    with read_only(tmp_path / "shared") as folder:
        rc = main(["attribute", "--model", str(tmp_path / "no-model-here"), "--input", str(source),
                   option, str(folder / "scores.out")])
        line = one_error_line(capsys)
        assert rc == 2 and f"cannot write {option}" in line and "read-only" in line
        assert not any(folder.iterdir())


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed", "deepspeed_stage_3", "lightning.pytorch.strategies.FSDPStrategy"])
def test_sharded_strategies_are_refused_before_lightning_builds_the_trainer(strategy, tiny_model_dir, tmp_path, capsys):
    line = run_bad(["fit", f"--model.name_or_path={tiny_model_dir}", f"--trainer.strategy={strategy}"], tmp_path, capsys)
    assert f"trainer.strategy={strategy}" in line and "does not run under" in line and "--trainer.strategy=ddp" in line


@pytest.mark.parametrize(
    ("arg", "expected"),
    [("--trainer.max_steps=-7", "trainer.max_steps must be a positive number of steps, or -1 for no limit, got -7"),
     ("--trainer.max_steps=0", "trainer.max_steps=0 trains nothing"),
     ("--trainer.max_epochs=-3", "trainer.max_epochs must be a positive number of epochs, or -1 for no limit, got -3"),
     ("--trainer.max_epochs=0", "trainer.max_epochs=0 trains nothing"),
     ("--trainer.val_check_interval=0", "trainer.val_check_interval must be"),
     ("--trainer.limit_val_batches=-1", "trainer.limit_val_batches must be"),
     ("--trainer.accumulate_grad_batches=2", "model.update.micro_batch_size"),
     ("--trainer.gradient_clip_val=1.0", "model.update.grad_clip")],
)
def test_nonsensical_trainer_settings_are_one_line(arg, expected, tmp_path, capsys):
    # a model path that does not exist: the trainer settings are refused before the model is loaded
    line = run_bad(["fit", f"--model.name_or_path={tmp_path / 'no-model-here'}", arg], tmp_path, capsys)
    assert expected in line, line


def test_unlimited_steps_are_still_accepted(tmp_path, capsys):
    """-1 is Lightning's "no limit": it passes the check (the missing model is what stops this run)."""
    line = run_bad(["fit", f"--model.name_or_path={tmp_path / 'no-model-here'}", "--trainer.max_steps=-1"], tmp_path, capsys)
    assert "does not exist" in line


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [(["--model.hidden_size=30", "--model.num_heads=4", "--model.num_kv_heads=4"],
      "model.hidden_size=30 is not divisible by model.num_heads=4"),
     (["--model.hidden_size=32", "--model.num_heads=4", "--model.num_kv_heads=3"],
      "model.num_heads=4 is not divisible by model.num_kv_heads=3")],
)
def test_sft_with_heads_that_do_not_divide_the_width_is_one_line(sizes, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # sft.yaml exports to the relative lit_attn/default_model: never the shipped one
    line = run_bad([
        "sft", f"--config={ROOT / 'lit_attn' / 'configs' / 'sft.yaml'}", *sizes, "--model.num_layers=1", "--model.lookup_heads=1",
        "--model.intermediate_size=32", "--model.batch_size=2", "--data.val_size=1", "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
    ], tmp_path, capsys)
    assert expected in line, line
    assert not (tmp_path / "lit_attn").exists()


# ------------------------------------------------------------------------------ silent or misleading


def test_an_encoder_model_is_refused(tmp_path, capsys):
    from transformers import BertConfig, BertLMHeadModel

    from lit_attn.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=256, pad_token_id=tok.pad_token_id, is_decoder=False,
    )
    bert = tmp_path / "bert"
    BertLMHeadModel(config).save_pretrained(bert)  # loads as a causal LM, attends both ways
    tok.save_pretrained(bert)
    line = refused_fit(bert, tmp_path, capsys)  # a small fit that used to train and export it
    assert "not a causal language model" in line and "bidirectional" in line and "is_decoder: false" in line


def test_a_model_folder_without_tokenizer_files_names_them(tiny_model_dir, tmp_path, capsys):
    model = copy_model(tiny_model_dir, tmp_path / "model", skip=("tokenizer.json", "tokenizer_config.json"))
    line = refused_fit(model, tmp_path, capsys)
    assert "has no tokenizer files" in line and "tokenizer.json" in line and "save_pretrained" in line
    assert "is empty" not in line


def test_training_data_the_tokenizer_cannot_spell_names_the_characters(tiny_model_dir, tmp_path, capsys):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(6)]
    rows[2]["prompt"] = "café: 2 → 3 ="
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    line = run_bad(["fit", f"--model.name_or_path={tiny_model_dir}", f"--data.train_path={train}", "--data.val_size=1"],
                   tmp_path, capsys)
    assert "cannot spell 'é' (U+00E9), '→' (U+2192)" in line and "<unk>" in line
    assert "record 2" in line and "printable ASCII" in line


def test_attribute_input_the_tokenizer_cannot_spell_names_the_characters(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"contexts": ["a=1", "b=2"], "question": "a+b?"},
        {"contexts": ["a=1", "b = ½"], "question": "a+b?"},
    ])
    output = tmp_path / "scores.jsonl"
    rc = main(["attribute", "--input", str(source), "--output", str(output)])
    line = one_error_line(capsys)
    assert rc == 2 and "in.jsonl:2" in line and "'½' (U+00BD)" in line and "'contexts'" in line
    assert not output.exists()


# ------------------------------------------------------------------------------ output file modes


@pytest.fixture
def umask_002() -> Iterator[int]:
    previous = os.umask(0o002)
    try:
        yield 0o002
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_predictions_get_the_mode_the_umask_gives(tiny_model_dir, tmp_path, umask_002):
    run_dir = tmp_path / "runs"
    rc = main([
        "predict", f"--model.name_or_path={tiny_model_dir}", "--model.sampling.max_new_tokens=2",
        "--model.evaluation.batch_size=2", "--data.val_size=2", "--data.train_size=4", "--data.num_texts=0",
        f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
    ])
    assert rc == 0
    (written,) = run_dir.rglob("predictions.jsonl")
    assert mode(written) == 0o664, oct(mode(written))
    assert mode(written.parent) == 0o775


def test_attribute_output_gets_the_umask_mode_and_a_replaced_file_keeps_its_own(tmp_path, umask_002):
    source = write_jsonl(tmp_path / "in.jsonl", [{"contexts": ["a=1", "b=2"], "question": "a+b?", "answer": "3"}])
    fresh, kept = tmp_path / "new" / "scores.jsonl", tmp_path / "kept.jsonl"
    kept.write_text("old\n")
    kept.chmod(0o640)
    for output in (fresh, kept):
        assert main(["attribute", "--input", str(source), "--output", str(output), "--method", "attention"]) == 0
    assert mode(fresh) == 0o664 and mode(fresh.parent) == 0o775
    assert mode(kept) == 0o640 and kept.read_text() != "old\n"


# ------------------------------------------------------------------------------ what a fit shows


@pytest.fixture(scope="module")
def fit_with_kl(tiny_model_dir, tmp_path_factory) -> tuple[str, list[str]]:
    """One fit with a KL penalty (a frozen reference model) and the shipped config's progress bar:
    its printed output and its warnings."""
    run_dir = tmp_path_factory.mktemp("kl") / "runs"
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        torch.set_num_threads(1)
        rc = main(fit_args(tiny_model_dir, run_dir, "--model.update.kl_coef=0.1", steps=2))
    assert rc == 0
    return out.getvalue(), [str(w.message) for w in caught]


def test_the_progress_bar_never_shows_a_negative_epoch_count(fit_with_kl):
    printed, _ = fit_with_kl
    assert "Epoch 0" in printed, printed[-500:]
    assert "Epoch 0/-" not in printed


def test_a_fit_with_kl_does_not_warn_about_modules_in_eval_mode(fit_with_kl):
    _, messages = fit_with_kl
    assert not [m for m in messages if "in eval mode" in m], messages
