"""The groups of :class:`~lit_attn.PolicyModule` settings, as validated dataclasses, in one place.

Each group is one section of ``model:`` in a config (``--print_config`` and ``--help`` show
them with these docstrings), and has one name from the YAML to the class to the attribute:
the key ``update`` is :class:`UpdateSettings`, held as ``PolicyModule.update``::

    model:
      sampling:   {group_size, prompts_per_step, max_new_tokens, temperature, rollout_batch_size}   # SamplingSettings
      update:     {minibatch_size, micro_batch_size, ..., clip_low, clip_high, kl_coef, ...}        # UpdateSettings
      optimizer:  {lr, weight_decay}                                                             # OptimizerSettings
      rewards:    {functions, weights, scale}                                                    # RewardsSettings
      evaluation: {max_new_tokens, batch_size, num_sample_completions, validate_at_start}        # EvaluationSettings
      lora:       null or {rank, alpha, dropout, target_modules}                                 # LoraSettings

:data:`GROUPS` lists them. A bad value fails when the group is built, with a one-line message
naming the option. The prompts per step are set here only (``sampling.prompts_per_step``): the
data module batches the training prompts by it. The sampling temperature's rule is
:func:`check_temperature`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lit_attn.errors import UserError
from lit_attn.loss import Aggregation


def check_temperature(temperature: float, option: str = "temperature") -> None:
    """The sampling temperature's rule (> 0), for every entry point that takes one."""
    if not temperature > 0:
        raise UserError(
            f"{option} is {temperature}; it must be > 0 (a small value such as 0.7 samples sharper; "
            "greedy decoding is do_sample=False)"
        )


@dataclass(frozen=True)
class SamplingSettings:
    """How the training completions are sampled.

    Attributes:
        group_size: completions sampled per prompt (G).
        prompts_per_step: prompts per training step, per device; the data module batches the
            training prompts by it (its only setting).
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
        check_temperature(self.temperature, "model.sampling.temperature")
        if self.rollout_batch_size is not None and self.rollout_batch_size < 1:
            raise UserError(f"model.sampling.rollout_batch_size must be >= 1 (or null for no limit), got {self.rollout_batch_size}")

    @property
    def completions_per_step(self) -> int:
        """``prompts_per_step × group_size``."""
        return self.prompts_per_step * self.group_size


@dataclass(frozen=True)
class UpdateSettings:
    """How one update trains (``model.update`` in a config).

    Attributes:
        minibatch_size: completions per optimiser step; must divide the step's completions
            (``sampling.prompts_per_step × sampling.group_size`` for GRPO).
        micro_batch_size: most sequences per forward/backward (gradients accumulate over a
            minibatch's micro-batches, exactly); also bounds the no-grad behaviour and
            reference log-prob forwards. None = a whole minibatch at once.
        micro_batch_tokens: most padded tokens (rows × longest row) per micro-batch, for
            responses whose lengths vary. None = no token limit.
        share_prompts: run a prompt shared by several rows (a GRPO group, the paths of a
            tree) once, its KV cache repeated to the rows (same numbers and gradients; off for
            models whose cache drops positions, and under gradient checkpointing).
        skip_zero_advantage: leave rows whose advantage is 0 out of the forward and backward
            passes when ``kl_coef`` = 0 (their gradient is exactly 0; they still count in the
            loss normaliser). The update is the same; ``entropy`` and the clip and ratio
            statistics then cover the rows trained on.
        clip_low: PPO lower clip ε_low.
        clip_high: PPO upper clip ε_high (clip-higher, DAPO).
        dual_clip: dual-clip constant c for negative advantages (None disables).
        kl_coef: k3 KL penalty to the frozen initial policy; 0 loads no reference model.
        aggregation: ``token_mean`` (DAPO), ``seq_mean_token_mean`` (GRPO) or
            ``seq_mean_token_sum_norm`` (Dr. GRPO).
        grad_clip: gradient-norm clip per optimiser step (0 disables).
        logprob_chunk_size: sequence positions per chunk when computing log-probs, so the
            full batch × length × vocab logits never exist at once.
    """

    minibatch_size: int = 64
    micro_batch_size: int | None = None
    micro_batch_tokens: int | None = None
    share_prompts: bool = True
    skip_zero_advantage: bool = True
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = 3.0
    kl_coef: float = 0.0
    aggregation: Aggregation = "token_mean"
    grad_clip: float = 1.0
    logprob_chunk_size: int = 256

    def __post_init__(self) -> None:
        for name in ("minibatch_size", "micro_batch_size", "micro_batch_tokens", "logprob_chunk_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"model.update.{name} must be >= 1 (or null for no limit), got {value}")
        for name in ("grad_clip", "kl_coef"):
            if getattr(self, name) < 0:
                raise UserError(f"model.update.{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        for name in ("clip_low", "clip_high"):
            value = getattr(self, name)
            if not value >= 0:
                raise UserError(f"model.update.{name} must be >= 0 (the PPO clip range ε; 0.2 is usual), got {value}")
        if self.clip_low >= 1:
            raise UserError(
                f"model.update.clip_low must be < 1 (the ratio is clipped at 1 - clip_low, which must stay positive), "
                f"got {self.clip_low}; 0.2 is usual"
            )
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise UserError(
                f"model.update.dual_clip must be > 1 (the dual-clip constant c; 3 is usual), got {self.dual_clip}; "
                "or null to turn it off"
            )


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
class RewardsSettings:
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


@dataclass
class LoraSettings:
    """LoRA adapters through PEFT (``model.lora``; None = train every weight): PEFT's
    ``LoraConfig``, the fields users set.

    Attributes:
        rank: the adapters' rank r.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapters' input (0 keeps behaviour and training log-probs equal).
        target_modules: module names to adapt, or ``"all-linear"`` (every linear layer but the
            LM head).
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | str = field(default="all-linear")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise UserError(f"model.lora.rank must be >= 1, got {self.rank}")


GROUPS: dict[str, type] = {
    "sampling": SamplingSettings,
    "update": UpdateSettings,
    "optimizer": OptimizerSettings,
    "rewards": RewardsSettings,
    "evaluation": EvaluationSettings,
    "lora": LoraSettings,
}
"""Each ``model:`` group: its YAML key (= ``PolicyModule``'s argument and attribute) → its class."""

RENAMED = {
    "lit_attn.ppo.PPOSettings": UpdateSettings,
    "lit_attn.settings.RewardSettings": RewardsSettings,
    "lit_attn.lora.LoraSettings": LoraSettings,
}
"""Where checkpoints written before issue 22 name a group's class → the class now."""


def allow_in_checkpoints(*classes: type, renamed: dict[str, type] | None = None) -> None:
    """Let ``torch.load(weights_only=True)`` (Lightning's resume) rebuild these settings from a
    checkpoint's hyper-parameters; ``renamed`` maps a class's former import path to the class."""
    torch.serialization.add_safe_globals([*classes, *((cls, path) for path, cls in (renamed or {}).items())])


allow_in_checkpoints(*GROUPS.values(), renamed=RENAMED)
