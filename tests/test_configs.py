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
