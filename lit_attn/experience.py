"""Experience: the packed batch of sequences one RL step trains on, whoever produced it.

GRPO (:class:`~lit_attn.PolicyModule` alone) and tree exploration
(``lit_attn.callbacks.AttentionBranchCallback`` and its baselines) hand the module the same
thing: prompts left-padded to a common width ``P``, completions right-padded after them (so
completion token ``i`` sits at column ``P + i`` of every row), an advantage per sequence or
per completion token, and — when the tokens were sampled by an earlier policy — the
behaviour log-probs recorded at sampling time (PPO's ratio is the only off-policy
correction, docs/attnrl.md §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lit_attn.rollout import pad_prompts_and_completions


@dataclass
class Experience:
    """What one RL step trains on.

    Attributes:
        input_ids: ``(N, P + C)`` prompt then completion tokens.
        attention_mask: ``(N, P + C)`` 1 on real tokens.
        prompt_length: ``P``.
        completion_mask: ``(N, C)`` 1 on the completion tokens that train.
        advantages: ``(N,)`` one per sequence, or ``(N, C)`` one per completion token.
        old_logprobs: ``(N, C)`` behaviour log-probs of the completion tokens, or ``None`` when
            the current weights sampled them (the module then computes them itself).
        versions: ``(N, C)`` which policy version (RL step) sampled each completion token;
            ``None`` when all were sampled by the current one. For inspection and tests.
        temperature: the sampling temperature of the completions; the update takes its
            log-probs at the same one.
        generated_tokens: tokens generated for this step (the x-axis of efficiency plots).
        metrics: scalars to log for this step (rewards, lengths, exploration statistics).
        count_metrics: the keys of ``metrics`` that are counts: summed over the processes of a
            data-parallel run when logged (the others are averaged).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    versions: torch.Tensor | None = None
    temperature: float = 1.0
    generated_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    count_metrics: frozenset[str] = frozenset()

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])


def pack_sequences(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_token_id: int,
    *,
    advantages: Sequence[torch.Tensor],
    old_logprobs: Sequence[Sequence[float]] | None = None,
    versions: Sequence[Sequence[int]] | None = None,
    temperature: float = 1.0,
    device: torch.device | str = "cpu",
) -> Experience:
    """Pack prompt and completion token lists into an :class:`Experience`.

    ``advantages[i]`` is a scalar tensor or one value per token of ``completions[i]``;
    ``old_logprobs[i]`` and ``versions[i]`` one value per token of ``completions[i]``.
    """
    n = len(prompts)
    input_ids, attention_mask, P = pad_prompts_and_completions(prompts, completions, pad_token_id)
    C = input_ids.shape[1] - P
    adv = torch.zeros((n, C), dtype=torch.float32)
    old = torch.zeros((n, C), dtype=torch.float32) if old_logprobs is not None else None
    ver = torch.full((n, C), -1, dtype=torch.long) if versions is not None else None
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        c = len(completion)
        a = torch.as_tensor(advantages[i], dtype=torch.float32)
        adv[i, :c] = a if a.dim() == 0 else a[:c]
        if old is not None:
            old[i, :c] = torch.as_tensor(list(old_logprobs[i]), dtype=torch.float32)
        if ver is not None:
            ver[i, :c] = torch.as_tensor(list(versions[i]), dtype=torch.long)
    to = lambda t: t.to(device) if t is not None else None  # noqa: E731
    return Experience(
        input_ids=to(input_ids), attention_mask=to(attention_mask), prompt_length=P,
        completion_mask=to(attention_mask[:, P:].clone()), advantages=to(adv), old_logprobs=to(old), versions=ver,
        temperature=temperature,
    )


def rollout_metrics(rewards: torch.Tensor, group_size: int, lengths: torch.Tensor, clipped: torch.Tensor) -> dict[str, float]:
    """TRL's rollout metrics for rows grouped by prompt (``group_size`` rows each; NaN = skipped)."""
    valid = rewards[~torch.isnan(rewards)]
    groups = rewards.view(-1, group_size)
    group_std = torch.stack([g[~torch.isnan(g)].std().nan_to_num(0.0) if (~torch.isnan(g)).sum() > 1 else torch.tensor(0.0) for g in groups])
    return {
        "reward": float(valid.mean()) if valid.numel() else 0.0,
        "reward_std": float(valid.std()) if valid.numel() > 1 else 0.0,
        "frac_reward_zero_std": float((group_std < 1e-6).float().mean()),
        "completions/mean_length": float(lengths.float().mean()),
        "completions/clipped_ratio": float(clipped.float().mean()),
    }
