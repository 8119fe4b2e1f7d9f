"""Loaded by the CLI inside the multi-process test runs (``tests.ddp_probe.StepProbe``): what
each rank saw and logged at every step, and whether the ranks' weights agree."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from lightning import Callback


KILLED = 17
"""The exit status of a run the probe killed."""


def digit_reward(prompts, completions, **kwargs):
    """A reward that varies within a group on a random model: the share of digits."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


class StepProbe(Callback):
    """After every training batch: the prompts this rank trained on, the logged metrics, and
    the largest difference between this rank's weights and rank 0's (all ranks take part).
    Written to ``<out>/rank<R>.json``.

    ``stop_after``: end the run after this many training batches (counted across a resume).
    ``kill_at``: kill the process (``os._exit``, no clean-up, as a crash or ``kill -9``
    would) when batch number ``kill_at`` is about to start; the checkpoint of the batch
    before it has been written."""

    def __init__(self, out: str, stop_after: int | None = None, kill_at: int | None = None) -> None:
        self.out = Path(out)
        self.stop_after, self.kill_at = stop_after, kill_at
        self.steps: list[dict] = []

    @staticmethod
    def batches_done(trainer) -> int:
        return trainer.fit_loop.epoch_loop.batch_progress.total.completed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.kill_at is not None and self.batches_done(trainer) >= self.kill_at:
            os._exit(KILLED)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        flat = torch.cat([p.detach().reshape(-1).double() for p in pl_module.model.parameters()])
        weights = trainer.strategy.all_gather(flat)  # (world, n) under DDP, (n,) alone
        weights = weights.reshape(trainer.world_size, -1)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
        source = getattr(pl_module, "experience_source", None)
        self.steps.append({
            "batch_idx": batch_idx,
            "global_step": trainer.global_step,
            "prompts": [r["prompt"] for r in batch],
            "weight_gap": float((weights - weights[0]).abs().max()),
            "metrics": metrics,
            "batch_prompts": getattr(getattr(source, "state", None), "batch_prompts", None),
        })
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))
        if self.stop_after is not None and self.batches_done(trainer) + 1 >= self.stop_after:
            trainer.should_stop = True
