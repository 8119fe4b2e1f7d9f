"""The groups of :class:`~lit_attn.PolicyModule` settings, as validated dataclasses.

Each group is one section of ``model:`` in a config (``--print_config`` and ``--help`` show
them with these docstrings)::

    model:
      sampling:   {group_size, prompts_per_step, max_new_tokens, temperature, rollout_batch_size}
      update:     {minibatch_size, micro_batch_size, ..., clip_low, clip_high, kl_coef, ...}   # lit_attn.ppo.PPOSettings
      optimizer:  {lr, weight_decay}
      rewards:    {functions, weights, scale}
      evaluation: {max_new_tokens, batch_size, num_sample_completions, validate_at_start}

A bad value fails when the group is built, with a one-line message naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lit_attn.errors import UserError


@dataclass(frozen=True)
class SamplingSettings:
    """How the training completions are sampled.

    Attributes:
        group_size: completions sampled per prompt (G).
        prompts_per_step: prompts per training step, per device; the data module's batch size.
        max_new_tokens: completion length limit during training.
        temperature: sampling temperature (the update's log-probs are taken at the same one).
        rollout_batch_size: most sequences sampled (or scored without gradients: FCI,
            entropy) at once. None = the whole step's batch in one call.
    """

    group_size: int = 8
    prompts_per_step: int = 16
    max_new_tokens: int = 64
    temperature: float = 1.0
    rollout_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise UserError(f"model.sampling.group_size must be >= 2 (group advantages compare samples), got {self.group_size}")
        if self.prompts_per_step < 1:
            raise UserError(f"model.sampling.prompts_per_step must be >= 1, got {self.prompts_per_step}")
        if self.max_new_tokens < 1:
            raise UserError(f"model.sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise UserError(
                f"model.sampling.temperature must be > 0, got {self.temperature}; use a small value such as 0.7 "
                "for sharper sampling"
            )
        if self.rollout_batch_size is not None and self.rollout_batch_size < 1:
            raise UserError(f"model.sampling.rollout_batch_size must be >= 1 (or null for no limit), got {self.rollout_batch_size}")

    @property
    def completions_per_step(self) -> int:
        """``prompts_per_step × group_size``."""
        return self.prompts_per_step * self.group_size


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW at a constant learning rate.

    Attributes:
        lr: learning rate (the papers use 1e-6; the tiny default model 1e-4).
        weight_decay: AdamW weight decay.
    """

    lr: float = 1e-6
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise UserError(f"model.optimizer.lr must be > 0, got {self.lr}; the paper uses 1e-6, the tiny default 1e-4")
        if self.weight_decay < 0:
            raise UserError(f"model.optimizer.weight_decay must be >= 0 (0 turns it off), got {self.weight_decay}")


@dataclass(frozen=True)
class RewardSettings:
    """What a completion is worth.

    Attributes:
        functions: reward functions (import strings ``pkg.mod.fn`` or ``pkg.mod:fn``) with
            TRL's signature; the first is the verifier that validation pass@1 uses.
        weights: one weight per reward function (default all 1).
        scale: divide group advantages by the group's std (False = Dr. GRPO's ``r - mean``).
    """

    functions: list[str] = field(default_factory=lambda: ["lit_attn.rewards.task_reward"])
    weights: list[float] | None = None
    scale: bool = True

    def __post_init__(self) -> None:
        if not self.functions:
            raise UserError("model.rewards.functions is empty; name at least one reward function, e.g. lit_attn.rewards.task_reward")


@dataclass(frozen=True)
class EvaluationSettings:
    """Greedy held-out evaluation (``val/pass@1``, ``test/pass@1``) and predictions.

    Attributes:
        max_new_tokens: completion length limit (default: ``sampling.max_new_tokens``).
        batch_size: prompts per greedy generate call; the data module's validation batch size.
        num_sample_completions: rows of the sample-completions table logged to TensorBoard.
        validate_at_start: measure held-out pass@1 once before the first training step.
    """

    max_new_tokens: int | None = None
    batch_size: int = 64
    num_sample_completions: int = 8
    validate_at_start: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UserError(f"model.evaluation.max_new_tokens must be >= 1 (or null for sampling.max_new_tokens), got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise UserError(f"model.evaluation.batch_size must be >= 1, got {self.batch_size}")


def allow_in_checkpoints(*classes: type) -> None:
    """Let ``torch.load(weights_only=True)`` (Lightning's resume) rebuild these settings from a
    checkpoint's hyper-parameters."""
    torch.serialization.add_safe_globals(list(classes))


allow_in_checkpoints(SamplingSettings, OptimizerSettings, RewardSettings, EvaluationSettings)
