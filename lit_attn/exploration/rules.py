"""Where a tree step branches: the :class:`BranchRule` protocol and the rules that run the model.

* :class:`FCIBranching` — AttnRL (docs/attnrl.md §2-§3): Forward Context Influence of every
  step of every response in one capture forward, then Attention-based Tree Branching (or the
  early-steps ablation); the mean FCI of a prompt also feeds ADS's all-correct filter.
* :class:`EntropyBranching` — TreeRL (docs/attnrl.md §8): the highest-entropy tokens.

Both only read the host's model (no gradients, modes restored) and write branch offsets into
the :class:`~lit_attn.exploration.groups.PromptGroup` objects they are given; the pure maths
they apply is :mod:`lit_attn.exploration.selection`. A rule of your own is any object with the
three methods of :class:`BranchRule`, handed to ``lit_attn.callbacks.BranchingCallback``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lit_attn.attention import fci_scores_batch, find_think_end_step, split_steps
from lit_attn.attention.fci import DEFAULT_BLOCK_SIZE
from lit_attn.attention.steps import STEP_DELIMITER, Span
from lit_attn.errors import UserError
from lit_attn.exploration.groups import PromptGroup
from lit_attn.exploration.host import Host, rollout_batch_size, row_chunks
from lit_attn.exploration.selection import atb_branch_steps, early_branch_steps, entropy_branch_offsets, prompt_mean_fci
from lit_attn.logprobs import token_logprobs
from lit_attn.lora import unwrap
from lit_attn.models import eval_mode
from lit_attn.rollout import left_pad, pad_id, pad_prompts_and_completions


@dataclass
class Chosen:
    """What a branch rule reports: scalars and histograms for TensorBoard."""

    metrics: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, torch.Tensor] = field(default_factory=dict)


class BranchRule(Protocol):
    """Where a rule branches: FCI for AttnRL (:class:`FCIBranching`), token entropy for TreeRL
    (:class:`EntropyBranching`)."""

    def score(self, host: Host, groups: list[PromptGroup]) -> Any:
        """Whatever the rule computes over all new responses (AttnRL: FCI per step; None when
        it needs nothing before the expanded responses are known)."""

    def filter_scores(self, scores: Any) -> list[float] | None:
        """Per-prompt score for ADS's all-correct filter (AttnRL: mean FCI); None = no filter."""

    def choose(self, host: Host, groups: list[PromptGroup], expand: list[list[int]], scores: Any, num_points: int) -> Chosen:
        """Fill ``groups[p].offsets[i]`` for each response ``i`` in ``expand[p]``."""


