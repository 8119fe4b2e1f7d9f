"""PolicyModule: the LightningModule that trains a causal LM with group-relative RL.

One training step (manual optimisation)::

    prompts (prompts_per_step) → generate group_size completions each (KV cache)
    → rewards (reward functions, weighted) → group advantages (r - mean) / std
    → behaviour log-probs under the current weights (one no-grad forward)
    → PPO clip-higher updates over minibatches of ``minibatch_size`` completions
    → metrics under TRL's names.

This is GRPO with the DAPO-style loss of docs/attnrl.md §7-8. Run it::

    python -m lit_attn fit --config lit_attn/configs/grpo.yaml

Batch arithmetic is explicit: a step trains on ``prompts_per_step × group_size`` completions,
split into minibatches of ``minibatch_size`` completions (one optimiser step each).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torchmetrics import MeanMetric

from lit_attn.errors import UserError
from lit_attn.evaluation import greedy_pass_at_1, sample_table
from lit_attn.experience import Experience, rollout_metrics
from lit_attn.lora import adapters_off_reference, add_adapters
from lit_attn.models import context_length, load_policy
from lit_attn.ppo import Reference, frozen_reference, ppo_update
from lit_attn.records import check_spelling, validate_prompt_lengths
from lit_attn.rewards import RewardSet
from lit_attn.rollout import Rollout, pad_id
from lit_attn.sampling import generate, sample_continuations
from lit_attn.seeding import mix_seed
from lit_attn.settings import (
    EvaluationSettings,
    LoraSettings,
    OptimizerSettings,
    RewardsSettings,
    SamplingSettings,
    UpdateSettings,
)
from lit_attn.strategy import check_strategy, reduce_over_ranks

MAX_SKIPPED_STEPS = 3
"""Training steps in a row in which every completion was skipped (every reward function
returned None for it) after which the run stops with a :class:`~lit_attn.errors.UserError`."""


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: ``(r - mean) / std`` within each group of ``group_size`` rows.

    Rows must be grouped by prompt (``[p0, p0, …, p1, p1, …]``). NaN rewards (skipped) are
    left out of the group statistics and get advantage 0. ``scale=False`` gives Dr. GRPO's
    unscaled ``r - mean``.
    """
    r = rewards.view(-1, group_size)
    valid = ~torch.isnan(r)
    count = valid.sum(-1, keepdim=True).clamp(min=1)
    filled = torch.where(valid, r, torch.zeros_like(r))
    mean = filled.sum(-1, keepdim=True) / count
    var = torch.where(valid, (r - mean) ** 2, torch.zeros_like(r)).sum(-1, keepdim=True) / (count - 1).clamp(min=1)
    adv = r - mean
    if scale:
        adv = adv / (var.sqrt() + eps)
    return torch.where(valid, adv, torch.zeros_like(adv)).view(-1)


