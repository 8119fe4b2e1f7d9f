"""Checkpoints, preemption and resume (issue 19, items 3-6), run the way a user reaches them:
``python -m lit_attn fit`` in a subprocess for SIGTERM, ``lit_attn.cli.main`` otherwise.

- SIGTERM (what a scheduler sends) saves ``last.ckpt`` and exits with status 143, for ``fit`` and ``sft``;
- ``--ckpt_path last`` resumes from the newest ``last.ckpt`` of the same logger name, across version folders;
- resuming warns about every setting that differs from the checkpoint's, and refuses another model;
- a checkpoint appears under its final name only when complete; a broken one is a one-line error.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback

from lit_attn.cli import main
from tests.conftest import save_tiny
from tests.test_faults import one_error_line
from tests.test_cli import small_fit_args

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"


class Scheduler(Callback):
    """What a cluster scheduler does to a run: SIGTERM to this process once training step
    ``sigterm_at`` has ended. Records the step every fit starts at (a resumed fit starts > 0)."""

    started_at: list[int] = []

    def __init__(self, sigterm_at: int | None = None) -> None:
        self.sigterm_at = sigterm_at
        self.sent = False

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        Scheduler.started_at.append(trainer.global_step)

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if self.sigterm_at is not None and not self.sent and trainer.global_step >= self.sigterm_at:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def callbacks(*extra: dict) -> str:
    """``--trainer.callbacks`` with only what a test needs (no progress bar, export, attribution)."""
    return "--trainer.callbacks=" + json.dumps(list(extra))


def last_checkpoint(every_n_train_steps: int = 100, **init_args: Any) -> dict:
    return {"class_path": CHECKPOINT, "init_args": {"save_last": True, "every_n_train_steps": every_n_train_steps, **init_args}}


def scheduler(sigterm_at: int | None = None) -> dict:
    return {"class_path": "tests.test_resume.Scheduler", "init_args": {"sigterm_at": sigterm_at}}


def fit_args(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return small_fit_args(
        model_dir, run_dir, "--model.evaluation.validate_at_start=false", "--trainer.limit_val_batches=0", *extra
    )


def global_step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


@pytest.fixture(autouse=True)
def _scheduler_log():
    Scheduler.started_at.clear()


@pytest.fixture
def sigterm_guard():
    """An in-process SIGTERM must never end the test session: a no-op handler underneath
    Lightning's (which keeps, and calls, the handler it finds)."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> Path:
    """``last.ckpt`` of a one-step fit with ``--model.optimizer.lr=0.01`` (small_fit_args)."""
    run_dir = tmp_path_factory.mktemp("trained")
    assert main(fit_args(tiny_model_dir, run_dir, "--trainer.max_steps=1", callbacks(last_checkpoint()))) == 0
    (ckpt,) = run_dir.rglob("last.ckpt")
    return ckpt


# ------------------------------------------------------------------------------ preemption


