"""Reading and editing the YAML configs of ``python -m lit_attn fit``, as the CLI reads them.

The shipped configs share a base: ``attnrl.yaml`` starts with ``config: default.yaml`` (the
file it extends, relative to itself) and states only what differs; ``callbacks+:`` appends to
the base's callback list. :func:`load_config` resolves both the way LightningCLI does, so a
script or test can edit the full config and write it back as one self-contained file::

    config = load_config("lit_attn/configs/attnrl.yaml")   # or load_config("attnrl.yaml")
    set_callback_args(config, "AttentionBranchCallback", seed=3)
    Path("run.yaml").write_text(yaml.safe_dump(config))

The shipped configs live in ``lit_attn/configs/`` (the ``lit_attn.configs`` package). A bare
shipped name (``--config attnrl.yaml``) that is no file of the working directory stands for the
shipped file (:func:`resolve_config_path`), so an installed lit_attn runs its recipes from anywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lit_attn.errors import UserError

INCLUDE = "config"
"""The key that names the config a file extends (LightningCLI's ``--config``, inside a file)."""


def packaged_config(name: str) -> Path:
    """The shipped config ``name`` (a YAML of lit_attn/configs/, the ``lit_attn.configs`` package)."""
    return Path(str(resources.files("lit_attn.configs").joinpath(name)))


def resolve_config_path(value: str | Path) -> Path:
    """The file a ``--config`` value names: ``value`` itself when it exists (or has a folder
    part), else the shipped config of that name when there is one (``attnrl.yaml`` →
    lit_attn/configs/attnrl.yaml); otherwise ``value`` unchanged, for the caller to report."""
    path = Path(value)
    try:
        if path.exists() or path.name != str(value):
            return path
        shipped = packaged_config(path.name)
        return shipped if shipped.is_file() else path
    except OSError:  # e.g. a name too long to be a path
        return path


def load_config(path: str | Path) -> dict[str, Any]:
    """The whole config ``path`` stands for: its base (``config:``) loaded first, then this
    file's keys merged over it (mappings key by key, anything else replaced, ``key+:`` lists
    appended)."""
    path = resolve_config_path(path)
    try:
        own = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(
            f"config not found: {path}; pass the path of a YAML config such as lit_attn/configs/default.yaml, "
            "or a shipped config's name such as attnrl.yaml"
        ) from None
    base: dict[str, Any] = {}
    if INCLUDE in own:
        base = load_config(path.parent / own.pop(INCLUDE))
    return merge(base, own)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base`` (neither is changed): nested mappings merge, ``key+`` appends
    its list to ``key``'s, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key.endswith("+"):
            name = key[:-1]
            out[name] = list(out.get(name) or []) + copy.deepcopy(list(value))
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and "class_path" not in value:
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def callback_name(entry: dict[str, Any]) -> str:
    """The class name of a ``trainer.callbacks`` entry."""
    return str(entry["class_path"]).rsplit(".", 1)[-1]


def keep_callbacks(config: dict[str, Any], names: Iterable[str]) -> None:
    """Keep only the callbacks whose class name is in ``names`` (in their order)."""
    wanted = set(names)
    trainer = config.setdefault("trainer", {})
    trainer["callbacks"] = [c for c in trainer.get("callbacks") or [] if callback_name(c) in wanted]


def set_callback_args(config: dict[str, Any], name: str, **args: Any) -> None:
    """Set ``init_args`` of every callback of class ``name`` (a missing one is an error)."""
    found = [c for c in config.get("trainer", {}).get("callbacks") or [] if callback_name(c) == name]
    if not found:
        raise UserError(f"the config has no {name} callback to set {sorted(args)} on")
    for entry in found:
        entry.setdefault("init_args", {}).update(args)


def flatten_nested_configs(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config FILE`` resolved: a bare shipped name becomes the shipped
    file's path (:func:`resolve_config_path`), and a file whose base itself extends another config
    is replaced by the whole resolved config (:func:`load_config`), as a YAML string.

    LightningCLI (jsonargparse) resolves one ``config:`` level inside a file but loses the class
    paths of the level below it, so a user's file that extends ``lit_attn/configs/attnrl.yaml``
    (which extends ``default.yaml``) failed with "Not a valid subclass of Logger". A file with no
    base, or whose base has none, is passed on as its path."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            out += [arg, _flat_if_nested(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + _flat_if_nested(arg.split("=", 1)[1])
        out.append(arg)
        i += 1
    return out


def _own_keys(path: Path) -> dict[str, Any] | None:
    """The mapping a YAML file holds, or None when ``path`` is not a readable YAML mapping."""
    try:
        own = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return own if isinstance(own, dict) else None


def _flat_if_nested(value: str) -> str:
    """One ``--config`` value as the CLI should read it: a YAML string unchanged, a path resolved
    (:func:`resolve_config_path`), a two-deep chain flattened into one YAML string."""
    if "\n" in value:  # a YAML string, not a path
        return value
    path = resolve_config_path(value)
    resolved = value if path == Path(value) else str(path)
    try:
        own = _own_keys(path) if path.is_file() else None
    except OSError:  # e.g. a name too long to be a path
        return resolved
    if not own or not isinstance(own.get(INCLUDE), str):
        return resolved
    base = _own_keys(path.parent / own[INCLUDE])
    if not base or INCLUDE not in base:
        return resolved
    return yaml.safe_dump(load_config(path), sort_keys=False)
