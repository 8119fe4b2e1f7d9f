"""Several processes and kill-and-resume, run the way users run them: ``python -m lit_attn fit
--config ...`` in a subprocess, ``--trainer.devices=2 --trainer.strategy=ddp`` on CPU (gloo).

Each shipped config (GRPO, AttnRL, TreeRL) runs on the tiny test model with its callbacks,
AttributionCallback included, plus :class:`tests.ddp_probe.StepProbe`, which records every
rank's prompts, logged metrics and weight gap to rank 0 after every step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_attn.config_files import load_config, merge

from tests.ddp_probe import KILLED

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds per fit: a hang fails the test instead of the suite


def write_config(name: str, model_dir: Path, run_dir: Path, *, devices: int, stop_after: int = 4, kill_at: int | None = None) -> Path:
    """The shipped ``lit_attn/configs/<name>`` shrunk to the tiny test model and a few steps."""
    config = load_config(ROOT / "lit_attn" / "configs" / name)
    trainer = config["trainer"]
    trainer.update(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1000,
        val_check_interval=None, check_val_every_n_epoch=None, limit_val_batches=0, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(run_dir),
    )
    trainer["logger"]["init_args"]["save_dir"] = str(run_dir)
    callbacks = []
    for callback in trainer["callbacks"]:
        kind = callback["class_path"].rsplit(".", 1)[-1]
        args = callback.setdefault("init_args", {})
        if kind == "RichProgressBar":
            continue
        if kind == "ModelCheckpoint":
            args.update(dirpath=str(run_dir / "ckpt"), every_n_train_steps=1, save_last=True, save_top_k=-1)
        if kind == "AttributionCallback":
            args.update(every_n_train_steps=2, num_examples=2, num_subsamples=3, max_new_tokens=6, k=2, at_train_start=False)
        callbacks.append(callback)
    callbacks.append({
        "class_path": "tests.ddp_probe.StepProbe",
        "init_args": {"out": str(run_dir / "probe"), "stop_after": stop_after, "kill_at": kill_at},
    })
    trainer["callbacks"] = callbacks
    config["model"] = merge(config["model"], {
        "name_or_path": str(model_dir), "sampling": {"group_size": 4, "prompts_per_step": 2, "max_new_tokens": 12},
        "update": {"minibatch_size": 8}, "optimizer": {"lr": 0.01},
        "evaluation": {"batch_size": 4, "validate_at_start": False},
        "rewards": {"functions": ["tests.ddp_probe.digit_reward"]},
    })
    config["data"].update(train_size=40, val_size=4, num_texts=0, num_ops=1, num_distractors=2)
    path = run_dir / "config.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, *extra: str, status: int = 0) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lit_attn", "fit", f"--config={config}", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert proc.returncode == status, f"fit exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def kill_and_resume(name: str, model_dir: Path, tmp_path: Path, devices: int) -> tuple[list[dict], list[dict]]:
    """A run killed as batch 2 starts, then ``fit --ckpt_path=<its last.ckpt>`` to 4 batches:
    (the killed run's steps, the resumed run's steps)."""
    killed, resumed = tmp_path / "killed", tmp_path / "resumed"
    fit(write_config(name, model_dir, killed, devices=devices, kill_at=2), status=KILLED)
    fit(write_config(name, model_dir, resumed, devices=devices), f"--ckpt_path={killed / 'ckpt' / 'last.ckpt'}")
    return probe(killed), probe(resumed)


def mid_run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the uninterrupted run saved after its second batch (ModelCheckpoint
    keeps one per step; tree steps may take several optimiser steps per batch)."""
    step = probe(run_dir)[1]["global_step"]
    return run_dir / "ckpt" / f"epoch=0-step={step}.ckpt"


def fit_in_process(config: Path, *extra: str) -> None:
    """``python -m lit_attn fit`` through its entry point, in this process (no interpreter start)."""
    from lit_attn.cli import main

    assert main(["fit", f"--config={config}", *extra]) == 0


