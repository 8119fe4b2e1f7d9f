"""Which Lightning strategies the RL loop and the callbacks run under.

Data parallelism (``ddp``, ``ddp_spawn``, one device) is supported: every rank holds the whole
model and runs its own rollouts, FCI captures and attributions. Strategies that shard the
weights (FSDP, DeepSpeed, model parallel) turn every forward into a collective call: the
sampling loops, whose lengths differ from rank to rank, and the attribution probes, which run
on rank 0 alone, would wait on each other forever. They are refused at ``setup`` with the fix
(docs/scaling.md: LoRA, bf16, gradient checkpointing and micro-batches fit 7B models on DDP).
"""

from __future__ import annotations

from typing import Any

from lit_attn.errors import UserError

SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


def check_strategy(trainer: Any, who: str) -> None:
    """Raise a one-line :class:`UserError` when ``trainer`` shards the weights."""
    names = {cls.__name__ for cls in type(getattr(trainer, "strategy", None)).__mro__}
    sharded = sorted(names & set(SHARDED))
    if sharded:
        raise UserError(
            f"{who} does not run under {sharded[0]} (sharded weights make every sampling forward a collective call "
            "that ranks reach different numbers of times); use --trainer.strategy=ddp, with model.lora, "
            "bf16 and model.update.micro_batch_size for large models (docs/scaling.md)"
        )


def reduce_over_ranks(trainer: Any, values: list[float], op: str) -> list[float]:
    """``values`` reduced (``"sum"``, ``"max"``) over the processes of a data-parallel run, as
    they are in one process (or without a trainer). A collective call: every rank makes it."""
    if trainer is None or trainer.world_size <= 1:
        return [float(v) for v in values]
    import torch

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=trainer.strategy.root_device)
    return trainer.strategy.reduce(tensor, reduce_op=op).tolist()
