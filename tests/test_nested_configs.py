"""A user's config on top of a shipped config that itself extends another (attnrl.yaml on
default.yaml): LightningCLI alone lost the base's class paths there; lit_attn flattens such a
chain with lit_attn.config_files.load_config before the CLI parses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_attn.cli import main
from lit_attn.config_files import flatten_nested_configs, load_config, resolve_config_path
from lit_attn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "lit_attn" / "configs"


def printed_config(capsys, *args: str) -> dict:
    """The full config `fit --print_config` prints for these arguments."""
    with pytest.raises(SystemExit) as stop:
        main(["fit", *args, "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def callback_names(config: dict) -> list[str]:
    return [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"]["callbacks"]]


def test_a_user_config_on_top_of_attnrl_keeps_its_overrides_and_the_base_chain(tmp_path, capsys):
    user = tmp_path / "mine.yaml"
    user.write_text(
        f"config: {CONFIGS / 'attnrl.yaml'}\n"
        "trainer:\n  max_steps: 7\n  logger:\n    init_args:\n      name: mine\n"
        "model:\n  name_or_path: /somewhere/my_model\n"
    )
    config = printed_config(capsys, "--config", str(user))
    assert config["trainer"]["max_steps"] == 7
    assert config["trainer"]["logger"]["init_args"]["name"] == "mine"
    assert config["trainer"]["logger"]["class_path"].endswith("TensorBoardLogger")  # from default.yaml
    assert config["model"]["name_or_path"] == "/somewhere/my_model"
    assert "AttentionBranchCallback" in callback_names(config)  # from attnrl.yaml
    attnrl = load_config(CONFIGS / "attnrl.yaml")
    assert config["model"]["update"] == {**config["model"]["update"], **attnrl["model"]["update"]}


@pytest.mark.parametrize("name", ["attnrl.yaml", "treerl.yaml", "grpo.yaml", "lora.yaml", "poisoned_reward.yaml"])
def test_the_flattened_form_of_a_shipped_config_is_what_the_cli_reads_from_the_file(name, capsys):
    """load_config resolves a chain as LightningCLI does, so flattening changes nothing."""
    from_file = printed_config(capsys, "--config", str(CONFIGS / name))
    flat = yaml.safe_dump(load_config(CONFIGS / name), sort_keys=False)
    assert printed_config(capsys, "--config", flat) == from_file


def test_only_chains_two_deep_are_flattened(tmp_path):
    one = tmp_path / "one.yaml"
    one.write_text(f"config: {CONFIGS / 'default.yaml'}\ntrainer:\n  max_steps: 3\n")
    two = tmp_path / "two.yaml"
    two.write_text("config: one.yaml\n")
    argv = ["fit", "--config", str(one), f"--config={CONFIGS / 'attnrl.yaml'}", "--trainer.max_steps=2"]
    assert flatten_nested_configs(argv) == argv  # attnrl.yaml's base (default.yaml) has no base
    flat = flatten_nested_configs(["fit", "--config", str(two)])
    assert flat[:2] == ["fit", "--config"] and yaml.safe_load(flat[2])["trainer"]["max_steps"] == 3
    assert flatten_nested_configs(["fit", "--config", "missing.yaml"]) == ["fit", "--config", "missing.yaml"]


def test_the_chat_attnrl_example_extends_the_chat_example(capsys):
    """examples/chat_attnrl.yaml → examples/chat.yaml → lit_attn/configs/default.yaml."""
    config = printed_config(capsys, "--config", str(ROOT / "examples" / "chat_attnrl.yaml"))
    assert config["data"]["train_path"] == "examples/chat_prompts.jsonl"  # from chat.yaml
    assert config["trainer"]["logger"]["init_args"]["name"] == "chat_attnrl"
    names = callback_names(config)
    assert names[-1] == "AttentionBranchCallback" and "AttributionCallback" not in names  # chat.yaml's list, appended
    assert config["trainer"]["callbacks"][-1]["init_args"]["think_end_tag"] == "</think>"


def test_a_shipped_config_by_bare_name_from_outside_the_checkout(tmp_path, monkeypatch, capsys):
    """`--config attnrl.yaml` in a folder with no such file runs lit_attn/configs/attnrl.yaml."""
    from_path = printed_config(capsys, "--config", str(CONFIGS / "attnrl.yaml"))
    monkeypatch.chdir(tmp_path)
    assert printed_config(capsys, "--config", "attnrl.yaml") == from_path
    assert printed_config(capsys, "--config=attnrl.yaml") == from_path
    assert load_config("attnrl.yaml") == load_config(CONFIGS / "attnrl.yaml")
    assert resolve_config_path("grpo.yaml") == CONFIGS / "grpo.yaml"


def test_a_file_of_the_working_directory_wins_over_the_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grpo.yaml").write_text("trainer:\n  max_steps: 5\n")
    assert resolve_config_path("grpo.yaml") == Path("grpo.yaml")
    assert flatten_nested_configs(["fit", "--config", "grpo.yaml"]) == ["fit", "--config", "grpo.yaml"]
    # a folder part, an unknown name and a YAML string are left to the CLI
    for value in ("./attnrl.yaml", "sub/attnrl.yaml", "mine.yaml"):
        assert resolve_config_path(value) == Path(value)
    assert flatten_nested_configs(["fit", "--config", "trainer:\n  max_steps: 2\n"])[2] == "trainer:\n  max_steps: 2\n"
    assert flatten_nested_configs(["fit", "--config", "treerl.yaml"]) == ["fit", "--config", str(CONFIGS / "treerl.yaml")]


def test_a_missing_config_is_one_line_naming_both_forms(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="lit_attn/configs/default.yaml, or a shipped config's name such as attnrl.yaml"):
        load_config("nope.yaml")
