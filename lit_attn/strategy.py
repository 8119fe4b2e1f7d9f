"""Which Lightning strategies the RL loop and the callbacks run under.

Data parallelism (``ddp``, ``ddp_spawn``, one device) is supported: every rank holds the whole
model and runs its own rollouts, FCI captures and attributions. Strategies that shard the
weights (FSDP, DeepSpeed, model parallel) turn every forward into a collective call: the
sampling loops, whose lengths differ from rank to rank, and the attribution probes, which run
on rank 0 alone, would wait on each other forever. They are refused at ``setup`` with the fix
(docs/scaling.md: LoRA, bf16, gradient checkpointing and micro-batches fit 7B models on DDP).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from lit_attn.errors import UserError

SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


def _sharded_refusal(name: str, who: str, prefix: str = "") -> UserError:
    return UserError(
        f"{prefix}{who} does not run under {name} (sharded weights make every sampling forward a collective call "
        "that ranks reach different numbers of times); use --trainer.strategy=ddp, with model.lora, "
        "bf16 and model.update.micro_batch_size for large models (docs/scaling.md)"
    )


def check_strategy(trainer: Any, who: str) -> None:
    """Raise a one-line :class:`UserError` when ``trainer`` shards the weights."""
    names = {cls.__name__ for cls in type(getattr(trainer, "strategy", None)).__mro__}
    sharded = sorted(names & set(SHARDED))
    if sharded:
        raise _sharded_refusal(sharded[0], who)


def strategy_class(setting: Any) -> type | None:
    """The strategy class a ``trainer.strategy`` setting names, before Lightning builds it: a
    registered name (``"fsdp"``, ``"deepspeed_stage_3"``), an import path, a ``class_path``
    mapping, or an instance; None for ``"auto"`` and names this cannot resolve (Lightning then
    judges them itself)."""
    if setting is None:
        return None
    if isinstance(setting, str):
        from lightning.pytorch.strategies import StrategyRegistry

        if setting in StrategyRegistry:
            return StrategyRegistry[setting]["strategy"]
        class_path = setting if "." in setting else None
    elif isinstance(setting, Mapping) or hasattr(setting, "class_path"):
        class_path = setting.get("class_path") if isinstance(setting, Mapping) else setting.class_path
    else:
        return type(setting)
    if not class_path:
        return None
    module_name, _, name = str(class_path).rpartition(".")
    if not module_name:
        return None
    try:
        found = getattr(importlib.import_module(module_name), name, None)
    except ImportError:  # not ours to judge: Lightning reports a class path it cannot import
        return None
    return found if isinstance(found, type) else None


def check_strategy_setting(setting: Any, who: str) -> None:
    """Refuse a ``trainer.strategy`` setting that shards the weights in one line, before
    Lightning builds the Trainer (which, for ``fsdp`` on CPU or ``deepspeed`` without the
    package, fails first with a traceback of its own)."""
    cls = strategy_class(setting)
    names = {c.__name__ for c in cls.__mro__} if cls is not None else set()
    sharded = sorted(names & set(SHARDED))
    if sharded:
        shown = setting if isinstance(setting, str) else sharded[0]
        raise _sharded_refusal(sharded[0], who, prefix=f"trainer.strategy={shown}: ")


def reduce_over_ranks(trainer: Any, values: list[float], op: str) -> list[float]:
    """``values`` reduced (``"sum"``, ``"max"``) over the processes of a data-parallel run, as
    they are in one process (or without a trainer). A collective call: every rank makes it."""
    if trainer is None or trainer.world_size <= 1:
        return [float(v) for v in values]
    import torch

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=trainer.strategy.root_device)
    return trainer.strategy.reduce(tensor, reduce_op=op).tolist()
