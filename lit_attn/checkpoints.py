"""Checkpoint files: written atomically, read back with a one-line error, found by ``--ckpt_path last``.

- :class:`AtomicCheckpointIO` (the CLI gives it to every Trainer) writes a checkpoint to a
  temporary file in its own folder, fsyncs it and renames it into place, so a checkpoint is under
  its final name only when it is complete. Lightning's own writer stages the file in the system
  temp folder and moves it, which across disks is a copy: a full disk left a truncated
  ``epoch=0-step=1.ckpt`` under its final name.
- :func:`read_checkpoint` opens a ``--ckpt_path`` file before the run writes anything: an empty,
  truncated or foreign file is a :class:`~lit_attn.errors.UserError`.
- :func:`find_last_checkpoint` resolves ``--ckpt_path last`` to the newest ``last.ckpt`` of the
  run's logger ``save_dir/name`` across its version folders (each run gets a new one).
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import secrets
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_attn.errors import UserError, one_line


def atomic_save(checkpoint: dict[str, Any], path: Path) -> None:
    """``torch.save`` to ``path`` through ``.<name>.<random>.tmp`` beside it: written, fsynced,
    then renamed over ``path``. On any failure the temporary file is removed; a failure of the
    disk (full, read-only, quota) is a one-line ``UserError``. The file is created like any other
    (mode 0666 less the umask)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        f = open(staging, "xb")  # noqa: SIM115 - closed below, on success and on failure
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException as err:
        staging.unlink(missing_ok=True)
        disk = _os_error(err) if isinstance(err, Exception) else None  # not on Ctrl+C or SystemExit
        if disk is None:
            raise
        raise _write_error(path, disk) from err
    _fsync_folder(path.parent)


def _os_error(err: BaseException) -> OSError | None:
    """The ``OSError`` behind ``err`` (torch's zip writer reports a failed write as a RuntimeError
    about the file position, raised while handling the OSError)."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _write_error(path: Path, err: OSError) -> UserError:
    """The one line for a checkpoint the disk refused (full, read-only, over quota)."""
    reason = err.strerror or one_line(err)
    return UserError(
        f"cannot write checkpoint {path}: {reason} (no partial file is left; an earlier file of that name is "
        "unchanged); free space on that disk or set "
        "ModelCheckpoint's dirpath to another folder, then resume with --ckpt_path=last"
    )


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; elsewhere a no-op)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local writes (:func:`atomic_save`).

    Remote paths (``s3://`` …) and ``storage_options`` go to Lightning's writer unchanged. Use it
    outside the CLI with ``Trainer(plugins=[AtomicCheckpointIO()])``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, Path(path))


def read_checkpoint(path: str | Path, *, resume: bool) -> dict[str, Any]:
    """The checkpoint at ``path``, its tensors memory-mapped (nothing large is read), or a
    ``UserError`` when it is not a complete Lightning checkpoint. ``resume``: it must also hold
    the optimiser and loop state that ``fit`` restores."""
    fix = "pass a complete .ckpt file (a last.ckpt or a step checkpoint of a run), or --ckpt_path=last"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the end
        size = Path(path).stat().st_size
        what = "empty" if size == 0 else f"not a complete torch.save archive ({size} bytes: truncated, or another kind of file)"
        raise UserError(f"checkpoint {path} is {what}; {fix}")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True)  # weights_only as Lightning loads it
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(f"checkpoint {path} cannot be read ({one_line(err)}); {fix}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"checkpoint {path} is not a Lightning checkpoint (it has no state_dict); {fix}")
    missing = [key for key in ("optimizer_states", "loops") if key not in checkpoint]
    if resume and missing:
        raise UserError(
            f"checkpoint {path} holds weights only (no {' or '.join(missing)}, as ModelCheckpoint(save_weights_only=true) "
            "writes), so fit cannot resume from it; pass a full checkpoint, or use it with validate / test / predict"
        )
    return checkpoint


def last_checkpoint_folders(trainer: Trainer) -> dict[str, str]:
    """Where ``last.ckpt`` files of this run's configuration live, shown as paths and mapped to
    glob patterns: each ModelCheckpoint's ``dirpath`` when set, else ``<logger save_dir>/<name>/*/
    checkpoints`` (every version folder), else ``<default_root_dir>/checkpoints`` (Lightning's placement)."""
    folders: dict[str, str] = {}
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None:
            folder = str(callback.dirpath)
            folders[folder] = glob.escape(folder)
        elif trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = str(logger.save_dir if logger.save_dir is not None else trainer.default_root_dir)
            name = str(logger.name or "")
            folders[os.path.join(save_dir, name, "*", "checkpoints")] = os.path.join(
                glob.escape(save_dir), glob.escape(name), "*", "checkpoints"
            )
        else:
            folder = os.path.join(trainer.default_root_dir, "checkpoints")
            folders[folder] = glob.escape(folder)
    return folders


def find_last_checkpoint(trainer: Trainer) -> str:
    """``--ckpt_path last``: the newest ``last.ckpt`` (or ``last-vN.ckpt``, Lightning's name when
    last.ckpt was taken) in :func:`last_checkpoint_folders`, or a ``UserError`` that says where it looked."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if not callbacks:
        raise UserError(
            "--ckpt_path=last: this run has no ModelCheckpoint (trainer.enable_checkpointing is off), so there is no "
            "last.ckpt to look for; pass the checkpoint file to --ckpt_path"
        )
    folders = last_checkpoint_folders(trainer)
    last = re.compile("|".join(rf"{re.escape(cb.CHECKPOINT_NAME_LAST)}(-v\d+)?" for cb in callbacks))
    found = [
        path
        for pattern in folders.values()
        for path in glob.glob(os.path.join(pattern, "*" + ModelCheckpoint.FILE_EXTENSION))
        if last.fullmatch(Path(path).stem) and os.path.isfile(path)
    ]
    if not found:
        raise UserError(
            f"--ckpt_path=last: no last.ckpt under {' or '.join(folders)}; pass a checkpoint file to --ckpt_path "
            "(last.ckpt is written by a ModelCheckpoint with save_last: true, and by a run stopped with SIGTERM)"
        )
    return max(found, key=os.path.getmtime)