def probe(run_dir: Path, rank: int = 0) -> list[dict]:
    return json.loads((run_dir / "probe" / f"rank{rank}.json").read_text())


def same_metrics(straight: list[dict], resumed: list[dict], skip: int) -> None:
    """The resumed run's steps log what the uninterrupted run logged at the same steps."""
    assert len(straight) == skip + len(resumed) and resumed, (len(straight), len(resumed))
    for a, b in zip(straight[skip:], resumed):
        assert a["global_step"] == b["global_step"] and a["prompts"] == b["prompts"]
        keys = set(a["metrics"]) & set(b["metrics"])
        assert "tokens/generated" in keys and "reward" in keys, sorted(keys)
        for key in sorted(keys):
            assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-5, abs=1e-6), (b["global_step"], key)


CONFIGS = ["default.yaml", "attnrl.yaml", "treerl.yaml"]


@pytest.mark.parametrize("name", CONFIGS)
def test_two_processes_train_in_step_and_resume_exactly(name, tiny_model_dir, tmp_path):
    straight = tmp_path / "straight"
    fit(write_config(name, tiny_model_dir, straight, devices=2))
    ranks = [probe(straight, 0), probe(straight, 1)]
    assert len(ranks[0]) == len(ranks[1]) >= 2
    for step0, step1 in zip(*ranks):
        assert step0["weight_gap"] == 0.0 and step1["weight_gap"] == 0.0  # DDP kept the weights equal
        assert not set(step0["prompts"]) & set(step1["prompts"])  # each rank its own prompts
        assert step0["metrics"] == step1["metrics"]  # logged values are global, the same on both ranks
        if name != "default.yaml":
            assert step0["batch_prompts"] == step1["batch_prompts"]  # one adaptive batch size for all ranks
            assert step0["metrics"]["branching/batch_prompts"] == 2 * len(step0["prompts"]) or step0["batch_prompts"] != 2
    tokens = [s["metrics"]["tokens/generated"] for s in ranks[0]]
    assert tokens == sorted(tokens) and tokens[-1] > 0
    assert (straight / "default" if name == "default.yaml" else straight).exists()
    exported = list(straight.rglob("policy/model.safetensors"))
    assert exported, "ExportPolicy wrote nothing under DDP"

    # resumed after batch 2: the same metrics, step for step. AttnRL (the most state to carry)
    # is really killed (os._exit on both ranks as batch 2 starts) and resumed from last.ckpt; the
    # others resume from the checkpoint the uninterrupted run saved after batch 2.
    resumed = tmp_path / "resumed"
    if name == "attnrl.yaml":
        done, _ = kill_and_resume(name, tiny_model_dir, tmp_path, devices=2)
        assert len(done) == 2
    else:
        fit(write_config(name, tiny_model_dir, resumed, devices=2), f"--ckpt_path={mid_run_checkpoint(straight)}")
    same_metrics(ranks[0], probe(resumed), skip=2)
    same_metrics(ranks[1], probe(resumed, 1), skip=2)


@pytest.mark.parametrize("name", CONFIGS + ["grpo.yaml", "lora.yaml"])
def test_one_process_resume_through_the_cli(name, tiny_model_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fit_in_process(write_config(name, tiny_model_dir, straight, devices=1))
    fit_in_process(write_config(name, tiny_model_dir, resumed, devices=1), f"--ckpt_path={mid_run_checkpoint(straight)}")
    same_metrics(probe(straight), probe(resumed), skip=2)


def test_sharded_strategies_are_refused_in_one_line(tiny_model_dir):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    from lit_attn.errors import UserError
    from lit_attn.strategy import check_strategy

    for strategy in (FSDPStrategy, DeepSpeedStrategy):
        fake = SimpleNamespace(strategy=strategy.__new__(strategy))  # no process group needed to be refused
        with pytest.raises(UserError, match=r"does not run under .*use --trainer.strategy=ddp") as err:
            check_strategy(fake, "AttentionBranchCallback")
        assert "\n" not in str(err.value)
    check_strategy(SimpleNamespace(strategy=object()), "PolicyModule")  # anything else passes
