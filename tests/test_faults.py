"""Faults from a user's hands (issue 19), each run the way a user reaches it: the CLI, or the
callback in a Trainer. Nothing of the user's is lost, and nothing goes wrong silently."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from lightning import LightningModule, Trainer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_attn.callbacks import ExportPolicy
from lit_attn.cli import main
from lit_attn.errors import UserError
from tests.test_cli import scalars, small_fit_args

MARKER = "lit_attn_export.json"


# ------------------------------------------------------------------------------ ExportPolicy


class TinyModule(LightningModule):
    """The smallest host ExportPolicy exports: a Hugging Face model and its tokenizer."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        self.model = AutoModelForCausalLM.from_pretrained(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return self.model(input_ids=batch[0]).logits.float().pow(2).mean()

    def train_dataloader(self):
        ids = torch.randint(3, 20, (2, 6))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=1e-3)


def export_fit(model_dir: Path, root: Path, dirpath: Path | str) -> TinyModule:
    module = TinyModule(model_dir)
    trainer = Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, callbacks=[ExportPolicy(dirpath=str(dirpath))],
    )
    trainer.fit(module)
    return module


def user_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def fill_with_user_files(folder: Path) -> dict[str, str]:
    (folder / "runs" / "default").mkdir(parents=True)
    (folder / "notes.md").write_text("three weeks of notes\n")
    (folder / "train.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    (folder / "runs" / "default" / "last.ckpt").write_text("a checkpoint\n")
    return user_files(folder)


def test_export_refuses_a_folder_of_user_files_before_training(tiny_model_dir, tmp_path):
    target = tmp_path / "my_project"
    target.mkdir()
    before = fill_with_user_files(target)
    with pytest.raises(UserError) as err:
        export_fit(tiny_model_dir, tmp_path, target)
    message = str(err.value)
    assert "\n" not in message and str(target) in message
    assert "new" in message and "previous export" in message
    assert user_files(target) == before, "ExportPolicy touched the user's files"


def test_export_refuses_the_working_directory(tiny_model_dir, tmp_path, monkeypatch):
    before = fill_with_user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    module = TinyModule(tiny_model_dir)
    trainer = Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path / "out", callbacks=[ExportPolicy(dirpath=".")],
    )
    with pytest.raises(UserError, match="not a previous export"):
        trainer.fit(module)
    assert module.steps == 0, "the refusal came after training"
    assert user_files(tmp_path) == before


def test_export_refuses_a_file(tiny_model_dir, tmp_path):
    target = tmp_path / "policy"
    target.write_text("not a folder\n")
    with pytest.raises(UserError, match="policy"):
        export_fit(tiny_model_dir, tmp_path, target)
    assert target.read_text() == "not a folder\n"


def test_export_into_an_empty_folder_then_over_its_own_export(tiny_model_dir, tmp_path):
    target = tmp_path / "policy"
    target.mkdir()
    export_fit(tiny_model_dir, tmp_path, target)
    assert (target / "model.safetensors").is_file() and (target / MARKER).is_file()
    assert json.loads((target / MARKER).read_text())  # one line of JSON
    (target / "leftover.txt").write_text("from the previous export\n")
    export_fit(tiny_model_dir, tmp_path, target)  # a previous export of ours is replaced whole
    assert (target / "model.safetensors").is_file() and not (target / "leftover.txt").exists()
    AutoModelForCausalLM.from_pretrained(target)  # the marker does not disturb loading
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".export-")], "staging left behind"


def test_export_cleans_up_staging_folders_of_a_killed_run_and_nothing_else(tiny_model_dir, tmp_path):
    target = tmp_path / "policy"
    # what a run killed mid-export leaves: its staging folder, marked, half written
    stale = tmp_path / ".export-policy-k1ll3d00"
    stale.mkdir()
    (stale / MARKER).write_text('{"lit_attn_export": 1}\n')
    (stale / "model.safetensors").write_bytes(b"\0" * 10)
    empty_stale = tmp_path / ".export-policy-0empty00"
    empty_stale.mkdir()
    # folders that only look alike are the user's
    theirs = tmp_path / ".export-policy-mine"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine\n")
    other = tmp_path / ".export-notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine\n")
    export_fit(tiny_model_dir, tmp_path, target)
    assert (target / MARKER).is_file()
    assert not stale.exists() and not empty_stale.exists()
    assert (theirs / "keep.txt").read_text() == "mine\n" and (other / "keep.txt").read_text() == "mine\n"


