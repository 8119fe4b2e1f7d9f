"""The CLI end to end: a few real RL steps, then the outputs a user looks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from lit_attn.cli import main


def small_fit_args(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "fit",
        f"--model.name_or_path={model_dir}",
        "--model.sampling.prompts_per_step=2",
        "--model.sampling.group_size=4",
        "--model.update.minibatch_size=8",  # one optimiser update per RL step: max_steps = RL steps
        "--model.sampling.max_new_tokens=12",
        "--model.evaluation.batch_size=4",
        "--model.optimizer.lr=0.01",
        "--data.train_size=40",
        "--data.val_size=4",
        "--data.num_texts=0",  # plain contexts: the tiny test model has 256 positions
        "--trainer.max_steps=3",
        "--trainer.val_check_interval=3",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        *extra,
    ]


def scalars(run_dir: Path) -> dict[str, list[float]]:
    events = sorted(run_dir.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {run_dir}"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_fit_end_to_end_logs_checkpoints_and_exports(tiny_model_dir, reward_module, tmp_path):
    run_dir = tmp_path / "runs"
    rc = main(small_fit_args(tiny_model_dir, run_dir, f"--model.rewards.functions=[{reward_module}]"))
    assert rc == 0

    tags = scalars(run_dir)
    for name in (
        "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
        "completions/clipped_ratio", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
        "tokens/generated", "val/pass@1",
    ):
        assert name in tags, f"metric {name} not logged; got {sorted(tags)}"
    generated = tags["tokens/generated"]
    assert len(generated) == 3 and all(b > a for a, b in zip(generated, generated[1:])), generated
    assert len(tags["val/pass@1"]) == 2  # step 0 (validate_at_start) and after step 3

    version = next((run_dir / "default").iterdir())
    assert (version / "checkpoints" / "last.ckpt").is_file()
    exported = AutoModelForCausalLM.from_pretrained(version / "policy")
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = {
        name: not torch.equal(p, before.state_dict()[name]) for name, p in exported.state_dict().items()
    }
    assert all(changed.values()), f"parameters not updated by training: {[n for n, c in changed.items() if not c]}"


def test_validate_and_predict_subcommands(tiny_model_dir, tmp_path, capsys):
    common = [
        f"--model.name_or_path={tiny_model_dir}", "--model.sampling.max_new_tokens=4", "--model.evaluation.batch_size=4",
        "--data.val_size=4", "--data.train_size=8", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    assert main(["validate", *common]) == 0
    assert "val/pass@1" in capsys.readouterr().out
    assert main(["test", *common]) == 0
    assert main(["predict", *common]) == 0
    written = sorted(tmp_path.rglob("predictions.jsonl"))
    assert written, "predict wrote no predictions.jsonl"
    rows = [json.loads(line) for line in written[-1].read_text().splitlines()]
    assert len(rows) == 4 and all(set(r) == {"prompt", "completion"} for r in rows)


def test_print_config_without_config_is_the_embedded_default(capsys):
    import yaml

    from lit_attn.cli import packaged_config

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    shipped = yaml.safe_load(packaged_config("default.yaml").read_text())
    for section in ("model", "data"):
        for key, value in shipped[section].items():
            assert printed[section][key] == value, f"{section}.{key}"
    assert printed["trainer"]["max_steps"] == shipped["trainer"]["max_steps"]


def test_shipped_default_model_solves_some_held_out_prompts(tmp_path):
    """The embedded default end to end: shipped model + tokenizer, built-in task, two RL steps."""
    run_dir = tmp_path / "runs"
    rc = main([
        "fit", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        "--model.sampling.prompts_per_step=2", "--model.sampling.group_size=4", "--model.update.minibatch_size=8",
        "--data.val_size=40", "--data.train_size=40", "--model.evaluation.batch_size=40",
        f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
    ])
    assert rc == 0
    accuracy = scalars(run_dir)["val/pass@1"]
    # The shipped model starts well above chance (1 in 10 answers) on the built-in task.
    assert accuracy[0] >= 0.15, accuracy


def test_fit_on_user_jsonl_with_math_reward_and_extra_columns(tiny_model_dir, tmp_path, monkeypatch):
    """The real-user path: a local model, JSONL data, math-verify reward, a column-aware reward."""
    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i), "source": "drill"} for i in range(12)]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "colreward.py").write_text(
        "SEEN = []\n"
        "def source_reward(prompts, completions, source, **kw):\n"
        "    SEEN.extend(source)\n"
        "    return [0.5 if s == 'drill' else None for s in source]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "runs"
    rc = main([
        "fit", f"--model.name_or_path={tiny_model_dir}", f"--data.train_path={train}", "--data.val_size=4",
        "--model.rewards.functions=[lit_attn.rewards.math_reward, colreward.source_reward]", "--model.rewards.weights=[1.0, 0.5]",
        "--model.sampling.prompts_per_step=2", "--model.sampling.group_size=2", "--model.update.minibatch_size=4", "--model.sampling.max_new_tokens=6",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
    ])
    assert rc == 0
    import colreward

    assert colreward.SEEN and set(colreward.SEEN) == {"drill"}
    tags = scalars(run_dir)
    assert "rewards/math_reward/mean" in tags and "rewards/source_reward/mean" in tags
    assert tags["rewards/source_reward/mean"][0] == 0.5


def test_prompts_per_step_has_one_home(tmp_path):
    """`model.sampling.prompts_per_step` is the training batch size; the data module has no copy
    (issue 22: it was linked to `data.prompts_per_step`, which data.py checked again)."""
    import inspect

    from lightning import LightningModule

    from lit_attn import PromptDataModule
    from lit_attn.errors import UserError

    assert "prompts_per_step" not in inspect.signature(PromptDataModule).parameters
    code = main(["fit", "--data.prompts_per_step=2", "--print_config"])
    assert code == 2  # no such option
    data = PromptDataModule(train_size=8, val_size=2, num_distractors=0, num_ops=1)
    data.setup("fit")
    data.trainer = type("T", (), {"lightning_module": LightningModule()})()
    with pytest.raises(UserError, match="sampling.prompts_per_step, which LightningModule lacks"):
        data.train_dataloader()
