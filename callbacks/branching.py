"""Tree exploration for RL training: AttnRL's AttentionBranchCallback and its baselines.

Add one of these to a run and the :class:`~lit_attn.PolicyModule` stops sampling plain GRPO
groups: every training step becomes the one-step off-policy schedule of docs/attnrl.md §5::

    python -m lit_attn fit --config configs/attnrl.yaml     # AttnRL (FCI branching + ADS)
    python -m lit_attn fit --config configs/treerl.yaml     # TreeRL (entropy branching)

At step m, with the current weights θ:

1. ONE sampling call (:func:`lit_attn.branching.sample_continuations`, prefix KV computed once
   per prefix): G initial responses for each prompt of batch m, and T continuations at every
   branch point chosen for batch m−1 at the previous step;
2. rewards for all of them; branch points of batch m chosen from the new responses (the
   subclass's rule: FCI for AttnRL, token entropy for TreeRL), kept as pending state;
3. the trees of batch m−1 (its responses from θ_{m−1}, its continuations from θ), tree
   advantages (docs/attnrl.md §6), the zero-advantage filter; PPO update on the root-to-leaf paths.

Every token keeps the log-prob of the policy that sampled it, so PPO's ratio is the only
off-policy correction. Adaptive sampling (docs/attnrl.md §4) decides how many responses per prompt are
branched, drops uninformative all-correct prompts, and adapts the prompt batch size.

Contract with the LightningModule (checked in ``setup``; :class:`~lit_attn.PolicyModule`
offers it, another RL module can too): attributes ``model`` (a Hugging Face causal LM),
``tokenizer``, ``group_size`` (G), ``max_new_tokens``, ``temperature``; a method
``score(records, completions) -> Tensor`` (one reward in [0, 1] per completion, NaN = none;
a response counts as correct at ``reward ≥ correct_threshold``); and an
``experience_source`` attribute that the callback sets to itself. The module's training step
then calls ``experience_source.make_experience(module, records)`` and trains on the
:class:`~lit_attn.experience.Experience` it returns (zero sequences at the very first step,
when there is no earlier batch to train on yet).

Prompt batch: the data loader's batch (``prompts_per_step`` records) joins a queue; a step
takes its current batch size ``B_m`` from the front. When ``B_m`` has grown past what the
queue holds, the missing prompts are drawn at random from the training dataset (the
callback's own generator). The queue keeps at most ``4 × prompts_per_step`` records; older
ones beyond that are dropped (counted in ``branching/prompts_skipped``). All of this state is in ``state_dict()``: a run
killed and resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lit_attn.attention import fci_scores_batch, find_think_end_step, split_steps
from lit_attn.attention.steps import DEFAULT_DELIMITER, Span
from lit_attn.branching import sample_continuations
from lit_attn.errors import UserError
from lit_attn.experience import Experience, pack_sequences, rollout_metrics
from lit_attn.exploration import (
    RunningMean,
    adaptive_batch_size,
    atb_branch_steps,
    choose_responses,
    early_branch_steps,
    entropy_branch_offsets,
    expansion_count,
    prompt_mean_fci,
)
from lit_attn.logprobs import token_logprobs
from lit_attn.models import eval_mode
from lit_attn.rollout import left_pad
from lit_attn.tree import Branch, ResponseRollout, all_leaves_equal, build_tree, paths

REQUIRED = ("model", "tokenizer", "group_size", "max_new_tokens", "temperature", "score", "experience_source")


@dataclass
class Response:
    """One sampled response (or continuation): its tokens, behaviour log-probs, reward, and the
    policy version (RL step) that sampled it; ``offsets`` are its chosen branch points."""

    tokens: list[int]
    logprobs: list[float]
    reward: float
    version: int
    offsets: list[int] = field(default_factory=list)


@dataclass
class PendingPrompt:
    """A prompt of the batch whose trees are built at the next step."""

    record: dict
    prompt_ids: list[int]
    responses: list[Response]


class BranchingCallback(Callback):
    """One-step off-policy tree exploration with adaptive sampling; subclasses pick branch points.

    Args:
        continuations: T, new continuations sampled at each branch point (paper: 2).
        num_points: branch points per expanded response (paper: 2).
        adaptive_sampling: docs/attnrl.md §4's ADS — expand ``round(exp(-z)·G)`` responses per prompt
            (incorrect-first rule), FCI filter for all-correct prompts. Off: every response is
            expanded (TreeRL).
        all_correct_expand: responses expanded for an all-correct prompt kept by the filter (paper: 3).
        adaptive_batch: adapt the prompt batch size B_m with ``batch_lambda`` (docs/attnrl.md §4).
        batch_lambda: λ of the batch-size update (paper: 0.9).
        target_sequences: B′, training sequences wanted per step; None = the loader's prompts
            per step × G × (1 + num_points × continuations), the paths an expanded response
            yields (the authors' B·G·5).
        max_batch_prompts: the largest prompt batch B_m may grow to (None = 4 × the loader's
            prompts per step). Prompts beyond what the loader gave are drawn at random from the
            training dataset when it is a map-style dataset of records batched by the loader;
            otherwise a step takes at most what the queue holds.
        train_unbranched: also train on responses that were not expanded, each as a one-node
            path with advantage 2·(r − V(root)). Off by default, as in the authors' code: they
            count only in V(root).
        correct_threshold: a reward at or above it counts as correct for ADS.
        seed: seed of this callback's own random choices and of the sampling of each step
            (so a resumed run samples exactly what the uninterrupted one would have).
    """

    def __init__(
        self,
        *,
        continuations: int = 2,
        num_points: int = 2,
        adaptive_sampling: bool = True,
        all_correct_expand: int = 3,
        adaptive_batch: bool = True,
        batch_lambda: float = 0.9,
        target_sequences: int | None = None,
        max_batch_prompts: int | None = None,
        train_unbranched: bool = False,
        correct_threshold: float = 1.0,
        seed: int = 0,
    ) -> None:
        for name, value in (("continuations", continuations), ("num_points", num_points)):
            if value < 1:
                raise UserError(f"{type(self).__name__}: {name} must be >= 1, got {value}")
        if not 0 <= batch_lambda <= 1:
            raise UserError(f"{type(self).__name__}: batch_lambda must be in [0, 1], got {batch_lambda} (paper: 0.9)")
        if target_sequences is not None and target_sequences < 1:
            raise UserError(f"{type(self).__name__}: target_sequences must be >= 1 or null, got {target_sequences}")
        if max_batch_prompts is not None and max_batch_prompts < 1:
            raise UserError(f"{type(self).__name__}: max_batch_prompts must be >= 1 or null, got {max_batch_prompts}")
        self.continuations = continuations
        self.num_points = num_points
        self.adaptive_sampling = adaptive_sampling
        self.all_correct_expand = all_correct_expand
        self.adaptive_batch = adaptive_batch
        self.batch_lambda = batch_lambda
        self.target_sequences = target_sequences
        self.max_batch_prompts = max_batch_prompts
        self.train_unbranched = train_unbranched
        self.correct_threshold = correct_threshold
        self.seed = seed
        # State (all of it in state_dict()).
        self.rl_step = 0
        self.batch_prompts: int | None = None
        self.queue: list[dict] = []
        self.pending: list[PendingPrompt] = []
        self.fci_mean = RunningMean()
        self.generator = torch.Generator().manual_seed(seed)
        self._logged_histograms: dict[str, torch.Tensor] = {}
        self._trainer: Trainer | None = None

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        missing = [name for name in REQUIRED if not hasattr(pl_module, name)]
        if missing:
            raise UserError(
                f"{type(self).__name__} needs the LightningModule to offer {', '.join(missing)}; "
                f"{type(pl_module).__name__} lacks them (see the contract in lit_attn/callbacks/branching.py)"
            )
        current = pl_module.experience_source
        if current is not None and current is not self:
            raise UserError(
                f"two exploration callbacks on one module ({type(current).__name__} and {type(self).__name__}); keep one"
            )
        pl_module.experience_source = self
        self._trainer = trainer

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if getattr(pl_module, "experience_source", None) is self:
            pl_module.experience_source = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero or not self._logged_histograms:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, values in self._logged_histograms.items():
                    if values.numel():
                        logger.experiment.add_histogram(tag, values, global_step=trainer.global_step)
        self._logged_histograms = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "rl_step": self.rl_step,
            "batch_prompts": self.batch_prompts,
            "queue": list(self.queue),
            "pending": [asdict(p) for p in self.pending],
            "fci_mean": asdict(self.fci_mean),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rl_step = state_dict["rl_step"]
        self.batch_prompts = state_dict["batch_prompts"]
        self.queue = list(state_dict["queue"])
        self.pending = [
            PendingPrompt(p["record"], p["prompt_ids"], [Response(**r) for r in p["responses"]])
            for p in state_dict["pending"]
        ]
        self.fci_mean = RunningMean(**state_dict["fci_mean"])
        self.generator.set_state(state_dict["generator"])

    # ------------------------------------------------------------------ subclass hook

    def choose_offsets(self, module: LightningModule, batch: list[PendingPrompt], expand: list[list[int]]) -> dict[str, Any]:
        """Fill ``response.offsets`` (sorted token offsets into the response) of the responses
        ``expand[p]`` of each prompt ``p``; return extra metrics. Subclasses implement it."""
        raise NotImplementedError

    def prompt_filter_scores(self, module: LightningModule, batch: list[PendingPrompt]) -> list[float] | None:
        """Per-prompt score for the all-correct filter (AttnRL: mean FCI); None = no filter."""
        return None

    # ------------------------------------------------------------------ one step

    def make_experience(self, module: LightningModule, records: list[dict]) -> Experience:
        """Sample, score, choose branch points, build last step's trees: what this step trains on."""
        step = self.rl_step
        records_now, skipped = self._take_prompts(records)
        tokenizer, G, T = module.tokenizer, module.group_size, self.continuations
        prompt_ids = [_encode(tokenizer, r["prompt"]) for r in records_now]

        # 1. one sampling call: G responses per new prompt + T continuations per pending branch point
        branch_prefixes: list[tuple[int, int, int]] = []  # (pending prompt, response, offset)
        for p, prompt in enumerate(self.pending):
            for i, response in enumerate(prompt.responses):
                branch_prefixes += [(p, i, off) for off in response.offsets]
        prefixes = prompt_ids + [
            self.pending[p].prompt_ids + self.pending[p].responses[i].tokens[:off] for p, i, off in branch_prefixes
        ]
        counts = [G] * len(prompt_ids) + [T] * len(branch_prefixes)
        # a continuation gets what is left of its response's length budget after the branch point
        budgets = [module.max_new_tokens] * len(prompt_ids) + [
            max(module.max_new_tokens - off, 1) for _, _, off in branch_prefixes
        ]
        sampled = sample_continuations(
            module.model, tokenizer, prefixes, counts, max_new_tokens=budgets,
            temperature=module.temperature, generator_seed=self.seed * 1_000_003 + step,
        )
        generated_tokens = int(sampled.lengths.sum())

        # 2. rewards of everything just sampled, in one call
        row_records, texts, rows_tokens, rows_logprobs = [], [], [], []
        for row in range(len(sampled)):
            src = int(sampled.prefix_index[row])
            new = sampled.new_tokens(row)
            n = len(new)
            lps = sampled.logprobs[row, :n].tolist()
            if src < len(prompt_ids):
                record, tokens = records_now[src], new
            else:
                p, i, off = branch_prefixes[src - len(prompt_ids)]
                record, tokens = self.pending[p].record, self.pending[p].responses[i].tokens[:off] + new
            row_records.append(record)
            texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
            rows_tokens.append(new)
            rows_logprobs.append(lps)
        rewards = module.score(row_records, texts).detach().float().cpu() if texts else torch.zeros(0)

        num_new = len(prompt_ids) * G
        new_batch = [
            PendingPrompt(record, ids, [
                Response(rows_tokens[p * G + g], rows_logprobs[p * G + g], _reward(rewards[p * G + g]), step)
                for g in range(G)
            ])
            for p, (record, ids) in enumerate(zip(records_now, prompt_ids))
        ]
        continuations_of: dict[tuple[int, int, int], list[Response]] = {}
        for row in range(num_new, len(sampled)):
            key = branch_prefixes[int(sampled.prefix_index[row]) - len(prompt_ids)]
            continuations_of.setdefault(key, []).append(
                Response(rows_tokens[row], rows_logprobs[row], _reward(rewards[row]), step)
            )

        # 3. branch points of batch m (pending for the next step)
        metrics: dict[str, float] = {}
        if new_batch:
            metrics.update(self._plan(module, new_batch))
            metrics.update(rollout_metrics(
                rewards[:num_new], G, sampled.lengths[:num_new], sampled.clipped[:num_new],
            ))

        # 4. trees of batch m-1, advantages, zero-advantage filter → training sequences
        experience, tree_metrics = self._trees(module, continuations_of)
        metrics.update(tree_metrics)
        metrics["branching/prompts_skipped"] = float(skipped)
        metrics["branching/batch_prompts"] = float(len(records_now))
        metrics["branching/continuations"] = float(len(sampled) - num_new)

        if self.adaptive_batch and self.pending:
            # B_m from the prompts actually trained this step (batch m-1) and what the filter left
            target = self.target_sequences or len(records) * G * (1 + self.num_points * T)
            grown = adaptive_batch_size(len(self.pending), target, experience.num_sequences, lam=self.batch_lambda)
            self.batch_prompts = min(grown, self.max_batch_prompts or 4 * max(len(records), 1))
        self.pending = new_batch
        self.rl_step += 1
        experience.generated_tokens = generated_tokens
        experience.metrics = metrics
        return experience

    def _take_prompts(self, records: list[dict]) -> tuple[list[dict], int]:
        self.queue.extend(records)
        if self.batch_prompts is None:
            self.batch_prompts = len(records)
        if len(self.queue) < self.batch_prompts:
            self.queue.extend(self._draw_prompts(self.batch_prompts - len(self.queue)))
        taken, self.queue = self.queue[: self.batch_prompts], self.queue[self.batch_prompts :]
        limit = 4 * max(len(records), 1)
        skipped = max(0, len(self.queue) - limit)
        if skipped:
            self.queue = self.queue[skipped:]
        return taken, skipped

    def _draw_prompts(self, count: int) -> list[dict]:
        """``count`` extra prompts for a batch grown past the loader's, drawn at random (this
        callback's generator, so a resumed run draws the same) from the training dataset."""
        loader = self._trainer.train_dataloader if self._trainer is not None else None
        pool = getattr(loader, "dataset", None)
        # only a map-style dataset of records (a loader that batches them) can lend prompts
        if getattr(loader, "batch_size", None) is None or not (hasattr(pool, "__getitem__") and hasattr(pool, "__len__")):
            return []
        if len(pool) == 0 or not isinstance(pool[0], dict):
            return []
        picks = torch.randint(len(pool), (count,), generator=self.generator).tolist()
        return [pool[i] for i in picks]

    def _plan(self, module: LightningModule, batch: list[PendingPrompt]) -> dict[str, float]:
        """ADS (docs/attnrl.md §4): which responses of each prompt to expand; then the subclass's branch points."""
        G = module.group_size
        expand: list[list[int]] = []
        kept = dropped = 0
        filter_scores = self.prompt_filter_scores(module, batch) if self.adaptive_sampling else None
        all_correct = [p for p, prompt in enumerate(batch) if all(self._correct(r) for r in prompt.responses)]
        if filter_scores is not None and all_correct:
            self.fci_mean.update([filter_scores[p] for p in all_correct])  # current batch included
        for p, prompt in enumerate(batch):
            correct = [self._correct(r) for r in prompt.responses]
            if not self.adaptive_sampling:
                expand.append(list(range(len(correct))))
            elif p in all_correct and filter_scores is not None:
                keep = filter_scores[p] > self.fci_mean.value
                kept += keep
                dropped += not keep
                expand.append(choose_responses(correct, self.all_correct_expand, self.generator) if keep else [])
            else:
                expand.append(choose_responses(correct, expansion_count(sum(correct), G), self.generator))
        metrics = self.choose_offsets(module, batch, expand)
        responses = [r for prompt in batch for r in prompt.responses]
        positions = [off / max(len(r.tokens), 1) for r in responses for off in r.offsets]
        self._logged_histograms["branching/branch_position"] = torch.tensor(positions, dtype=torch.float32)
        expanded = sum(1 for r in responses if r.offsets)
        return {
            **metrics,
            "branching/responses_expanded": float(expanded),
            "branching/branch_points": float(len(positions)),
            "branching/points_per_expanded_response": len(positions) / expanded if expanded else 0.0,
            "branching/fci_filter_kept": float(kept),
            "branching/fci_filter_dropped": float(dropped),
        }

    def _correct(self, response: Response) -> bool:
        return response.reward >= self.correct_threshold

    def _trees(
        self, module: LightningModule, continuations_of: dict[tuple[int, int, int], list[Response]]
    ) -> tuple[Experience, dict[str, float]]:
        prompts, completions, advantages, old_logprobs, versions, leaf_rewards = [], [], [], [], [], []
        prompts_trained = prompts_filtered = 0
        for p, prompt in enumerate(self.pending):
            rollouts = []
            for i, response in enumerate(prompt.responses):
                branches = [
                    Branch(off, [(len(c.tokens), c.reward) for c in continuations_of.get((p, i, off), [])])
                    for off in response.offsets
                ]
                branches = [b for b in branches if b.continuations]
                rollouts.append(ResponseRollout(len(response.tokens), response.reward, branches))
            tree = build_tree(rollouts)
            if all_leaves_equal(tree):
                prompts_filtered += 1
                continue
            trained = [
                path for path in paths(tree)
                if self.train_unbranched or len(path.leaf) > 1 or rollouts[path.leaf[0]].branches
            ]
            prompts_trained += bool(trained)

            def source(address: tuple[int, ...]) -> Response:
                response = prompt.responses[address[0]]
                if len(address) == 1:
                    return response
                branch = [b for b in response.offsets if (p, address[0], b) in continuations_of][address[1]]
                return continuations_of[(p, address[0], branch)][address[2]]

            for path in trained:
                tokens, lps, vers = [], [], []
                for seg in path.segments:
                    src = source(seg.rollout)
                    tokens += src.tokens[seg.start : seg.end]
                    lps += src.logprobs[seg.start : seg.end]
                    vers += [src.version] * seg.num_tokens
                prompts.append(prompt.prompt_ids)
                completions.append(tokens)
                advantages.append(path.advantages)
                old_logprobs.append(lps)
                versions.append(vers)
                leaf_rewards.append(path.reward)
        experience = pack_sequences(
            prompts, completions, module.tokenizer.pad_token_id, advantages=advantages,
            old_logprobs=old_logprobs, versions=versions, device=module.device,
        )
        metrics = {
            "branching/sequences_after_filter": float(len(completions)),
            "branching/prompts_trained": float(prompts_trained),
            "branching/prompts_zero_advantage": float(prompts_filtered),
            # prompts of the trained batch that gave no sequence (FCI filter, zero advantage, none expanded)
            "branching/prompts_dropped": float(len(self.pending) - prompts_trained),
        }
        if leaf_rewards:
            metrics["branching/tree_reward"] = sum(leaf_rewards) / len(leaf_rewards)
        return experience, metrics


class AttentionBranchCallback(BranchingCallback):
    """AttnRL (docs/attnrl.md): branch at the steps that later steps attend to most.

    Each new response is split into steps at ``delimiter``; Forward Context Influence (FCI,
    docs/attnrl.md §2: max over layers and heads of the attention that steps ≥ k + ``min_gap`` pay to step
    k) scores every step in one capture forward per step batch; Attention-based Tree
    Branching (§3) takes the ``num_points`` earliest steps among the top ``ratio`` of scores;
    a branch regenerates the chosen step (prefix = prompt + the response before it).

    Args:
        delimiter: step delimiter (paper: "\\n\\n").
        min_gap: Δ of FCI (paper: 4; the built-in task's 5-step answers need 1).
        ratio: top fraction of a response's step scores that are candidates (paper: 0.2).
        min_token_distance: spacing of branch points in response tokens (paper setting: 512;
            0 = off).
        selection: ``"fci"`` (AttnRL) or ``"early"`` (the early-steps ablation: the first
            eligible steps, FCI not used for choosing; the FCI filter of ADS still applies).
        think_end_tag: for thinking models, steps from the one that closes this tag on are
            not FCI targets (None = off).
        fci_block_size: query rows per block in the FCI computation (memory ∝ block · T).
        **kwargs: :class:`BranchingCallback`'s arguments (continuations, num_points, ADS,
            adaptive batch size, seed).
    """

    def __init__(
        self,
        delimiter: str = DEFAULT_DELIMITER,
        min_gap: int = 4,
        ratio: float = 0.2,
        min_token_distance: int = 0,
        selection: str = "fci",
        think_end_tag: str | None = None,
        fci_block_size: int = 256,
        continuations: int = 2,
        num_points: int = 2,
        adaptive_sampling: bool = True,
        all_correct_expand: int = 3,
        adaptive_batch: bool = True,
        batch_lambda: float = 0.9,
        target_sequences: int | None = None,
        max_batch_prompts: int | None = None,
        train_unbranched: bool = False,
        correct_threshold: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            continuations=continuations, num_points=num_points, adaptive_sampling=adaptive_sampling,
            all_correct_expand=all_correct_expand, adaptive_batch=adaptive_batch, batch_lambda=batch_lambda,
            target_sequences=target_sequences, max_batch_prompts=max_batch_prompts,
            train_unbranched=train_unbranched, correct_threshold=correct_threshold, seed=seed,
        )
        if selection not in ("fci", "early"):
            raise UserError(f"AttentionBranchCallback: selection must be 'fci' or 'early', got {selection!r}")
        if min_gap < 1:
            raise UserError(f"AttentionBranchCallback: min_gap must be >= 1, got {min_gap} (paper: 4)")
        if not 0 < ratio <= 1:
            raise UserError(f"AttentionBranchCallback: ratio must be in (0, 1], got {ratio} (paper: 0.2)")
        self.delimiter = delimiter
        self.min_gap = min_gap
        self.ratio = ratio
        self.min_token_distance = min_token_distance
        self.selection = selection
        self.think_end_tag = think_end_tag
        self.fci_block_size = fci_block_size
        self._fci: list[list[torch.Tensor]] = []
        self._spans: list[list[list[Span]]] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        from transformers import PreTrainedModel

        from lit_attn.attention import capture_qk

        model = pl_module.model
        if not isinstance(model, PreTrainedModel):
            raise UserError(
                f"AttentionBranchCallback: {type(pl_module).__name__}.model is a {type(model).__name__}, not a "
                "Hugging Face PreTrainedModel whose attention FCI can capture; hold the causal LM in `model`"
            )
        with capture_qk(model, lambda layer: None):  # raises a one-line UserError naming the architecture
            pass

    def _score_steps(self, module: LightningModule, batch: list[PendingPrompt]) -> None:
        """FCI of every step of every new response, one capture forward for the whole batch."""
        tokenizer = module.tokenizer
        rows = [(prompt.prompt_ids, r.tokens) for prompt in batch for r in prompt.responses]
        spans = [split_steps(p + t, tokenizer, self.delimiter, prompt_length=len(p)) if t else [(0, len(p))] for p, t in rows]
        think = None
        if self.think_end_tag:
            think = [find_think_end_step(p + t, s, tokenizer, self.think_end_tag) for (p, t), s in zip(rows, spans)]
        ids, mask, _ = left_pad([p + t for p, t in rows], tokenizer.pad_token_id)
        fci = fci_scores_batch(
            module.model, ids, mask, spans, min_gap=self.min_gap, block_size=self.fci_block_size,
            think_end_steps=think,
        )
        G = len(batch[0].responses)
        self._fci = [fci[p * G : (p + 1) * G] for p in range(len(batch))]
        self._spans = [spans[p * G : (p + 1) * G] for p in range(len(batch))]
        self._logged_histograms["branching/fci"] = torch.cat([y[1:] for y in fci if y.numel() > 1] or [torch.zeros(0)])

    def prompt_filter_scores(self, module: LightningModule, batch: list[PendingPrompt]) -> list[float]:
        self._score_steps(module, batch)
        return [prompt_mean_fci(per_prompt) for per_prompt in self._fci]

    def choose_offsets(self, module: LightningModule, batch: list[PendingPrompt], expand: list[list[int]]) -> dict[str, float]:
        if len(self._fci) != len(batch):  # ADS off: FCI not computed yet
            self._score_steps(module, batch)
        for p, prompt in enumerate(batch):
            for i in expand[p]:
                spans = self._spans[p][i]
                if self.selection == "fci":
                    steps = atb_branch_steps(
                        self._fci[p][i], spans, ratio=self.ratio, num_points=self.num_points,
                        min_token_distance=self.min_token_distance,
                    )
                else:
                    steps = early_branch_steps(spans, num_points=self.num_points, min_token_distance=self.min_token_distance)
                prompt_length = len(prompt.prompt_ids)
                prompt.responses[i].offsets = [spans[k][0] - prompt_length for k in steps]
        all_scores = torch.cat([y[1:] for per_prompt in self._fci for y in per_prompt if y.numel() > 1] or [torch.zeros(0)])
        self._fci, self._spans = [], []
        return {"branching/fci_mean": float(all_scores.mean()) if all_scores.numel() else 0.0}


class EntropyBranchCallback(BranchingCallback):
    """TreeRL-style baseline (docs/attnrl.md §8): branch at the ``num_points`` highest-entropy tokens.

    Entropy of the full next-token distribution at every response token, from one no-grad
    forward over the new responses. Same trees, advantages and one-step off-policy schedule as
    :class:`AttentionBranchCallback`; by default every response is expanded (no ADS) and the
    prompt batch size is fixed, as in TreeRL.
    """

    def __init__(
        self,
        continuations: int = 2,
        num_points: int = 2,
        adaptive_sampling: bool = False,
        all_correct_expand: int = 3,
        adaptive_batch: bool = False,
        batch_lambda: float = 0.9,
        target_sequences: int | None = None,
        max_batch_prompts: int | None = None,
        train_unbranched: bool = False,
        correct_threshold: float = 1.0,
        seed: int = 0,
        chunk_size: int = 256,
    ) -> None:
        super().__init__(
            continuations=continuations, num_points=num_points, adaptive_sampling=adaptive_sampling,
            all_correct_expand=all_correct_expand, adaptive_batch=adaptive_batch, batch_lambda=batch_lambda,
            target_sequences=target_sequences, max_batch_prompts=max_batch_prompts,
            train_unbranched=train_unbranched, correct_threshold=correct_threshold, seed=seed,
        )
        self.chunk_size = chunk_size

    @torch.no_grad()
    def choose_offsets(self, module: LightningModule, batch: list[PendingPrompt], expand: list[list[int]]) -> dict[str, float]:
        chosen = [(prompt, i) for p, prompt in enumerate(batch) for i in expand[p] if prompt.responses[i].tokens]
        if not chosen:
            return {}
        tokenizer = module.tokenizer
        P = max(len(prompt.prompt_ids) for prompt, _ in chosen)
        C = max(len(prompt.responses[i].tokens) for prompt, i in chosen)
        ids = torch.full((len(chosen), P + C), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, (prompt, i) in enumerate(chosen):
            p, t = prompt.prompt_ids, prompt.responses[i].tokens
            ids[b, P - len(p) : P + len(t)] = torch.tensor(p + t)
            mask[b, P - len(p) : P + len(t)] = 1
        with eval_mode(module.model):
            _, entropy = token_logprobs(
                module.model, ids.to(module.device), mask.to(module.device), chunk_size=self.chunk_size,
                temperature=module.temperature, with_entropy=True,
            )
        entropy = entropy[:, P - 1 :].float().cpu()
        values = []
        for b, (prompt, i) in enumerate(chosen):
            n = len(prompt.responses[i].tokens)
            prompt.responses[i].offsets = entropy_branch_offsets(entropy[b, :n], num_points=self.num_points)
            values.append(entropy[b, :n])
        return {"branching/token_entropy_mean": float(torch.cat(values).mean())}


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Prompt token ids exactly as the GRPO path tokenises them (tokenizer defaults)."""
    return list(tokenizer(text)["input_ids"])


def _reward(value: torch.Tensor) -> float:
    """A tree reward in [0, 1]; NaN (the reward function skipped the completion) counts as 0."""
    v = float(value)
    if math.isnan(v):
        return 0.0
    if not -1e-6 <= v <= 1 + 1e-6:
        raise UserError(
            f"tree advantages need rewards in [0, 1] (docs/attnrl.md §6), got {v}; use a 0/1 verifier as the "
            "reward (e.g. lit_attn.rewards.task_reward) or rescale your reward weights"
        )
    return min(max(v, 0.0), 1.0)
