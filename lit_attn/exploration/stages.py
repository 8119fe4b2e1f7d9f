"""The stages of one tree step, in the order :func:`lit_attn.exploration.step.explore_step` runs
them (docs/attnrl.md §4-§6)::

    take_prompts → sample → (rule.score) → plan_expansion → choose_branch_points
                 → build_trees → training_sequences → next_batch_size

Plain functions over values: the step's state is an
:class:`~lit_attn.exploration.state.ExplorationState`, its knobs an
:class:`~lit_attn.exploration.settings.ExplorationSettings`, where to branch a
:class:`~lit_attn.exploration.rules.BranchRule`. Nothing here imports the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lit_attn.errors import UserError
from lit_attn.experience import Experience, pack_sequences, rollout_metrics
from lit_attn.exploration.groups import PromptGroup
from lit_attn.exploration.host import Host, rollout_batch_size
from lit_attn.exploration.rules import BranchRule, Chosen
from lit_attn.exploration.selection import adaptive_batch_size, choose_responses, expansion_count
from lit_attn.exploration.settings import ExplorationSettings
from lit_attn.exploration.state import ExplorationState
from lit_attn.lora import unwrap
from lit_attn.rollout import pad_id
from lit_attn.sampling import sample_continuations
from lit_attn.seeding import mix_seed
from lit_attn.tree import Branch, PathSample, Response, Sample, all_leaves_equal, build_tree, paths

Reduce = Callable[[list[float], str], list[float]]
"""Sums (``"sum"``) a list of numbers over the processes of a data-parallel run."""


@dataclass
class Sampled:
    """The output of the one sampling call of a step."""

    groups: list[PromptGroup]  # batch m: G responses per prompt, no branch points yet
    continuations: dict[tuple[int, int, int], list[Sample]]  # (pending group, response, offset) → its continuations
    generated_tokens: int
    metrics: dict[str, float]


def take_prompts(state: ExplorationState, records: list[dict], next_prompts: Callable[[int], list[dict]]) -> list[dict]:
    """The step's ``B_m`` prompts from the front of the queue the loader's batch joins, in data
    order: when B_m exceeds the queue, ``next_prompts`` adds the ones that come next. What is
    left stays queued for the next step (nothing is dropped: with B_m below the loader's
    batch the queue grows by the difference each step; it holds prompt records only)."""
    state.queue.extend(records)
    if state.batch_prompts is None:
        state.batch_prompts = len(records)
    if len(state.queue) < state.batch_prompts:
        state.queue.extend(next_prompts(state.batch_prompts - len(state.queue)))
    taken, state.queue = state.queue[: state.batch_prompts], state.queue[state.batch_prompts :]
    return taken


def sample(
    host: Host, prompts: list[dict], pending: list[PromptGroup], settings: ExplorationSettings, step: int, rank: int = 0,
) -> Sampled:
    """One sampling call: G responses per new prompt and T continuations per pending branch
    point (prefix KV computed once per prefix), then the rewards of all of them in one call."""
    tokenizer, G, T = host.tokenizer, host.group_size, settings.continuations
    prompt_ids = [list(tokenizer(r["prompt"])["input_ids"]) for r in prompts]
    branch_points = [(p, i, off) for p, g in enumerate(pending) for i, offs in enumerate(g.offsets) for off in offs]
    prefixes = prompt_ids + [pending[p].prompt_ids + list(pending[p].responses[i].tokens[:off]) for p, i, off in branch_points]
    counts = [G] * len(prompt_ids) + [T] * len(branch_points)
    # a continuation gets what is left of its response's length budget after the branch point
    budgets = [host.max_new_tokens] * len(prompt_ids) + [max(host.max_new_tokens - off, 1) for _, _, off in branch_points]
    out = sample_continuations(
        unwrap(host.model), tokenizer, prefixes, counts, max_new_tokens=budgets,
        temperature=host.temperature, generator_seed=mix_seed(settings.seed, step, rank),
        batch_size=rollout_batch_size(host),
    )
    records, texts, new_tokens = [], [], []
    for row in range(len(out)):
        src, new = int(out.prefix_index[row]), out.new_tokens(row)
        if src < len(prompt_ids):
            records.append(prompts[src])
            texts.append(tokenizer.decode(new, skip_special_tokens=True))
        else:
            p, i, off = branch_points[src - len(prompt_ids)]
            records.append(pending[p].record)  # scored as a whole response: the response's prefix + the continuation
            texts.append(tokenizer.decode(list(pending[p].responses[i].tokens[:off]) + new, skip_special_tokens=True))
        new_tokens.append(new)
    rewards = host.score(records, texts).detach().float().cpu() if texts else torch.zeros(0)
    rollouts = [
        Sample(tuple(new), tree_reward(rewards[row]), tuple(out.logprobs[row, : len(new)].tolist()), step)
        for row, new in enumerate(new_tokens)
    ]

    num_new = len(prompt_ids) * G
    groups = [PromptGroup(rec, ids, rollouts[p * G : (p + 1) * G]) for p, (rec, ids) in enumerate(zip(prompts, prompt_ids))]
    continuations: dict[tuple[int, int, int], list[Sample]] = {}
    for row in range(num_new, len(out)):
        continuations.setdefault(branch_points[int(out.prefix_index[row]) - len(prompt_ids)], []).append(rollouts[row])
    metrics = {"branching/continuations": float(len(out) - num_new)}
    if groups:
        metrics.update(rollout_metrics(rewards[:num_new], G, out.lengths[:num_new], out.clipped[:num_new]))
    return Sampled(groups, continuations, int(out.lengths.sum()), metrics)


def plan_expansion(
    groups: list[PromptGroup], scores: list[float] | None, state: ExplorationState, settings: ExplorationSettings,
    reduce: Reduce = lambda values, op: list(values),
) -> tuple[list[list[int]], dict[str, float]]:
    """ADS (docs/attnrl.md §4): which responses of each prompt to expand. ``ceil(exp(-z)·G)``
    with the incorrect-first rule; an all-correct prompt is kept (3 expanded) only when its
    filter score (``scores[p]``; None = no filter) beats the running mean of all-correct
    prompts so far, this batch included — on every rank (``reduce`` sums over ranks)."""
    correct = [[r.reward >= settings.correct_threshold for r in g.responses] for g in groups]
    all_correct = [p for p, c in enumerate(correct) if all(c)]
    if settings.adaptive_sampling:
        # a collective call: every rank makes it, even one with no prompts (or no scores) this step
        mine = [sum(scores[p] for p in all_correct), len(all_correct), 1] if scores is not None else [0.0, 0, 0]
        total, count, scored = reduce(mine, "sum")
        if scored:
            state.fci_mean.total += total
            state.fci_mean.count += int(count)
    if not groups:
        return [], {}
    if not settings.adaptive_sampling:
        return [list(range(len(c))) for c in correct], {}
    expand, kept, dropped = [], 0, 0
    for p, c in enumerate(correct):
        if p in all_correct and scores is not None:
            keep = scores[p] > state.fci_mean.value
            kept, dropped = kept + keep, dropped + (not keep)
            expand.append(choose_responses(c, settings.all_correct_expand, state.generator) if keep else [])
        else:
            expand.append(choose_responses(c, expansion_count(sum(c), len(c)), state.generator))
    return expand, {"branching/fci_filter_kept": float(kept), "branching/fci_filter_dropped": float(dropped)}


def choose_branch_points(
    host: Host, groups: list[PromptGroup], expand: list[list[int]], scores: Any, settings: ExplorationSettings,
    rule: BranchRule,
) -> Chosen:
    """The rule's branch offsets for the expanded responses, and what to log about them."""
    if not groups:
        return Chosen()
    chosen = rule.choose(host, groups, expand, scores, settings.num_points)
    responses = [(r, offs) for g in groups for r, offs in zip(g.responses, g.offsets)]
    positions = [off / max(len(r.tokens), 1) for r, offs in responses for off in offs]
    expanded = sum(1 for _, offs in responses if offs)
    chosen.histograms["branching/position"] = torch.tensor(positions, dtype=torch.float32)
    chosen.metrics.update({
        "branching/responses_expanded": float(expanded),
        "branching/branch_points": float(len(positions)),
        "branching/points_per_expanded_response": len(positions) / expanded if expanded else 0.0,
    })
    return chosen