class PolicyModule(LightningModule):
    """Group-relative policy optimisation of a Hugging Face causal LM.

    Args:
        name_or_path: local directory of a Hugging Face causal LM, or ``"default"`` for the
            shipped tiny model. Never downloaded.
        trust_remote_code: allow the model directory's own Python code (off by default).
        dtype: parameter dtype (``float32``, ``bfloat16``); for mixed precision keep float32 and
            set ``trainer.precision: bf16-mixed``.
        lora: train LoRA adapters (PEFT) instead of every weight; None = full fine-tuning. The
            KL reference is then the model with its adapters off (no second copy).
        gradient_checkpointing: recompute each layer's activations in the backward pass
            (less memory, about a third more compute).
        sampling: how training completions are sampled (G, prompts per step, length, temperature).
        update: the PPO update (minibatches, micro-batches, clipping, KL, loss aggregation).
        optimizer: AdamW's learning rate and weight decay.
        rewards: the reward functions, their weights, and whether advantages are std-scaled.
        evaluation: greedy held-out evaluation and predictions.
        disable_dropout: set every dropout probability to 0 so that behaviour and training
            log-probs agree (as TRL does).
        seed: seed of the minibatch shuffling and of the GRPO rollouts (private generators seeded
            from (seed, step, rank): resumable, and different on every rank).
    """

    def __init__(
        self,
        name_or_path: str = "default",
        trust_remote_code: bool = False,
        dtype: str = "float32",
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool = False,
        sampling: SamplingSettings = SamplingSettings(),
        update: UpdateSettings = UpdateSettings(),
        optimizer: OptimizerSettings = OptimizerSettings(),
        rewards: RewardsSettings = RewardsSettings(),
        evaluation: EvaluationSettings = EvaluationSettings(),
        disable_dropout: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_batch_arithmetic(sampling, update.minibatch_size)
        # each settings group under its config key (lit_attn.settings.GROUPS)
        self.sampling, self.update, self.optimizer, self.rewards = sampling, update, optimizer, rewards
        self.evaluation, self.lora, self.seed = evaluation, lora, seed
        self.automatic_optimization = False
        self.model, self.tokenizer = load_policy(name_or_path, trust_remote_code=trust_remote_code, dtype=dtype)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # With LoRA, self.model stays the Hugging Face model (its layers now carry the adapters);
        # the PeftModel around it is kept outside the module tree, so no weight is registered twice.
        object.__setattr__(self, "_peft", add_adapters(self.model, lora) if lora is not None else None)
        self.model.train()
        if disable_dropout:
            _disable_dropout(self.model)
        self.ref_model = None
        if update.kl_coef > 0 and self._peft is None:
            self.ref_model, _ = load_policy(name_or_path, trust_remote_code=trust_remote_code, dtype=dtype)
            # Frozen, but in train mode like every module of this LightningModule (Lightning warns about
            # modules in eval mode when fit starts): ppo runs it in eval mode for its log-probs.
            self.ref_model.requires_grad_(False).train()
            _disable_dropout(self.ref_model)
        self.reward_set = RewardSet(rewards.functions, rewards.weights)
        self.scale_rewards = rewards.scale
        self.tokens_generated = 0
        self.pass_at_1 = torch.nn.ModuleDict(
            {split: MeanMetric(nan_strategy="ignore") for split in ("val", "test")}
        )
        self.experience_source: Any = None
        """Set by an exploration callback in its ``setup``; None = GRPO."""
        self._checked: tuple[int, str] | None = None
        self._scored = [0, 0]  # this step's completions: scored, all (score() counts them)
        self._all_skipped_in_row = 0

    # ------------------------------------------------------------------ setup

    def check_data(self, datamodule: object, stage: str) -> None:
        """Fail before any output is written if a prompt plus its completion budget exceeds the
        context, or if a prompt or context text holds characters the tokenizer cannot spell.
        Runs once per data module and stage (the CLI calls it before the trainer writes
        anything; ``setup`` calls it for a module driven without the CLI)."""
        if datamodule is None or not hasattr(datamodule, "records") or self._checked == (id(datamodule), stage):
            return
        if hasattr(datamodule, "use_tokenizer"):  # chat prompts are rendered with this model's template (lit_attn.chat)
            datamodule.use_tokenizer(self.tokenizer)
        budget = (context_length(self.model) or 1 << 30) - max(self.sampling.max_new_tokens, self.eval_max_new_tokens)
        for split, records in datamodule.records(stage).items():
            check_spelling(records, self.tokenizer, path_hint=split)
            validate_prompt_lengths(records, self.tokenizer, budget, path_hint=split)
        self._checked = (id(datamodule), stage)

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer, "PolicyModule")
        self.check_data(getattr(self.trainer, "datamodule", None), stage)

    @property
    def peft_model(self) -> torch.nn.Module | None:
        """The ``PeftModel`` around ``model`` when training LoRA adapters (None otherwise)."""
        return self._peft

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # LoRA: the adapters only
        settings = self.optimizer
        return torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)

    # ------------------------------------------------------------------ training

    # What an exploration callback needs of its host: lit_attn.exploration.host.REQUIRED.

    @property
    def group_size(self) -> int:
        """Initial samples per prompt (G)."""
        return self.sampling.group_size

    @property
    def max_new_tokens(self) -> int:
        """Completion length limit during training."""
        return self.sampling.max_new_tokens

    @property
    def rollout_batch_size(self) -> int | None:
        """Most sequences sampled or scored without gradients at once (None = no limit)."""
        return self.sampling.rollout_batch_size

    @property
    def temperature(self) -> float:
        """Sampling temperature (log-probs use the same one)."""
        return self.sampling.temperature

    @property
    def eval_max_new_tokens(self) -> int:
        """Completion length limit of evaluation and predictions."""
        return self.evaluation.max_new_tokens or self.sampling.max_new_tokens

    def score(self, records: list[dict], completions: list[str]) -> torch.Tensor:
        """Weighted rewards of ``completions[i]`` for the prompt of ``records[i]`` (NaN = skipped)."""
        columns = {k: [r.get(k) for r in records] for k in (records[0] if records else {}) if k != "prompt"}
        rewards = self.reward_set([r["prompt"] for r in records], completions, **columns)
        self._scored[0] += int((~torch.isnan(rewards)).sum())
        self._scored[1] += len(rewards)
        return rewards.to(self.device)

    def rollout(self, records: list[dict]) -> tuple[Rollout, torch.Tensor]:
        """Sample the group for each prompt and score it: (rollout, rewards (N,))."""
        sampling = self.sampling
        prompt_ids = [list(self.tokenizer(r["prompt"])["input_ids"]) for r in records]
        # A private generator per step (and rank): a run resumed from a checkpoint samples what
        # the uninterrupted run sampled; the global RNG, which no checkpoint holds, is not used.
        seed = mix_seed(self.seed, self.global_step, self.global_rank)
        rollout = sample_continuations(
            self.model, self.tokenizer, prompt_ids, sampling.group_size, max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature, generator_seed=seed, batch_size=sampling.rollout_batch_size,
        ).to_rollout(pad_id(self.tokenizer))
        rewards = self.score([r for r in records for _ in range(sampling.group_size)], rollout.completions)
        return rollout, rewards

    def grpo_experience(self, records: list[dict]) -> Experience:
        """GRPO: G samples per prompt, advantages ``(r - mean) / std`` per group."""
        G = self.sampling.group_size
        rollout, rewards = self.rollout(records)
        mask = rollout.completion_mask * (~torch.isnan(rewards)).long().unsqueeze(-1)  # skipped don't train
        return Experience(
            input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, prompt_length=rollout.prompt_length,
            completion_mask=mask, advantages=group_advantages(rewards, G, scale=self.scale_rewards),
            temperature=self.sampling.temperature, generated_tokens=int(rollout.lengths.sum()),
            metrics={**rollout_metrics(rewards, G, rollout.lengths, rollout.clipped), **self.reward_set.last_stats},
        )

    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        source = self.experience_source
        self._scored = [0, 0]
        experience = source.make_experience(self, batch) if source is not None else self.grpo_experience(batch)
        self.check_skipped(experience)
        # With nothing to train on (the first step of the one-step off-policy schedule, or every
        # prompt filtered out) ppo_update still steps the optimiser (no gradients: weights and
        # AdamW's state untouched), so trainer.max_steps always ends the run, and under DDP it
        # runs as many backward passes as the other ranks.
        totals = self.update_policy(experience)
        self.log_step_metrics(experience, totals)

    def check_skipped(self, experience: Experience) -> None:
        """Log ``completions/skipped_ratio``, the share of this step's completions (all ranks) that
        no reward function scored; a step with every completion skipped warns, and
        :data:`MAX_SKIPPED_STEPS` of them in a row stop the run (the same verdict on every rank)."""
        scored, total = reduce_over_ranks(self.trainer, self._scored, "sum")
        if total == 0:  # nothing was sampled this step
            return
        experience.metrics["completions/skipped_ratio"] = (total - scored) / total
        if scored:
            self._all_skipped_in_row = 0
            return
        self._all_skipped_in_row += 1
        names = ("reward functions " if len(self.reward_set) > 1 else "reward function ") + ", ".join(self.reward_set.names)
        if self._all_skipped_in_row >= MAX_SKIPPED_STEPS:
            raise UserError(
                f"training stopped at step {self.global_step}: every completion was skipped in {MAX_SKIPPED_STEPS} "
                f"steps in a row (the {names} returned None for all of them); check that they "
                "find the columns they need (e.g. answer) and return a float where they can judge a completion"
            )
        rank_zero_warn(
            f"step {self.global_step}: every completion was skipped (the {names} returned None "
            f"for all of them): nothing to learn from ({self._all_skipped_in_row} in a row; {MAX_SKIPPED_STEPS} stop the run)"
        )

    def update_policy(self, experience: Experience) -> dict[str, float]:
        """PPO clip-higher updates over shuffled minibatches (:func:`lit_attn.ppo.ppo_update`)."""
        # minibatch order from (seed, step, rank): a resumed run shuffles as the uninterrupted one did
        shuffle = torch.Generator().manual_seed(mix_seed(self.seed, self.global_step, self.global_rank, 1))
        return ppo_update(self, self.model, experience, self.update, reference=self.reference(), generator=shuffle)

    def reference(self) -> Reference | None:
        """The KL penalty's reference policy (:data:`lit_attn.ppo.Reference`): with LoRA the model
        with its adapters off, else the frozen initial copy (``ref_model``); None without a KL term."""
        if self._peft is not None:
            return adapters_off_reference(self._peft, self.model) if self.update.kl_coef > 0 else None
        return frozen_reference(self.ref_model) if self.ref_model is not None else None

    def log_step_metrics(self, experience: Experience, totals: dict[str, float]) -> None:
        """Log the step's metrics; under DDP they are global: counts (and generated tokens)
        summed over ranks, everything else averaged over the ranks that have it."""
        metrics = {**{k: float(v) for k, v in experience.metrics.items()}, **totals}
        generated = float(experience.generated_tokens)
        if self.trainer.world_size > 1:
            metrics, generated = merge_rank_metrics(metrics, generated, experience.count_metrics, self.trainer.world_size)
        self.tokens_generated += int(generated)
        n = max(experience.num_sequences, 1)
        if "reward" in metrics:
            self.log("reward", float(metrics.pop("reward")), prog_bar=True, batch_size=n)
        self.log_dict({k: float(v) for k, v in metrics.items()}, batch_size=n)
        self.log("tokens/generated", float(self.tokens_generated), batch_size=n, reduce_fx="max")

    # ------------------------------------------------------------------ evaluation

    @rank_zero_only
    def _log_text(self, tag: str, text: str) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(tag, text, global_step=self.global_step)

    def on_train_start(self) -> None:
        """``val/pass@1`` before the first step: the validation steps' own computation over this
        rank's share of the held-out set (``self.log`` is not allowed here, so it goes to the
        loggers directly)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not self.evaluation.validate_at_start or datamodule is None or not hasattr(datamodule, "val_records"):
            return
        records = shard(datamodule.val_records(), self.trainer.global_rank, self.trainer.world_size)
        size = self.evaluation.batch_size
        for index, start in enumerate(range(0, len(records), size)):
            self._eval_step(records[start : start + size], index, "val")
        accuracy = float(self.pass_at_1["val"].compute())  # synced over ranks
        self.pass_at_1["val"].reset()
        for logger in self.trainer.loggers:
            logger.log_metrics({"val/pass@1": accuracy}, step=self.global_step)
        self.print(f"held-out pass@1 before training: {accuracy:.3f}")

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _eval_step(self, batch: list[dict], batch_idx: int, prefix: str) -> None:
        scores, completions = greedy_pass_at_1(
            self.model, self.tokenizer, batch, self.reward_set.funcs[0],
            max_new_tokens=self.eval_max_new_tokens, batch_size=len(batch),
        )
        self.pass_at_1[prefix].update(scores.to(self.device))
        if batch_idx == 0:
            table = sample_table(batch, completions, scores, self.evaluation.num_sample_completions)
            self._log_text(f"{prefix}/samples", table)

    def _eval_epoch_end(self, prefix: str) -> None:
        metric = self.pass_at_1[prefix]
        self.log(f"{prefix}/pass@1", metric.compute(), prog_bar=True, sync_dist=True)  # already global: compute() syncs
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        prompts = [r["prompt"] for r in batch]
        rollout = generate(self.model, self.tokenizer, prompts, max_new_tokens=self.eval_max_new_tokens, do_sample=False)
        return [{"prompt": p, "completion": c} for p, c in zip(prompts, rollout.completions)]

    # ------------------------------------------------------------------ state

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lit_attn"] = {"tokens_generated": self.tokens_generated}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lit_attn", {})
        self.tokens_generated = state.get("tokens_generated", 0)


def merge_rank_metrics(
    metrics: dict[str, float], generated: float, counts: frozenset[str], world_size: int
) -> tuple[dict[str, float], float]:
    """Every rank's step metrics merged (a collective call): the keys in ``counts`` and the
    generated tokens summed, the other keys averaged over the ranks that report them (ranks
    may report different keys, e.g. a rank with nothing to train has no loss)."""
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, (metrics, generated))
    merged: dict[str, list[float]] = {}
    for rank_metrics, _ in gathered:
        for key, value in rank_metrics.items():
            merged.setdefault(key, []).append(value)
    out = {k: sum(v) if k in counts else sum(v) / len(v) for k, v in merged.items()}
    return out, sum(g for _, g in gathered)


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def shard(records: list, rank: int, world_size: int) -> list:
    """This rank's share of ``records`` (strided)."""
    return records[rank::world_size]


def check_batch_arithmetic(sampling: SamplingSettings, minibatch_size: int) -> None:
    """Fail early, with the fix, when the minibatch does not divide a step's completions."""
    total = sampling.completions_per_step
    if total % minibatch_size:
        divisors = [d for d in range(1, total + 1) if total % d == 0]
        near = sorted(divisors, key=lambda d: abs(d - minibatch_size))[:2]
        raise UserError(
            f"model.update.minibatch_size={minibatch_size} must divide sampling.prompts_per_step × "
            f"sampling.group_size = {sampling.prompts_per_step} × {sampling.group_size} = {total} completions per "
            f"step; use {' or '.join(map(str, sorted(near)))}"
        )
