"""Warm start: supervised fine-tuning on reference solutions — how the shipped model is made.

The embedded default policy is a tiny Qwen2 with a character-level tokenizer (one token per
fact key ``m=``), trained from scratch here on the warm-start curriculum of
:mod:`lit_attn.tasks.warm_start` (recall drills, task chains, long contexts), then exported to
``lit_attn/default_model`` (safetensors + tokenizer files). Reproduce it::

    python -m lit_attn sft --config lit_attn/configs/sft.yaml

The loss is next-token cross-entropy on the solution tokens only (prompt tokens are masked),
plus, with ``lookup_supervision > 0``, the lookup-supervision loss of
:func:`lit_attn.lookup_loss.lookup_attention_loss` on ``lookup_heads`` heads of one layer
(docs/default_model.md).
Validation reports, per held-out set: greedy pass@1, teacher-forced lookup accuracy, and the
attention mass on the right fact at each lookup — of the supervised heads and of all heads.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning import LightningModule
from torchmetrics import MeanMetric

from lit_attn.attention.capture import CapturedLayer, capture_qk
from lit_attn.errors import UserError
from lit_attn.evaluation import greedy_pass_at_1
from lit_attn.models import build_tiny_model, check_head_sizes, load_policy
from lit_attn.rewards import RewardSet
from lit_attn.tokenizer import FACT_KEYS, build_char_tokenizer
from lit_attn.attention.steps import STEP_DELIMITER
from lit_attn.lookup_loss import context_hygiene_loss, fact_span, lookup_attention_loss, lookup_targets


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
        lookup_supervision: weight of the lookup-supervision loss (0 = plain SFT).
        lookup_layer: the supervised heads' layer (negative counts from the last).
        lookup_heads: how many heads of that layer are supervised (heads ``0 .. n-1``).
        context_hygiene: weight of a loss that keeps every head, at solution positions that
            are not lookups, from attending to the context texts (0 = off): retrieval heads
            read the context when they retrieve and otherwise look elsewhere. Without it the
            heads spread attention over all facts at the other ~60 solution positions, and an
            average over every head and position (AttnTrace) found the needed facts at chance
            with 20 distractors (docs/default_model.md).
        context_hygiene_from: the first step with the context-hygiene loss: the shipped model
            learns its retrieval heads, the task and the arithmetic first, then the hygiene
            (docs/default_model.md).
        context_hygiene_lr: the learning rate from ``context_hygiene_from`` on (constant); the
            schedule above then ends at ``context_hygiene_from``. None = one schedule over all
            ``max_steps``.
        single_head_steps: the first steps supervise head 0 only: measured here, eight heads
            supervised from the start all settled on a uniform spread over the facts' values
            and the lookup did not form within 500 steps; one head forms it within 300, and
            the other heads then follow it quickly.
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
        max_positions: int = 1024,
        batch_size: int = 64,
        lr: float = 3e-3,
        warmup_steps: int = 100,
        schedule: Literal["constant", "cosine"] = "constant",
        weight_decay: float = 0.01,
        lookup_supervision: float = 0.0,
        lookup_layer: int = 1,
        lookup_heads: int = 1,
        single_head_steps: int = 0,
        context_hygiene: float = 0.0,
        context_hygiene_from: int = 0,
        context_hygiene_lr: float | None = None,
        verifier: str = "lit_attn.rewards.task_reward",
        val_max_new_tokens: int = 64,
        val_batch_size: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if name_or_path is None:
            check_head_sizes(hidden_size, num_heads, None if architecture == "gpt2" else num_kv_heads, prefix="model.")
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
        layers = self.model.config.num_hidden_layers
        heads = self.model.config.num_attention_heads
        if not -layers <= lookup_layer < layers or not 1 <= lookup_heads <= heads:
            raise UserError(
                f"model.lookup_layer={lookup_layer} / lookup_heads={lookup_heads} do not fit the model "
                f"({layers} layers of {heads} heads); pick a layer in [-{layers}, {layers}) and 1..{heads} heads"
            )
        self.lookup_layer = lookup_layer % layers
        self.key_ids = {i for i in self.tokenizer.convert_tokens_to_ids(list(FACT_KEYS)) if i != self.tokenizer.unk_token_id}
        delimiter = self.tokenizer.convert_tokens_to_ids(STEP_DELIMITER)
        self.delimiter_id = None if delimiter == self.tokenizer.unk_token_id else delimiter
        self.newline_ids = {i for i in self.tokenizer.convert_tokens_to_ids(["\n", "\n\n"]) if i != self.tokenizer.unk_token_id}
        if lookup_supervision > 0 and not self.key_ids:
            raise UserError(
                "model.lookup_supervision needs a tokenizer with one token per fact key (a=, b=, ...); "
                "use the built-in tokenizer (name_or_path: null) or set lookup_supervision: 0"
            )
        self.val_metrics: dict[str, MeanMetric] = {}

    def encode(self, batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``prompt + solution + eos`` ids, attention mask, and labels (-100 on prompt/pad)."""
        input_ids, mask, labels, _ = self.encode_lookups(batch)
        return input_ids, mask, labels

    def encode_lookups(self, batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`encode` plus the batch's lookups: a ``(3, L)`` tensor of (row, query, source)."""
        ids, labels, lookups = [], [], []
        for i, rec in enumerate(batch):
            if not rec.get("solution"):
                raise UserError(
                    f"record {i} has no 'solution' column; supervised warm start needs reference solutions"
                )
            p = self.tokenizer(rec["prompt"])["input_ids"]
            s = self.tokenizer(rec["solution"], add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            ids.append(p + s)
            labels.append([-100] * len(p) + s[: self._known_length(rec, s)])
            labels[-1] += [-100] * (len(ids[-1]) - len(labels[-1]))
            lookups += [(i, q, src) for q, src in lookup_targets(p + s, len(p), self.key_ids, self.delimiter_id)]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=self.device)
        target = torch.tensor([y + [-100] * (width - len(y)) for y in labels], device=self.device)
        found = torch.tensor(lookups, dtype=torch.long, device=self.device).T if lookups else torch.zeros(3, 0, dtype=torch.long, device=self.device)
        return input_ids, mask, target, found

    def _known_length(self, record: dict, solution_ids: list[int]) -> int:
        """How much of a solution can be learned: all of it, or, when the record's context
        lacks facts (``absent``, :func:`lit_attn.tasks.warm_start.drop_needed_facts`), up to and
        including the first key of a missing fact (what follows depends on a value the
        context does not hold)."""
        if not record.get("absent"):
            return len(solution_ids)
        missing = set(self.tokenizer.convert_tokens_to_ids([f"{name}=" for name in record["absent"]]))
        return next((i + 1 for i, t in enumerate(solution_ids) if t in missing), len(solution_ids))

    def lookup_forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None, lookups: torch.Tensor, heads: slice,
        layers: set[int] | None = None, log: bool = False,
    ) -> tuple[Any, dict[int, torch.Tensor]]:
        """One forward that also returns attention rows, through
        :func:`lit_attn.attention.capture.capture_qk` (the forward itself runs sdpa; only the
        rows asked for are ever formed).

        Returns the model output and, per layer of ``layers`` (default all), the attention
        ``(L, len(heads), T)`` of ``heads`` at each of the batch's ``L`` lookup queries (the
        query of lookup ``j`` in its own batch row; log-probabilities with ``log``). ``input_ids`` must be right-padded: with a
        causal mask padding never reaches a real position, so no attention mask is passed and
        the captured rows stay exact.
        """
        queries, query_index = torch.unique(lookups[1], return_inverse=True)
        attention: dict[int, torch.Tensor] = {}

        def consumer(layer: CapturedLayer) -> None:
            if queries.numel() and (layers is None or layer.layer_idx in layers):
                attention[layer.layer_idx] = layer.attention_rows(queries, heads=heads, log=log)[lookups[0], :, query_index]

        with capture_qk(self.model, consumer):
            out = self.model(input_ids=input_ids, labels=labels, use_cache=False)
        return out, attention

    def training_step(self, batch: list[dict], batch_idx: int) -> torch.Tensor:
        input_ids, mask, labels, lookups = self.encode_lookups(batch)
        weight = self.hparams.lookup_supervision
        # Context hygiene needs every head's rows at every solution position: the subtotal mode's
        # long solutions (no context lookups but the facts', already supervised) skip it.
        hygiene_batch = not any(rec.get("mode") == "subtotal" for rec in batch)
        if hygiene_batch and self.hparams.context_hygiene > 0 and self.global_step >= self.hparams.context_hygiene_from:
            out, lookup, hygiene = self.hygiene_forward(batch, input_ids, mask, labels, lookups)
            self.log("train/lookup_loss", lookup, batch_size=len(batch))
            self.log("train/context_hygiene_loss", hygiene, batch_size=len(batch))
            loss = out.loss + weight * lookup + self.hparams.context_hygiene * hygiene
        elif weight > 0:
            heads = slice(0, 1 if self.global_step < self.hparams.single_head_steps else self.hparams.lookup_heads)
            out, attention = self.lookup_forward(input_ids, labels, lookups, heads, {self.lookup_layer}, log=True)
            if self.lookup_layer in attention:
                lookup = lookup_attention_loss(attention[self.lookup_layer], lookups[2], log=True)
            else:  # no lookups in this batch
                lookup = out.loss * 0.0
            self.log("train/lookup_loss", lookup, batch_size=len(batch))
            loss = out.loss + weight * lookup
        else:
            out = self.model(input_ids=input_ids, attention_mask=mask, labels=labels)
            loss = out.loss
        self.log("train/loss", out.loss, prog_bar=True, batch_size=len(batch))
        return loss

    def hygiene_forward(
        self, batch: list[dict], input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, lookups: torch.Tensor
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One forward with every head's attention rows at every solution position: the lookup
        loss (supervised heads, lookup rows) and the context-hygiene loss (all heads, the other
        solution rows — also those after the key of a fact the context lacks, whose tokens are
        not learned). Right padding, no attention mask (see :meth:`lookup_forward`)."""
        prompt_lengths = (labels != -100).int().argmax(-1)  # a solution's first token is always learned
        lengths = mask.sum(-1)
        context_end = torch.tensor(
            [len(self.tokenizer("\n".join(rec["contexts"]) + "\n")["input_ids"]) if rec.get("contexts") else 0 for rec in batch],
            device=self.device,
        )
        start, width = int(prompt_lengths.min()), input_ids.shape[1]
        rows = torch.arange(start, width, device=self.device)
        keep = (rows[None, :] >= prompt_lengths[:, None]) & (rows[None, :] < lengths[:, None])
        keep[lookups[0], lookups[1] - start] = False
        attention: dict[int, torch.Tensor] = {}

        def consumer(layer: CapturedLayer) -> None:
            attention[layer.layer_idx] = layer.attention_rows(slice(start, width))

        with capture_qk(self.model, consumer):
            out = self.model(input_ids=input_ids, labels=labels, use_cache=False)
        at_lookups = attention[self.lookup_layer][lookups[0], : self.hparams.lookup_heads, lookups[1] - start]
        lookup = lookup_attention_loss(at_lookups, lookups[2])
        hygiene = torch.stack([context_hygiene_loss(a, keep, context_end) for a in attention.values()]).mean()
        return out, lookup, hygiene

    def _metric(self, name: str) -> MeanMetric:
        if name not in self.val_metrics:
            self.val_metrics[name] = MeanMetric(nan_strategy="ignore").to(self.device)
        return self.val_metrics[name]

    def validation_step(self, batch: list[dict], batch_idx: int, dataloader_idx: int = 0) -> None:
        names = getattr(self.trainer.datamodule, "val_sets", None) if self.trainer.datamodule is not None else None
        prefix = f"val/{names[dataloader_idx]}/" if names else "val/"
        scores, _ = greedy_pass_at_1(
            self.model, self.tokenizer, batch, self.verifier,
            max_new_tokens=self.hparams.val_max_new_tokens, batch_size=self.hparams.val_batch_size,
        )
        self._metric(prefix + "pass@1").update(scores.to(self.device))
        if names:
            self._metric("val/pass@1").update(scores.to(self.device))
        if batch and batch[0].get("solution"):
            self.lookup_metrics(batch, prefix)

    @torch.no_grad()
    def lookup_metrics(self, batch: list[dict], prefix: str) -> None:
        """Teacher-forced lookup accuracy and attention mass on the right fact's text."""
        input_ids, _, _, lookups = self.encode_lookups(batch)
        if lookups.shape[1] == 0:
            return
        heads = self.model.config.num_attention_heads
        out, attention = self.lookup_forward(input_ids, None, lookups, slice(0, heads))
        rows, queries, sources = lookups
        predicted = out.logits.argmax(-1)[rows, queries]
        self._metric(prefix + "lookup_accuracy").update((predicted == input_ids[rows, sources]).float())
        span_mask = torch.zeros(lookups.shape[1], input_ids.shape[1], device=self.device)
        for j, (r, src) in enumerate(zip(rows.tolist(), sources.tolist())):
            start, end = fact_span(input_ids[r].tolist(), src, self.newline_ids)
            span_mask[j, start:end] = 1.0
        per_layer = {layer: (rows_attn * span_mask[:, None, :]).sum(-1) for layer, rows_attn in attention.items()}  # (L, heads)
        self._metric(prefix + "fact_attention").update(per_layer[self.lookup_layer][:, : self.hparams.lookup_heads].mean(-1))
        self._metric(prefix + "fact_attention_all_heads").update(torch.stack(list(per_layer.values())).mean(dim=(0, 2)))

    def on_validation_epoch_end(self) -> None:
        for name, metric in sorted(self.val_metrics.items()):
            value = metric.compute()
            metric.reset()
            self.log(name, value, prog_bar=name == "val/pass@1", add_dataloader_idx=False)
            self.print(f"step {self.global_step}: {name} {value.item():.3f}")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(self.trainer.max_steps, 1) if self.trainer.max_steps > 0 else 10_000
        phase = hp.context_hygiene_lr is not None and hp.context_hygiene > 0 and hp.context_hygiene_from > 0
        if phase:  # the schedule runs up to the hygiene phase, which has a learning rate of its own
            total = hp.context_hygiene_from

        def factor(step: int) -> float:
            if phase and step >= hp.context_hygiene_from:
                return hp.context_hygiene_lr / hp.lr
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            if hp.schedule == "constant":
                return 1.0
            progress = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