def build_trees(pending: list[PromptGroup], continuations: dict[tuple[int, int, int], list[Sample]]) -> list:
    """Batch m−1's trees: its responses cut at their branch points, the continuations as siblings
    (docs/attnrl.md §6). A branch point whose continuations never came is left out."""
    trees = []
    for p, group in enumerate(pending):
        responses = []
        for i, (rollout, offsets) in enumerate(zip(group.responses, group.offsets)):
            branches = [Branch(off, continuations[(p, i, off)]) for off in offsets if continuations.get((p, i, off))]
            responses.append(Response(rollout, branches))
        trees.append(build_tree(responses))
    return trees


def training_sequences(
    host: Host, trees: list, pending: list[PromptGroup], settings: ExplorationSettings
) -> tuple[Experience, dict[str, float]]:
    """The zero-advantage filter, then one training sequence per root-to-leaf path of an
    expanded response (all paths with ``train_unbranched``), packed into an experience."""
    kept: list[tuple[PromptGroup, PathSample]] = []
    zero_advantage = trained = 0
    for group, tree in zip(pending, trees):
        if all_leaves_equal(tree):
            zero_advantage += 1
            continue
        chosen = [path for path in paths(tree) if settings.train_unbranched or path.expanded]
        trained += bool(chosen)
        kept += [(group, path) for path in chosen]
    experience = pack_sequences(
        [g.prompt_ids for g, _ in kept], [p.tokens for _, p in kept], pad_id(host.tokenizer),
        advantages=[p.advantages for _, p in kept], old_logprobs=[p.logprobs for _, p in kept],
        versions=[p.versions for _, p in kept], temperature=float(host.temperature), device=host.device,
    )
    metrics = {
        "branching/sequences_after_filter": float(len(kept)),
        "branching/prompts_trained": float(trained),
        "branching/prompts_zero_advantage": float(zero_advantage),
        # prompts of the trained batch that gave no sequence (FCI filter, zero advantage, none expanded)
        "branching/prompts_dropped": float(len(pending) - trained),
    }
    if kept:
        metrics["branching/tree_reward"] = sum(p.reward for _, p in kept) / len(kept)
    return experience, metrics


def next_batch_size(previous: int, sequences_left: int, loader_prompts: int, group_size: int, settings: ExplorationSettings) -> int:
    """The next B_m from the recurrence's last value and the sequences the filter left (B″),
    toward B′ = loader prompts × G × (1 + N·T); at most ``max_batch_prompts`` when that memory
    guard is set (the recurrence then goes on from the capped value)."""
    target = settings.target_sequences or loader_prompts * group_size * (1 + settings.num_points * settings.continuations)
    grown = adaptive_batch_size(previous, target, sequences_left, lam=settings.batch_lambda)
    return grown if settings.max_batch_prompts is None else min(grown, settings.max_batch_prompts)


def tree_reward(value: torch.Tensor) -> float:
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
