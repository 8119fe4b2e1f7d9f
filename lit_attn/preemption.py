"""Preemption: on SIGTERM, save ``last.ckpt`` and exit with status 143.

Schedulers (SLURM, Kubernetes, spot instances) send SIGTERM before they stop a job. Lightning's
handler only sets ``trainer.received_sigterm``; the loops then raise ``SIGTERMException`` (a
``SystemExit`` with no code) once the step in progress has ended, so the process used to exit
with status 0 — "finished" to the scheduler — having saved nothing since its last periodic
checkpoint. :class:`Preemption` (the CLI gives it to every Trainer) turns that exception into a
``last.ckpt`` and exit status 143 (128 + SIGTERM, what a process killed by SIGTERM reports), and
``fit --ckpt_path last`` resumes from it.
"""

from __future__ import annotations

import signal
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_STATUS = 128 + int(signal.SIGTERM)
"""The exit status of a run stopped by SIGTERM: 143, as if the signal had killed the process."""


class Preemption(Callback):
    """On ``SIGTERMException`` while fitting: ``last.ckpt`` where each ModelCheckpoint puts it
    (its ``save_last`` file; ``<dirpath>/last.ckpt`` for one without ``save_last``), then the
    process exits with :data:`EXIT_STATUS`. Any other subcommand stopped by SIGTERM exits with the
    same status, saving nothing. Use it outside the CLI with ``Trainer(callbacks=[Preemption()])``."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            save_last(trainer)
        exception.code = EXIT_STATUS  # Lightning re-raises this same exception: sys.exit(143)


def save_last(trainer: Trainer) -> None:
    """``last.ckpt`` of the current state for every ModelCheckpoint of ``trainer`` (a warning when
    there is none: the run cannot be resumed)."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    if not callbacks:
        rank_zero_warn("stopped by SIGTERM with checkpointing off: no last.ckpt saved, the run cannot be resumed")
        return
    for callback in callbacks:
        # ModelCheckpoint has no public "save last now"; these are the calls its own on_exception makes.
        metrics: dict[str, Any] = callback._monitor_candidates(trainer)
        if callback.save_last:
            callback._save_last_checkpoint(trainer, metrics)
            path = callback.last_model_path
        else:
            path = callback.format_checkpoint_name(metrics, callback.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(path)
        rank_zero_info(f"stopped by SIGTERM after step {trainer.global_step}: saved {path}; resume with --ckpt_path last")
