"""Resume rules: a checkpoint continues its own model, and no setting changes silently.

When ``--ckpt_path`` is given, the model and data module are still built from this run's
settings; the checkpoint restores the weights, the loops, the callbacks' state and the optimiser
state — and with the optimiser state, its hyper-parameters (AdamW's ``lr``, ``weight_decay``):
those are the checkpoint's, whatever the command line says. So :func:`check_resume`

- refuses another model (``model.name_or_path`` differs) or weights that do not fit the model
  this run builds, in one line;
- warns once, listing every setting that differs from the checkpoint's saved hyper-parameters
  and which value is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_warn

from lit_attn.errors import UserError


MISSING = object()
"""A setting absent on one side (saved by an older version, or no longer a setting)."""

MOVED = {"data.prompts_per_step": "model.sampling.prompts_per_step"}
"""Settings an older checkpoint saves under a name that is gone → where the value lives now
(compared there; the old name alone is no difference)."""


def settings_tree(value: Any) -> Any:
    """Saved hyper-parameters as nested dicts (dataclasses and mappings converted; LightningCLI's
    private ``_instantiator``-style keys left out)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): settings_tree(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


def differences(saved: Any, current: Any, name: str) -> list[tuple[str, Any, Any]]:
    """``(setting, checkpoint's value, this run's value)`` for every setting that differs, by
    dotted name (``model.sampling.group_size``); a section set on one side only (``model.lora``
    null in the checkpoint) is one entry."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [
            diff
            for key in sorted(saved.keys() | current.keys())
            for diff in differences(saved.get(key, MISSING), current.get(key, MISSING), f"{name}.{key}")
        ]
    return [] if saved == current else [(name, saved, current)]


def restored_settings(checkpoint: Mapping[str, Any]) -> set[str]:
    """Names of the optimiser hyper-parameters the checkpoint's optimiser state restores (``lr``,
    ``weight_decay``, ``betas`` …): a setting whose last name part is one of them is the checkpoint's."""
    return {key for state in checkpoint.get("optimizer_states", []) for group in state.get("param_groups", []) for key in group} - {"params"}


def check_resume(
    checkpoint: Mapping[str, Any], path: str, model: LightningModule, datamodule: LightningDataModule | None, *, fitting: bool
) -> None:
    """Refuse a checkpoint of another model; warn about every setting that differs from it."""
    saved = {"model": settings_tree(checkpoint.get("hyper_parameters") or {})}
    current = {"model": settings_tree(model.hparams)}
    if datamodule is not None:
        saved["data"] = settings_tree(checkpoint.get("datamodule_hyper_parameters") or {})
        current["data"] = settings_tree(datamodule.hparams)
    _check_same_model(saved["model"].get("name_or_path"), current["model"].get("name_or_path"), path)
    changed = [
        (name, old, new) for section in saved for name, old, new in differences(saved[section], current[section], section)
        if not (name in MOVED and new is MISSING)
    ]
    _check_weights_fit(checkpoint, model, path, [name for name, _, _ in changed if name.startswith("model.")])
    restored = restored_settings(checkpoint) if fitting else set()
    lines = []
    for name, old, new in changed:
        old, new = _shown(old, "(not saved)"), _shown(new, "(not set)")
        if name.rsplit(".", 1)[-1] in restored:
            used = f"the checkpoint's {old} is used (restored with the optimiser state)"
        else:
            used = f"this run's {new} is used"
        lines.append(f"{name}: checkpoint {old}, this run {new}; {used}")
    if lines:
        rank_zero_warn(
            f"resuming from {path} with {len(lines)} setting(s) that differ from its saved hyper-parameters: "
            + " | ".join(lines)
        )


def _shown(value: Any, absent: str) -> str:
    return absent if value is MISSING else str(value)


def _check_same_model(saved: Any, current: Any, path: str) -> None:
    """Refuse a ``model.name_or_path`` other than the checkpoint's (None: not a setting here)."""
    if saved is None or current is None or _same_model(saved, current):
        return
    raise UserError(
        f"--ckpt_path {path} continues the model {saved}, but this run loads {current}; resume with "
        f"--model.name_or_path={saved}, or start a new run without --ckpt_path (a trained policy's export is a model folder)"
    )


def _same_model(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return False


def _check_weights_fit(checkpoint: Mapping[str, Any], model: LightningModule, path: str, changed: list[str]) -> None:
    """The strict ``load_state_dict`` Lightning does, checked first: the same tensor names and
    shapes; ``changed`` names the model settings that differ from the checkpoint's."""
    if not getattr(model, "strict_loading", True):
        return
    theirs = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if hasattr(v, "shape")}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    if not wrong:
        return
    example = wrong[0]
    shapes = [list(side[example]) if example in side else "absent" for side in (theirs, ours)]
    raise UserError(
        f"--ckpt_path {path} holds weights of another model: {len(wrong)} tensors differ (e.g. {example}: "
        f"{shapes[0]} in the checkpoint, {shapes[1]} here); resume with the checkpoint's model settings"
        + (f" (these differ: {', '.join(changed)})" if changed else "")
    )