@dataclass
class FCIBranching:
    """AttnRL's rule: FCI per step, then ATB (``selection="fci"``) or the first eligible steps
    (``"early"``).

    Each new response is split into steps at ``delimiter``; Forward Context Influence (FCI,
    docs/attnrl.md §2: max over layers and heads of the attention that steps ≥ k + ``min_gap``
    pay to step k) scores every step in one capture forward per step batch; Attention-based
    Tree Branching (§3) takes the ``num_points`` earliest steps among the top ``ratio`` of
    scores; a branch regenerates the chosen step (prefix = prompt + the response before it).

    Attributes:
        delimiter: step delimiter (paper: "\\n\\n").
        min_gap: Δ of FCI (paper: 4; the built-in task's short answers need 1).
        ratio: top fraction of a response's step scores that are candidates (paper: 0.2).
        min_token_distance: spacing of branch points in tokens (paper setting: 512; 0 = off).
        selection: ``"fci"`` (AttnRL) or ``"early"`` (the early-steps ablation: the first
            eligible steps, FCI not used for choosing; the FCI filter of ADS still applies).
        think_end_tag: for thinking models, steps from the one that closes this tag on are
            not FCI targets (None = off).
        fci_block_size: query rows per block in the FCI computation; None (default) = auto,
            chosen from the batch, head count and length so a score tile stays cache-sized
            (lit_attn.attention.fci.fci_block_shape; measured in docs/bench_attention_scoring.md).
    """

    delimiter: str = STEP_DELIMITER
    min_gap: int = 4
    ratio: float = 0.2
    min_token_distance: int = 0
    selection: str = "fci"
    think_end_tag: str | None = None
    fci_block_size: int | None = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        if self.selection not in ("fci", "early"):
            raise UserError(f"selection must be 'fci' or 'early', got {self.selection!r}")
        if self.min_gap < 1:
            raise UserError(f"min_gap must be >= 1, got {self.min_gap} (paper: 4)")
        if not 0 < self.ratio <= 1:
            raise UserError(f"ratio must be in (0, 1], got {self.ratio} (paper: 0.2)")

    def score(self, host: Host, groups: list[PromptGroup]) -> tuple[list[list[torch.Tensor]], list[list[list[Span]]]]:
        """FCI of every step of every response, and the step spans (per prompt, per response),
        from one capture forward."""
        tokenizer = host.tokenizer
        rows = [(g.prompt_ids, list(r.tokens)) for g in groups for r in g.responses]
        spans = [split_steps(p + t, tokenizer, self.delimiter, prompt_length=len(p)) if t else [(0, len(p))] for p, t in rows]
        think = None
        if self.think_end_tag:
            think = [find_think_end_step(p + t, s, tokenizer, self.think_end_tag) for (p, t), s in zip(rows, spans)]
        fci: list[torch.Tensor] = []
        for chunk in row_chunks(len(rows), rollout_batch_size(host)):
            ids, mask, _ = left_pad([rows[r][0] + rows[r][1] for r in chunk], pad_id(tokenizer))
            fci += fci_scores_batch(
                unwrap(host.model), ids, mask, [spans[r] for r in chunk], min_gap=self.min_gap, block_size=self.fci_block_size,
                think_end_steps=[think[r] for r in chunk] if think is not None else None,
            )
        G = len(groups[0].responses)
        return [fci[p * G : (p + 1) * G] for p in range(len(groups))], [spans[p * G : (p + 1) * G] for p in range(len(groups))]

    def filter_scores(self, scores: tuple[list[list[torch.Tensor]], list[list[list[Span]]]] | None) -> list[float] | None:
        return None if scores is None else [prompt_mean_fci(per_prompt) for per_prompt in scores[0]]

    def choose(
        self, host: Host, groups: list[PromptGroup], expand: list[list[int]],
        scores: tuple[list[list[torch.Tensor]], list[list[list[Span]]]], num_points: int,
    ) -> Chosen:
        fci, spans = scores
        for p, group in enumerate(groups):
            for i in expand[p]:
                if self.selection == "fci":
                    steps = atb_branch_steps(
                        fci[p][i], spans[p][i], ratio=self.ratio, num_points=num_points,
                        min_token_distance=self.min_token_distance,
                    )
                else:
                    steps = early_branch_steps(spans[p][i], num_points=num_points, min_token_distance=self.min_token_distance)
                group.offsets[i] = [spans[p][i][k][0] - len(group.prompt_ids) for k in steps]
        scores = torch.cat([y[1:] for per_prompt in fci for y in per_prompt if y.numel() > 1] or [torch.zeros(0)])
        return Chosen(
            metrics={"branching/fci_mean": float(scores.mean()) if scores.numel() else 0.0},
            histograms={"branching/fci": scores},
        )


@dataclass
class EntropyBranching:
    """TreeRL's rule: the ``num_points`` highest-entropy tokens of each expanded response, from
    one no-grad forward over them (entropy of the full next-token distribution).

    Attributes:
        chunk_size: positions per entropy chunk (bounds the logits memory).
    """

    chunk_size: int = 256

    def score(self, host: Host, groups: list[PromptGroup]) -> None:
        return None  # entropy is computed for the expanded responses only, in choose()

    def filter_scores(self, scores: None) -> None:
        return None

    @torch.no_grad()
    def choose(self, host: Host, groups: list[PromptGroup], expand: list[list[int]], scores: None, num_points: int) -> Chosen:
        chosen = [(g, i) for p, g in enumerate(groups) for i in expand[p] if g.responses[i].tokens]
        if not chosen:
            return Chosen()
        values = []
        for chunk in row_chunks(len(chosen), rollout_batch_size(host)):
            part = [chosen[b] for b in chunk]
            ids, mask, P = pad_prompts_and_completions(
                [g.prompt_ids for g, _ in part], [g.responses[i].tokens for g, i in part], pad_id(host.tokenizer)
            )
            with eval_mode(host.model):
                _, entropy = token_logprobs(
                    host.model, ids.to(host.device), mask.to(host.device), chunk_size=self.chunk_size,
                    temperature=host.temperature, with_entropy=True,
                )
            entropy = entropy[:, P - 1 :].float().cpu()
            for b, (g, i) in enumerate(part):
                n = len(g.responses[i].tokens)
                g.offsets[i] = entropy_branch_offsets(entropy[b, :n], num_points=num_points)
                values.append(entropy[b, :n])
        return Chosen(metrics={"branching/token_entropy_mean": float(torch.cat(values).mean())})
