"""Warm start: supervised fine-tuning on reference solutions — how the shipped model is made.

The embedded default policy is a tiny Qwen2 with a character-level tokenizer, trained from
scratch here on the built-in task's reference solutions, then exported to
``lit_attn/default_model`` (safetensors + tokenizer files). Reproduce it::

    python -m lit_attn sft --config configs/sft.yaml

The loss is next-token cross-entropy on the solution tokens only (prompt tokens are masked).
Validation reports greedy held-out pass@1, the number RL later starts from.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning import LightningModule
from torchmetrics import MeanMetric

from lit_attn.errors import UserError
from lit_attn.evaluation import greedy_pass_at_1
from lit_attn.models import build_tiny_model, load_policy
from lit_attn.rewards import RewardSet
from lit_attn.tokenizer import build_char_tokenizer


class SFTModule(LightningModule):
    """Supervised warm start of a causal LM on ``prompt`` → ``solution`` pairs.

    Args:
        name_or_path: start from this local model; None builds a fresh tiny model with the
            character-level tokenizer from the size arguments below.
        architecture: fresh model's architecture.
        hidden_size: fresh model's width.
        num_layers: fresh model's decoder layers.
        num_heads: fresh model's query heads.
        num_kv_heads: fresh model's key/value heads (grouped-query attention; qwen2/llama).
        intermediate_size: fresh model's MLP width.
        max_positions: fresh model's context length.
        batch_size: examples per optimiser step (the data module's batch size).
        lr: peak AdamW learning rate.
        warmup_steps: linear warm-up steps.
        schedule: after warm-up, ``constant`` (stopping at step N equals a run with
            max_steps=N, so any checkpoint of a long run is reproducible) or ``cosine`` decay to
            10% of ``lr`` at max_steps.
        weight_decay: AdamW weight decay.
        verifier: reward function that decides a correct answer (import string).
        val_max_new_tokens: completion length limit for validation.
        val_batch_size: prompts per validation generate call.
        seed: seed of the fresh model's initialisation.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        architecture: Literal["qwen2", "llama", "gpt2"] = "qwen2",
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        intermediate_size: int = 384,
        max_positions: int = 256,
        batch_size: int = 64,
        lr: float = 3e-3,
        warmup_steps: int = 100,
        schedule: Literal["constant", "cosine"] = "constant",
        weight_decay: float = 0.01,
        verifier: str = "lit_attn.rewards.task_reward",
        val_max_new_tokens: int = 64,
        val_batch_size: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if name_or_path is None:
            self.tokenizer = build_char_tokenizer()
            self.model = build_tiny_model(
                architecture, seed=seed, vocab_size=len(self.tokenizer), hidden_size=hidden_size,
                num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
                intermediate_size=intermediate_size, max_positions=max_positions,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )
        else:
            self.model, self.tokenizer = load_policy(name_or_path)
        self.verifier = RewardSet([verifier]).funcs[0]
        self.val_pass = MeanMetric(nan_strategy="ignore")

    def encode(self, batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``prompt + solution + eos`` ids, attention mask, and labels (-100 on prompt/pad)."""
        ids, labels = [], []
        for i, rec in enumerate(batch):
            if not rec.get("solution"):
                raise UserError(
                    f"record {i} has no 'solution' column; supervised warm start needs reference solutions"
                )
            p = self.tokenizer(rec["prompt"])["input_ids"]
            s = self.tokenizer(rec["solution"], add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            ids.append(p + s)
            labels.append([-100] * len(p) + s)
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=self.device)
        target = torch.tensor([y + [-100] * (width - len(y)) for y in labels], device=self.device)
        return input_ids, mask, target

    def training_step(self, batch: list[dict], batch_idx: int) -> torch.Tensor:
        input_ids, mask, labels = self.encode(batch)
        loss = self.model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        scores, completions = greedy_pass_at_1(
            self.model, self.tokenizer, batch, self.verifier,
            max_new_tokens=self.hparams.val_max_new_tokens, batch_size=self.hparams.val_batch_size,
        )
        self.val_pass.update(scores.to(self.device))

    def on_validation_epoch_end(self) -> None:
        accuracy = self.val_pass.compute()
        self.val_pass.reset()
        self.log("val/pass@1", accuracy, prog_bar=True)
        self.print(f"step {self.global_step}: held-out pass@1 {accuracy.item():.3f}")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(self.trainer.max_steps, 1) if self.trainer.max_steps > 0 else 10_000

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            if hp.schedule == "constant":
                return 1.0
            progress = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
