"""Every shipped YAML in configs/ parses against its entry point, and every key is commented."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_attn.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_found():
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "grpo.yaml", "sft.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config, capsys):
    command = "sft" if config.name.startswith("sft") else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([command, f"--config={config}", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    for section in ("model", "data"):
        for key, value in written[section].items():
            assert printed[section][key] == value, f"{config.name}: {section}.{key}"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_key_is_commented(config):
    for number, line in enumerate(config.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- class_path"):
            continue
        key = stripped.split(":")[0]
        if key in ("trainer", "model", "data", "logger", "callbacks", "init_args", "class_path"):
            continue
        assert "#" in line, f"{config.name}:{number}: key {key!r} has no comment"


def test_attnrl_config_keeps_the_papers_values_where_the_tiny_model_allows():
    config = yaml.safe_load((CONFIGS[0].parent / "attnrl.yaml").read_text())
    branch = next(c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("AttentionBranchCallback"))
    assert (branch["ratio"], branch["num_points"], branch["continuations"], branch["batch_lambda"]) == (0.2, 2, 2, 0.9)
    assert branch["adaptive_sampling"] and branch["adaptive_batch"] and branch["all_correct_expand"] == 3
    assert branch["train_unbranched"] is False and branch["target_sequences"] is None
    model = config["model"]
    assert (model["group_size"], model["kl_coef"], model["weight_decay"]) == (6, 0.001, 0.01)
    assert (model["clip_low"], model["clip_high"], model["dual_clip"], model["grad_clip"]) == (0.2, 0.28, 3.0, 1.0)
