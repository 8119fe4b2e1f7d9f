"""Every shipped YAML in lit_attn/configs/ parses against its entry point, every key is commented, the
method configs extend the default, and lit_attn.config_files reads them as the CLI does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_attn.cli import main
from lit_attn.config_files import callback_name, load_config, merge

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "lit_attn" / "configs").glob("*.yaml"))


def test_configs_found():
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "grpo.yaml", "sft.yaml"} <= names


def _subset(written, printed, where: str) -> None:
    """Every value ``written`` sets is what ``printed`` holds (mappings compared key by key)."""
    if isinstance(written, dict) and isinstance(printed, dict):
        for key, value in written.items():
            assert key in printed, f"{where}.{key} is missing from --print_config"
            _subset(value, printed[key], f"{where}.{key}")
    elif isinstance(written, list) and isinstance(printed, list) and written and isinstance(written[0], dict):
        assert [c["class_path"] for c in written] == [c["class_path"] for c in printed], where
        for a, b in zip(written, printed):
            _subset(a.get("init_args", {}), b.get("init_args", {}), f"{where}[{callback_name(a)}]")
    else:
        assert written == printed, where


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config, capsys):
    """The CLI takes the config, and reads it as load_config does (base first, then overrides)."""
    command = "sft" if config.name.startswith("sft") else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([command, f"--config={config}", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    for section in ("seed_everything", "trainer", "model", "data"):
        _subset(load_config(config)[section], printed[section], f"{config.name}: {section}")


def test_method_configs_extend_the_default_and_change_only_their_own_settings():
    """attnrl, treerl, grpo and lora start from default.yaml; attnrl and treerl add their
    exploration callback to the default's callbacks and keep the rest."""
    default = load_config(CONFIGS[0].parent / "default.yaml")
    for name, callback in (("attnrl.yaml", "AttentionBranchCallback"), ("treerl.yaml", "EntropyBranchCallback")):
        own = yaml.safe_load((CONFIGS[0].parent / name).read_text())
        assert own["config"] == "default.yaml" and "callbacks" not in own["trainer"]
        full = load_config(CONFIGS[0].parent / name)
        names = [callback_name(c) for c in full["trainer"]["callbacks"]]
        assert names == [callback_name(c) for c in default["trainer"]["callbacks"]] + [callback]
        assert full["data"] == default["data"]
    for name in ("grpo.yaml", "lora.yaml"):
        assert yaml.safe_load((CONFIGS[0].parent / name).read_text())["config"] == "default.yaml"


def test_merge_rules():
    base = {"a": {"x": 1, "y": 2}, "l": [1], "o": {"class_path": "A", "init_args": {"p": 1}}}
    out = merge(base, {"a": {"y": 3}, "l+": [2], "o": {"init_args": {"q": 2}}})
    assert out == {"a": {"x": 1, "y": 3}, "l": [1, 2], "o": {"class_path": "A", "init_args": {"p": 1, "q": 2}}}
    assert merge(base, {"o": {"class_path": "B"}})["o"] == {"class_path": "B"}  # another class replaces
    assert base["l"] == [1]  # inputs untouched


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_key_is_commented(config):
    for number, line in enumerate(config.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- class_path"):
            continue
        key = stripped.split(":")[0]
        if key in ("trainer", "model", "data", "logger", "callbacks", "init_args", "class_path", "sampling",
                   "update", "optimizer", "rewards", "evaluation", "functions"):
            continue
        assert "#" in line, f"{config.name}:{number}: key {key!r} has no comment"


def test_attnrl_config_keeps_the_papers_values_where_the_tiny_model_allows():
    config = load_config(CONFIGS[0].parent / "attnrl.yaml")
    branch = next(c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("AttentionBranchCallback"))
    assert (branch["ratio"], branch["num_points"], branch["continuations"], branch["batch_lambda"]) == (0.2, 2, 2, 0.9)
    assert branch["adaptive_sampling"] and branch["adaptive_batch"] and branch["all_correct_expand"] == 3
    assert branch["train_unbranched"] is False and branch["target_sequences"] is None
    # the authors do not cap B_m; the tiny config keeps a guard well above the loader's batch
    assert branch["max_batch_prompts"] == 4 * config["model"]["sampling"]["prompts_per_step"]
    model = config["model"]
    update = model["update"]
    assert (model["sampling"]["group_size"], update["kl_coef"], model["optimizer"]["weight_decay"]) == (6, 0.001, 0.01)
    assert (update["clip_low"], update["clip_high"], update["dual_clip"], update["grad_clip"]) == (0.2, 0.28, 3.0, 1.0)


@pytest.mark.parametrize("name", ["sft.yaml", "sft_subtotal.yaml"])
def test_warm_start_configs_keep_a_last_checkpoint_to_resume_from(name):
    # `sft --ckpt_path last` (and the SIGTERM handler) need a ModelCheckpoint with save_last;
    # without one Lightning's default saves only at epoch ends, which an endless stream never reaches.
    callbacks = load_config(CONFIGS[0].parent / name)["trainer"]["callbacks"]
    checkpoints = [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert checkpoints and checkpoints[0]["init_args"]["save_last"] is True
    assert checkpoints[0]["init_args"]["every_n_train_steps"] > 0
