"""Every settings group of PolicyModule lives in lit_attn.settings and has one name from the YAML
key to the class to the attribute (issue 22: ``update`` was PPOSettings in ppo.py, held as
``ppo_settings``); checkpoints that name a former class still load."""

from __future__ import annotations

import inspect
import io
import typing

import pytest
import torch
import yaml

from lit_attn.cli import packaged_config
from lit_attn.policy import PolicyModule
from lit_attn.settings import GROUPS, RENAMED, LoraSettings, RewardsSettings, UpdateSettings


def group_parameters() -> dict[str, type]:
    """PolicyModule's arguments whose type is a settings class (``X`` or ``X | None``) → that class."""
    hints = typing.get_type_hints(PolicyModule.__init__)
    out = {}
    for name in inspect.signature(PolicyModule.__init__).parameters:
        for candidate in typing.get_args(hints.get(name)) or (hints.get(name),):
            if isinstance(candidate, type) and candidate.__name__.endswith("Settings"):
                out[name] = candidate
    return out


def test_each_group_has_one_name_from_the_yaml_to_the_class():
    assert group_parameters() == GROUPS
    for key, cls in GROUPS.items():
        assert cls.__name__ == key[0].upper() + key[1:] + "Settings", (key, cls.__name__)
        assert cls.__module__ == "lit_attn.settings", cls
    shipped = yaml.safe_load(packaged_config("default.yaml").read_text())["model"]
    assert set(GROUPS) <= set(shipped), sorted(set(GROUPS) - set(shipped))


def test_the_module_holds_each_group_under_its_key(tiny_model_dir):
    update = UpdateSettings(minibatch_size=4, kl_coef=0.0)
    module = PolicyModule(name_or_path=str(tiny_model_dir), update=update)
    for key, cls in GROUPS.items():
        value = getattr(module, key)
        assert value is None if key == "lora" else isinstance(value, cls), key
    assert module.update is update and callable(module.update_policy)


@pytest.mark.parametrize(
    "old_path, settings",
    [("lit_attn.ppo.PPOSettings", UpdateSettings(minibatch_size=4)), ("lit_attn.settings.RewardSettings", RewardsSettings(scale=False)),
     ("lit_attn.lora.LoraSettings", LoraSettings(rank=2))],
)
def test_a_checkpoint_naming_a_former_class_loads(old_path, settings):
    assert RENAMED[old_path] is type(settings)
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": {"group": settings}}, buffer, _use_new_zipfile_serialization=False)
    now = f"{type(settings).__module__}\n{type(settings).__qualname__}\n".encode()
    module, name = old_path.rsplit(".", 1)
    written = buffer.getvalue()
    assert now in written
    old = written.replace(now, f"{module}\n{name}\n".encode())
    loaded = torch.load(io.BytesIO(old), weights_only=True)
    assert loaded["hyper_parameters"]["group"] == settings