def test_sigterm_saves_last_exits_143_and_ckpt_path_last_resumes(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "runs"
    args = fit_args(tiny_model_dir, run_dir, "--trainer.max_steps=4", callbacks(last_checkpoint(), scheduler(sigterm_at=1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "lit_attn", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 143, done.stderr[-3000:]
    ckpt = run_dir / "default" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file(), sorted(map(str, run_dir.rglob("*")))
    assert global_step(ckpt) == 1  # the step that was running when SIGTERM came, not one more

    # The resumed run gets a new version folder; `last` still finds version_0's checkpoint.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(fit_args(tiny_model_dir, run_dir, "--trainer.max_steps=2", "--ckpt_path=last", callbacks(last_checkpoint(), scheduler())))
    assert rc == 0
    assert Scheduler.started_at == [1], "the resumed fit did not start from the checkpoint's step"
    assert global_step(run_dir / "default" / "version_1" / "checkpoints" / "last.ckpt") == 2
    assert not [str(w.message) for w in caught if "differ" in str(w.message)], "same settings, yet a warning"


def test_sigterm_during_sft_saves_last_exits_143_and_resumes(tmp_path, sigterm_guard):
    sft = [
        "sft", "--config=lit_attn/configs/sft.yaml", "--model.hidden_size=32", "--model.num_layers=2", "--model.intermediate_size=64",
        "--model.batch_size=4", "--model.warmup_steps=1",
        "--data.val_size=2", "--data.val_sets=[1op_8d]", "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    # lit_attn/configs/sft.yaml has no ModelCheckpoint of its own: Lightning's default one (no save_last) holds last.ckpt
    with pytest.raises(SystemExit) as stopped:
        main([*sft, "--trainer.max_steps=5", callbacks(scheduler(sigterm_at=1))])
    assert stopped.value.code == 143
    (ckpt,) = tmp_path.rglob("last.ckpt")
    assert global_step(ckpt) == 1
    assert main([*sft, "--trainer.max_steps=2", "--ckpt_path=last", callbacks(scheduler())]) == 0
    assert Scheduler.started_at == [0, 1]


# ------------------------------------------------------------------------------ --ckpt_path last


def test_ckpt_path_last_with_no_last_checkpoint_is_one_line(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "runs"
    killed_early = run_dir / "default" / "version_0"  # a run that ended before its first checkpoint
    killed_early.mkdir(parents=True)
    rc = main(fit_args(tiny_model_dir, run_dir, "--ckpt_path=last", callbacks(last_checkpoint())))
    line = one_error_line(capsys)
    assert rc == 2
    assert "last.ckpt" in line and str(run_dir / "default" / "*" / "checkpoints") in line
    assert sorted(run_dir.rglob("*")) == [run_dir / "default", killed_early], "output written despite the error"


# ------------------------------------------------------------------------------ resume rules


def test_resume_warns_about_every_changed_setting_and_which_value_is_used(tiny_model_dir, trained, tmp_path):
    run_dir = tmp_path / "runs"
    args = fit_args(
        tiny_model_dir, run_dir, "--trainer.max_steps=2", f"--ckpt_path={trained}", callbacks(last_checkpoint()),
        "--model.optimizer.lr=0.5", "--model.sampling.temperature=0.7",
    )
    with pytest.warns(UserWarning, match="differ") as caught:
        assert main(args) == 0
    (message,) = [str(w.message) for w in caught if "differ" in str(w.message)]
    assert "\n" not in message
    assert "model.optimizer.lr: checkpoint 0.01, this run 0.5; the checkpoint's 0.01 is used" in message
    assert "model.sampling.temperature: checkpoint 1.0, this run 0.7; this run's 0.7 is used" in message
    assert message.count("checkpoint ") == 2, message  # nothing else is listed
    # what the warning says is what happened: AdamW's restored state kept the checkpoint's rate
    (resumed,) = run_dir.rglob("last.ckpt")
    groups = torch.load(resumed, map_location="cpu", weights_only=False)["optimizer_states"][0]["param_groups"]
    assert [g["lr"] for g in groups] == [0.01] * len(groups)


def test_a_checkpoint_with_the_former_data_prompts_per_step_resumes_without_a_warning_about_it(
    tiny_model_dir, trained, tmp_path
):
    """Checkpoints written before issue 22 save ``data.prompts_per_step`` (now only
    ``model.sampling.prompts_per_step``): no difference to report for it."""
    older = torch.load(trained, map_location="cpu", weights_only=False)
    older["datamodule_hyper_parameters"]["prompts_per_step"] = 2
    ckpt = tmp_path / "older.ckpt"
    torch.save(older, ckpt)
    args = fit_args(
        tiny_model_dir, tmp_path / "runs", "--trainer.max_steps=2", f"--ckpt_path={ckpt}", callbacks(last_checkpoint()),
        "--model.sampling.temperature=0.7",
    )
    with pytest.warns(UserWarning, match="differ") as caught:
        assert main(args) == 0
    (message,) = [str(w.message) for w in caught if "differ" in str(w.message)]
    assert "1 setting(s)" in message and "prompts_per_step" not in message, message


def test_resume_refuses_another_model(tiny_model_dir, trained, tmp_path, capsys):
    other = save_tiny(tmp_path / "other_model")
    run_dir = tmp_path / "runs"
    rc = main(fit_args(other, run_dir, f"--ckpt_path={trained}", callbacks(last_checkpoint())))
    line = one_error_line(capsys)
    assert rc == 2
    assert str(other) in line and str(tiny_model_dir) in line
    assert not run_dir.exists(), f"output written despite the error: {list(run_dir.rglob('*'))}"


# ------------------------------------------------------------------------------ atomic checkpoints


class FullDisk:
    """The checkpoint folder on a disk of its own with ``free`` bytes left: a rename into it from
    another folder crosses devices (EXDEV, so it becomes a copy), and writes past the free
    space fail with ENOSPC after writing what fits, as a real full disk does."""

    def __init__(self, folder: Path, free: int, monkeypatch) -> None:
        self.folder, self.free = folder.resolve(), free
        real_open, real_rename, real_replace = builtins.open, os.rename, os.replace
        disk = self

        class File:
            def __init__(self, f: Any) -> None:
                self.f = f

            def write(self, data: bytes) -> int:
                room = min(len(data), disk.free)
                self.f.write(bytes(data[:room]))
                disk.free -= room
                if room < len(data):
                    self.f.flush()
                    raise OSError(errno.ENOSPC, "No space left on device")
                return room

            def __enter__(self) -> File:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.f.close()

            def __getattr__(self, name: str) -> Any:
                return getattr(self.f, name)

        def on_disk(path: Any) -> bool:
            return isinstance(path, (str, os.PathLike)) and disk.folder in Path(os.path.abspath(path)).parents

        def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = real_open(file, mode, *args, **kwargs)
            return File(f) if on_disk(file) and any(m in mode for m in "wax+") else f

        def crossing(real: Any) -> Any:
            def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
                if on_disk(dst) and not on_disk(src):
                    raise OSError(errno.EXDEV, "Invalid cross-device link")
                real(src, dst, *args, **kwargs)
            return rename

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(os, "rename", crossing(real_rename))
        monkeypatch.setattr(os, "replace", crossing(real_replace))
        monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copies go through write()


def test_full_disk_leaves_no_partial_checkpoint(tiny_model_dir, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    FullDisk(folder, free=50_000, monkeypatch=monkeypatch)  # a checkpoint of the tiny model is ~300 kB
    rc = main(fit_args(tiny_model_dir, tmp_path / "runs", "--trainer.max_steps=1", callbacks(last_checkpoint(1, dirpath=str(folder)))))
    line = one_error_line(capsys)
    assert rc == 2
    assert "No space left on device" in line and str(folder / "epoch=0-step=1.ckpt") in line
    assert sorted(p.name for p in folder.iterdir()) == [], "a partial checkpoint (or its temporary file) was left"


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "weights_only"])
def test_broken_checkpoint_is_one_line_before_anything_is_written(kind, tiny_model_dir, trained, tmp_path, capsys):
    broken = tmp_path / f"{kind}.ckpt"
    data = trained.read_bytes()
    if kind == "empty":
        broken.write_bytes(b"")
    elif kind == "garbage":
        broken.write_bytes(b"not a checkpoint\n" * 40)
    elif kind == "truncated":
        broken.write_bytes(data[: len(data) // 2])
    else:  # ModelCheckpoint(save_weights_only=True): weights, no optimizer or loop state to resume
        state = torch.load(trained, map_location="cpu", weights_only=False)
        torch.save({k: v for k, v in state.items() if k not in ("optimizer_states", "lr_schedulers", "loops")}, broken)
    run_dir = tmp_path / "runs"
    rc = main(fit_args(tiny_model_dir, run_dir, f"--ckpt_path={broken}", callbacks(last_checkpoint())))
    line = one_error_line(capsys)
    assert rc == 2
    assert str(broken) in line
    assert not run_dir.exists(), f"output written despite the error: {list(run_dir.rglob('*'))}"
