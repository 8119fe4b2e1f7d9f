"""One step of tree RL on the one-step off-policy schedule (AttnRL, docs/attnrl.md §3-§6), as
named stages a reader can follow top to bottom in :func:`explore_step`::

    take_prompts → sample → rule.score (FCI) → plan_expansion (ADS) → choose_branch_points
                 → build_trees → training_sequences (filter, pack) → adapt the batch size

At step m, with the current weights θ: one sampling call carries the G initial responses of
batch m *and* the continuations at batch m−1's branch points (chosen at the previous step);
batch m's branch points are chosen and kept as pending state; batch m−1's trees are built,
filtered and packed into the :class:`~lit_attn.experience.Experience` the host trains on —
with :func:`lit_attn.ppo.ppo_update` or its own update. Every token keeps the log-prob and the
version of the policy that sampled it, carried by the tree from sampling to the experience.

The stages are the plain functions of :mod:`lit_attn.exploration.stages`; the whole state
between steps is one :class:`~lit_attn.exploration.state.ExplorationState` (checkpointed by the
Lightning adapters in ``lit_attn.callbacks.branching``). Where to branch is a
:class:`~lit_attn.exploration.rules.BranchRule` (FCI for AttnRL, token entropy for TreeRL).

    python -m lit_attn fit --config lit_attn/configs/attnrl.yaml
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lit_attn.attention.steps import STEP_DELIMITER
from lit_attn.experience import Experience
from lit_attn.exploration.audit import branch_audit, rescued
from lit_attn.exploration.host import Host
from lit_attn.exploration.rules import BranchRule
from lit_attn.exploration.settings import ExplorationSettings
from lit_attn.exploration.stages import (
    Reduce,
    build_trees,
    choose_branch_points,
    next_batch_size,
    plan_expansion,
    sample,
    take_prompts,
    training_sequences,
)
from lit_attn.exploration.state import ExplorationState

COUNT_METRICS = frozenset({
    "branching/continuations", "branching/fci_filter_kept", "branching/fci_filter_dropped",
    "branching/responses_expanded", "branching/branch_points", "branching/sequences_after_filter",
    "branching/prompts_trained", "branching/prompts_zero_advantage", "branching/prompts_dropped",
    "branching/prompts_queued", "branching/batch_prompts",
})
"""The step metrics that are counts: summed over ranks when logged (the others are averaged)."""


def explore_step(
    host: Host,
    records: list[dict],
    state: ExplorationState,
    settings: ExplorationSettings,
    rule: BranchRule,
    next_prompts: Callable[[int], list[dict]] = lambda count: [],
    reduce: Reduce = lambda values, op: list(values),
) -> tuple[Experience, dict[str, torch.Tensor]]:
    """Sample, choose branch points, build last step's trees: what this step trains on.

    ``records`` is the data loader's batch (this rank's); ``next_prompts(count)`` lends at
    least ``count`` more prompts, the next ones in data order (or fewer where the data ends),
    when the adaptive batch has grown past what the queue holds; ``reduce(values, "sum")`` sums
    numbers over the processes of a data-parallel run, so ADS's running mean and the batch
    size are global (identity in one process). Returns the experience (its ``metrics``
    filled; the counts among them listed in ``count_metrics``) and histograms to log.
    """
    prompts = take_prompts(state, records, next_prompts)
    sampled = sample(host, prompts, state.pending, settings, state.rl_step, state.rank)
    scores = rule.score(host, sampled.groups) if sampled.groups else None
    expand, ads_metrics = plan_expansion(sampled.groups, rule.filter_scores(scores), state, settings, reduce)
    chosen = choose_branch_points(host, sampled.groups, expand, scores, settings, rule)
    trees = build_trees(state.pending, sampled.continuations)
    # what exploration finds (docs/attnrl.md, TensorBoard): built-in records only for the first
    before = branch_audit(sampled.groups, host.tokenizer, settings.correct_threshold, getattr(rule, "delimiter", STEP_DELIMITER))
    if before:
        chosen.metrics["branching/before_first_error"] = sum(before) / len(before)
    found = rescued(state.pending, sampled.continuations, settings.correct_threshold)
    if found:
        chosen.metrics["branching/rescued"] = sum(found) / len(found)
    experience, tree_metrics = training_sequences(host, trees, state.pending, settings)

    if settings.adaptive_batch:
        # every rank gets the same B_m: the update reads the ranks' mean sequences (B″) and the
        # recurrence's own last value, which every rank holds alike
        left, active = reduce([experience.num_sequences, float(bool(state.pending))], "sum")
        if active:
            state.batch_prompts = next_batch_size(
                state.batch_prompts, round(left / active), len(records), host.group_size, settings
            )
    state.pending = sampled.groups
    state.rl_step += 1
    experience.generated_tokens = sampled.generated_tokens
    experience.metrics = {
        **sampled.metrics, **ads_metrics, **chosen.metrics, **tree_metrics,
        "branching/prompts_queued": float(len(state.queue)),
        "branching/batch_prompts": float(len(prompts)),
    }
    experience.count_metrics = COUNT_METRICS
    return experience, chosen.histograms