def test_files_put_at_the_target_during_training_are_left_alone(tiny_model_dir, tmp_path):
    target = tmp_path / "policy"

    class Intruder(TinyModule):
        def training_step(self, batch, batch_idx):
            target.mkdir(exist_ok=True)
            (target / "notes.md").write_text("written during training\n")
            return super().training_step(batch, batch_idx)

    trainer = Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[ExportPolicy(dirpath=str(target))],
    )
    with pytest.warns(UserWarning, match="left alone"):
        trainer.fit(Intruder(tiny_model_dir))
    assert user_files(target) == {"notes.md": "written during training\n"}
    assert (tmp_path / "policy-1" / MARKER).is_file() and (tmp_path / "policy-1" / "model.safetensors").is_file()


def test_shipped_default_model_is_a_marked_export():
    """`python -m lit_attn sft` (lit_attn/configs/sft.yaml) exports into lit_attn/default_model: it must
    be accepted as a previous export."""
    from lit_attn.callbacks.export import export_problem
    from lit_attn.models import DEFAULT_MODEL_DIR

    assert (DEFAULT_MODEL_DIR / MARKER).is_file()
    assert export_problem(DEFAULT_MODEL_DIR) is None


# ------------------------------------------------------------------------------ rewards and updates


@pytest.fixture
def fault_rewards(tmp_path, monkeypatch) -> str:
    """A module of misbehaving reward functions; returns its name."""
    (tmp_path / "fault_rewards.py").write_text(textwrap.dedent(
        '''
        import math

        CALLS = []

        def digits(completions):
            return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]

        def inf_reward(prompts, completions, **kw):
            return [math.inf if i == 1 else 0.0 for i in range(len(completions))]

        def nan_reward(prompts, completions, **kw):
            return [math.nan for _ in completions]

        def none_reward(prompts, completions, **kw):
            return [None for _ in completions]

        def huge_reward(prompts, completions, **kw):
            # finite, but with unscaled advantages (rewards.scale false) the gradient overflows
            return [3e38 if i % 4 == 0 else 0.0 for i in range(len(completions))]

        def huge_once_reward(prompts, completions, **kw):
            CALLS.append(len(completions))
            return huge_reward(prompts, completions) if len(CALLS) == 1 else digits(completions)
        '''
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fault_rewards"


def run_fit(model_dir: Path, run_dir: Path, *extra: str, steps: int = 3) -> int:
    return main(small_fit_args(
        model_dir, run_dir, "--model.evaluation.validate_at_start=false", f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}", *extra,
    ))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def all_finite(run_dir: Path) -> None:
    """Every checkpoint and export under ``run_dir`` holds finite weights."""
    for ckpt in run_dir.rglob("*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert not bad, f"{ckpt.name} holds non-finite weights: {bad[:3]}"
    for weights in run_dir.rglob("model.safetensors"):
        bad = [k for k, v in load_file(weights).items() if not torch.isfinite(v).all()]
        assert not bad, f"{weights} holds non-finite weights: {bad[:3]}"


def test_infinite_reward_is_one_line_naming_the_function_and_the_row(tiny_model_dir, fault_rewards, tmp_path, capsys):
    rc = run_fit(tiny_model_dir, tmp_path / "runs", f"--model.rewards.functions=[{fault_rewards}.inf_reward]")
    line = one_error_line(capsys)
    assert rc == 2
    assert "inf_reward" in line and "completion 1" in line and "inf" in line and "None" in line
    all_finite(tmp_path / "runs")


def test_nan_reward_is_one_line_not_a_silent_skip(tiny_model_dir, fault_rewards, tmp_path, capsys):
    rc = run_fit(tiny_model_dir, tmp_path / "runs", f"--model.rewards.functions=[{fault_rewards}.nan_reward]")
    line = one_error_line(capsys)
    assert rc == 2
    assert "nan_reward" in line and "completion 0" in line and "nan" in line


def test_a_weighted_reward_past_float32_is_one_line():
    from lit_attn.rewards import RewardSet

    rewards = RewardSet([lambda prompts, completions, **kw: [1.0, 10.0]], weights=[1e38])
    with pytest.raises(UserError, match=r"completion 1 \(prompt 'b'\).*float32"):
        rewards(["a", "b"], ["x", "y"])


def test_steps_with_every_completion_skipped_are_logged_then_stop_the_run(tiny_model_dir, fault_rewards, tmp_path, capsys):
    from lit_attn.policy import MAX_SKIPPED_STEPS

    run_dir = tmp_path / "runs"
    rc = run_fit(tiny_model_dir, run_dir, f"--model.rewards.functions=[{fault_rewards}.none_reward]", steps=MAX_SKIPPED_STEPS + 2)
    line = one_error_line(capsys)
    assert rc == 2
    assert f"{MAX_SKIPPED_STEPS} steps in a row" in line and "None" in line
    skipped = scalars(run_dir)["completions/skipped_ratio"]
    assert skipped == [1.0] * (MAX_SKIPPED_STEPS - 1), skipped  # the stopping step raises before logging


def test_some_skipped_completions_are_fine_and_logged(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "half_rewards.py").write_text(
        "def half(prompts, completions, **kw):\n"
        "    return [None if i % 2 else sum(ch.isdigit() for ch in c) / max(len(c), 1) for i, c in enumerate(completions)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "runs"
    assert run_fit(tiny_model_dir, run_dir, "--model.rewards.functions=[half_rewards.half]", steps=4) == 0
    assert scalars(run_dir)["completions/skipped_ratio"] == [0.5] * 4


def test_a_non_finite_gradient_skips_the_step_and_is_logged(tiny_model_dir, fault_rewards, tmp_path):
    run_dir = tmp_path / "runs"
    rc = run_fit(
        tiny_model_dir, run_dir, f"--model.rewards.functions=[{fault_rewards}.huge_once_reward]",
        "--model.rewards.scale=false",
    )
    assert rc == 0
    all_finite(run_dir)
    assert scalars(run_dir)["update/nonfinite_skipped"] == [1.0, 0.0, 0.0]
    version = next((run_dir / "default").iterdir())
    assert (version / "checkpoints" / "last.ckpt").is_file() and (version / "policy" / MARKER).is_file()


def test_non_finite_gradients_in_a_row_stop_the_run(tiny_model_dir, fault_rewards, tmp_path, capsys):
    from lit_attn.ppo import MAX_NONFINITE_STEPS

    run_dir = tmp_path / "runs"
    rc = run_fit(
        tiny_model_dir, run_dir, f"--model.rewards.functions=[{fault_rewards}.huge_reward]",
        "--model.rewards.scale=false", steps=MAX_NONFINITE_STEPS + 2,
    )
    line = one_error_line(capsys)
    assert rc == 2
    assert "non-finite" in line and f"{MAX_NONFINITE_STEPS} optimiser steps in a row" in line
    all_finite(run_dir)
    assert not list(run_dir.rglob("policy")), "a failed run exported a policy"


# ------------------------------------------------------------------------------ refused in one line


def write_rows(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


FIVE_ROWS = [json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) for i in range(5)]


@pytest.mark.parametrize("val_size", [0, -3])
def test_val_size_below_one_with_a_training_file_is_one_line(val_size, tiny_model_dir, tmp_path, capsys):
    from tests.test_bad_input import run_bad

    train = write_rows(tmp_path / "train.jsonl", FIVE_ROWS)
    line = run_bad(["fit", f"--model.name_or_path={tiny_model_dir}", f"--data.train_path={train}", f"--data.val_size={val_size}"], tmp_path, capsys)
    assert "data.val_size must be >= 1" in line and f"got {val_size}" in line and "data.val_path" in line
    assert "add prompts" not in line


def refused_fit(model_dir: Path, tmp_path: Path, capsys, *extra: str) -> str:
    """A small fit that would otherwise run (tests.test_cli.small_fit_args): one line, status 2, nothing written."""
    run_dir = tmp_path / "runs"
    rc = main(small_fit_args(model_dir, run_dir, *extra))
    line = one_error_line(capsys)
    assert rc == 2
    assert not run_dir.exists(), f"output written despite the error: {list(run_dir.rglob('*'))}"
    return line


def test_val_size_zero_for_the_built_in_task_is_one_line(tiny_model_dir, tmp_path, capsys):
    line = refused_fit(tiny_model_dir, tmp_path, capsys, "--data.val_size=0")
    assert "data.val_size must be >= 1" in line and "limit_val_batches=0" in line


def test_val_size_is_free_with_a_validation_file_but_never_negative(tmp_path):
    from lit_attn.data import PromptDataModule

    train = write_rows(tmp_path / "train.jsonl", FIVE_ROWS)
    val = write_rows(tmp_path / "val.jsonl", FIVE_ROWS[:2])
    data = PromptDataModule(train_path=str(train), val_path=str(val), val_size=0)
    assert len(data.records("fit")["train"]) == 5 and len(data.val_records()) == 2
    with pytest.raises(UserError, match=r"data\.val_size must be >= 0, got -3"):
        PromptDataModule(train_path=str(train), val_path=str(val), val_size=-3)


def test_missing_prompt_hint_names_no_option_that_does_not_exist(tiny_model_dir, tmp_path, capsys):
    from tests.test_bad_input import run_bad

    train = write_rows(tmp_path / "train.jsonl", [json.dumps({"question": "1+1=", "answer": "2"})] * 5)
    line = run_bad(["fit", f"--model.name_or_path={tiny_model_dir}", f"--data.train_path={train}", "--data.val_size=1"], tmp_path, capsys)
    assert "train.jsonl:1: missing 'prompt'" in line and "rename the column" in line
    assert "set prompt_key" not in line and "--data.prompt_key" not in line


@pytest.mark.parametrize(
    ("answer", "named"), [("NaN", "NaN"), ('""', "empty string"), ("true", "boolean"), ("  ", None), ("Infinity", "inf")]
)
def test_an_answer_that_would_be_coerced_is_one_line_naming_the_row(answer, named, tmp_path):
    """Through the data module as a user builds it (``data.train_path``); today these became "nan", "" or "True"."""
    from lit_attn.data import PromptDataModule

    if answer == "  ":
        answer = '"  "'
        named = "empty string"
    rows = [*FIVE_ROWS[:2], '{"prompt": "9+1=", "answer": ' + answer + "}", *FIVE_ROWS[2:]]
    train = write_rows(tmp_path / "train.jsonl", rows)
    data = PromptDataModule(train_path=str(train), val_size=1)
    with pytest.raises(UserError) as err:
        data.setup("fit")
    line = str(err.value)
    assert "\n" not in line and "train.jsonl:3: 'answer'" in line and named.lower() in line.lower()
    assert "drop the row" in line or "string or number" in line


def test_answers_that_are_numbers_or_text_still_load(tmp_path):
    from lit_attn.records import load_records

    train = write_rows(tmp_path / "t.jsonl", ['{"prompt": "a", "answer": 2}', '{"prompt": "b", "answer": 1.5}', '{"prompt": "c", "answer": "0"}'])
    assert [r["answer"] for r in load_records(train)] == ["2", "1.5", "0"]


@pytest.mark.parametrize(
    ("arg", "named"),
    [("--model.update.clip_low=-0.1", "model.update.clip_low must be >= 0"),
     ("--model.update.clip_high=-0.2", "model.update.clip_high must be >= 0"),
     ("--model.update.clip_low=1.5", "model.update.clip_low must be < 1"),
     ("--model.update.dual_clip=0.5", "model.update.dual_clip must be > 1"),
     ("--model.update.dual_clip=1", "model.update.dual_clip must be > 1")],
)
def test_clip_settings_out_of_range_are_one_line(arg, named, tiny_model_dir, tmp_path, capsys):
    line = refused_fit(tiny_model_dir, tmp_path, capsys, arg)
    assert named in line and f"got {arg.split('=')[1]}" in line


def test_clip_settings_in_range_and_no_dual_clip_are_accepted():
    from lit_attn.settings import UpdateSettings

    UpdateSettings(clip_low=0.0, clip_high=0.0, dual_clip=None)
    UpdateSettings(clip_low=0.99, clip_high=5.0, dual_clip=1.01)


@pytest.mark.parametrize("text", ["  ", "\n\t"])
def test_attribute_refuses_a_whitespace_only_context_text(text, tmp_path, capsys):
    from lit_attn.callbacks import AttributionCallback

    source = write_rows(tmp_path / "in.jsonl", [json.dumps({"contexts": ["a=1", "b=2"], "question": "a"}),
                                                json.dumps({"contexts": ["a=1", text], "question": "a"})])
    output = tmp_path / "scores.jsonl"
    rc = main(["attribute", "--input", str(source), "--output", str(output)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("error: "), err
    assert "in.jsonl:2" in err and "context text 1 is only whitespace" in err and "remove it" in err
    assert not output.exists()
    with pytest.raises(UserError, match=r"examples\[0\]: context text 1 is only whitespace"):
        AttributionCallback([{"contexts": ["a=1", text], "question": "a"}])
