"""Checks of a run's settings once the command line is parsed, before anything is built.

Lightning validates some trainer settings only when it builds the Trainer or starts the loop,
and then with a traceback (``max_steps=-7``, ``strategy=fsdp`` on CPU, ``accumulate_grad_batches``
under manual optimisation), accepts others that make no sense (``max_epochs=0`` trains
nothing and exports the starting policy), and finds a read-only output folder only when it
first writes there. :class:`PreflightCLI` checks all of these in one line each
(``error: <problem>; <fix>``) before the model is loaded (docs/reliability.md, "Refused in one
line").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lit_attn.errors import UserError
from lit_attn.files import check_writable_file, check_writable_folder
from lit_attn.strategy import check_strategy_setting


def _get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` of a mapping or a jsonargparse Namespace (``default`` when absent)."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_trainer_settings(trainer: Any, subcommand: str = "fit", *, rl: bool = True) -> None:
    """Refuse trainer settings Lightning would reject with a traceback, or accept and then do
    nothing useful with, in one line each.

    Args:
        trainer: the parsed ``trainer`` section (a mapping or a Namespace).
        subcommand: ``fit``, ``validate``, ``test`` or ``predict`` (``sft`` runs ``fit``).
        rl: the RL module (manual optimisation, no sharded strategies) rather than the warm start.
    """
    fitting = subcommand == "fit"
    for key, unit in (("max_steps", "steps"), ("max_epochs", "epochs")):
        value = _get(trainer, key)
        if value is None or not _is_int(value):
            continue
        if value < -1:
            raise UserError(
                f"trainer.{key} must be a positive number of {unit}, or -1 for no limit, got {value}; "
                f"e.g. --trainer.{key}={120 if unit == 'steps' else 1}"
            )
        if value == 0 and fitting:
            raise UserError(
                f"trainer.{key}=0 trains nothing (the run would end at once and export the starting policy); "
                f"give a positive number of {unit}, or -1 for no limit"
            )
    for key in ("min_steps", "min_epochs"):
        value = _get(trainer, key)
        if _is_int(value) and value < 0:
            raise UserError(f"trainer.{key} must be >= 0 or null, got {value}; remove it or give a count")
    interval = _get(trainer, "val_check_interval")
    if interval is not None and not isinstance(interval, (str, bool)):
        if _is_int(interval) and interval < 1 or isinstance(interval, float) and not 0 < interval <= 1:
            raise UserError(
                f"trainer.val_check_interval must be a number of training steps >= 1 or a fraction of an epoch in "
                f"(0, 1], got {interval}; e.g. --trainer.val_check_interval=20, or --trainer.limit_val_batches=0 "
                "to skip validation"
            )
    every = _get(trainer, "check_val_every_n_epoch")
    if _is_int(every) and every < 1:
        raise UserError(f"trainer.check_val_every_n_epoch must be >= 1 or null, got {every}; use null to validate by steps")
    log_every = _get(trainer, "log_every_n_steps")
    if _is_int(log_every) and log_every < 0:
        raise UserError(f"trainer.log_every_n_steps must be >= 1 (or 0: no logging), got {log_every}; e.g. 1")
    sanity = _get(trainer, "num_sanity_val_steps")
    if _is_int(sanity) and sanity < -1:
        raise UserError(f"trainer.num_sanity_val_steps must be >= 0 (or -1: all), got {sanity}; e.g. 0")
    for split in ("train", "val", "test", "predict"):
        limit = _get(trainer, f"limit_{split}_batches")
        if (_is_int(limit) and limit < 0) or (isinstance(limit, float) and not 0 <= limit <= 1):
            raise UserError(
                f"trainer.limit_{split}_batches must be a number of batches >= 0 or a fraction in [0, 1], got {limit}; "
                "remove it to use every batch"
            )
    accumulate = _get(trainer, "accumulate_grad_batches", 1)
    if rl and accumulate not in (None, 1):
        raise UserError(
            f"trainer.accumulate_grad_batches={accumulate} does not apply to RL training (it optimises manually: each "
            "step's updates are set by model.update.minibatch_size); remove it, and use model.update.micro_batch_size "
            "to accumulate gradients within a minibatch"
        )
    if not rl and _is_int(accumulate) and accumulate < 1:
        raise UserError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulate}; e.g. 1")
    clip = _get(trainer, "gradient_clip_val")
    if rl and clip not in (None, 0, 0.0):
        raise UserError(
            f"trainer.gradient_clip_val={clip} does not apply to RL training (it optimises manually); remove it and "
            "set model.update.grad_clip instead"
        )
    if rl:
        check_strategy_setting(_get(trainer, "strategy"), f"python -m lit_attn {subcommand}")


def _class_name(entry: Any) -> str:
    path = _get(entry, "class_path") or ""
    return str(path).rpartition(".")[2]


def _init_args(entry: Any) -> Any:
    return _get(entry, "init_args") or {}


def check_output_places(trainer: Any, subcommand: str = "fit") -> None:
    """Refuse, in one line naming the setting, an output folder that cannot be written: a
    logger's ``save_dir`` (or ``trainer.default_root_dir`` when no logger names a folder,
    where Lightning then writes config.yaml and checkpoints), a ``ModelCheckpoint`` ``dirpath``
    and the folder an ``ExportPolicy`` export goes into (``fit``), and a ``PredictionWriter``
    ``path`` (``predict``). Relative paths are taken from the working directory."""
    loggers = _get(trainer, "logger")
    entries = loggers if isinstance(loggers, (list, tuple)) else [loggers]
    save_dirs = [
        (f"trainer.logger{'s' if len(entries) > 1 else ''}.init_args.save_dir", _get(_init_args(e), "save_dir"))
        for e in entries if e not in (None, False, True)
    ]
    for option, folder in save_dirs:
        if folder:
            check_writable_folder(folder, option)
    if not any(folder for _, folder in save_dirs):
        check_writable_folder(_get(trainer, "default_root_dir") or ".", "trainer.default_root_dir")
    callbacks = _get(trainer, "callbacks") or []
    for entry in callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]:
        name, args = _class_name(entry), _init_args(entry)
        if subcommand == "fit" and name == "ModelCheckpoint" and _get(args, "dirpath"):
            check_writable_folder(_get(args, "dirpath"), "ModelCheckpoint's dirpath")
        if subcommand == "fit" and name == "ExportPolicy" and _get(args, "dirpath"):
            # the export is written beside its target and renamed into place: the parent is written
            check_writable_folder(
                Path(_get(args, "dirpath")).expanduser().absolute().parent, "the folder of ExportPolicy's dirpath",
                fix="set ExportPolicy's dirpath to a path in a folder you can write to",
            )
        if subcommand == "predict" and name == "PredictionWriter" and _get(args, "path"):
            check_writable_file(_get(args, "path"), "PredictionWriter's path")


class PreflightCLI:
    """Mixin for a ``LightningCLI`` (put it first among the bases): once the command line is
    parsed and before the model, the data or the Trainer is built, check the trainer settings
    (:func:`check_trainer_settings`) and the output folders (:func:`check_output_places`)."""

    rl_training: bool = True
    """True for the RL module (manual optimisation, no sharded strategies), False for the warm start."""

    def before_instantiate_classes(self) -> None:
        subcommand = getattr(self, "subcommand", None)
        config = self.config[subcommand] if subcommand else self.config
        trainer = _get(config, "trainer") or {}
        check_trainer_settings(trainer, subcommand or "fit", rl=self.rl_training)
        check_output_places(trainer, subcommand or "fit")
        super().before_instantiate_classes()  # type: ignore[misc]
