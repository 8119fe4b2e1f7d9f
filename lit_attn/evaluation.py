"""Greedy pass@1 on a list of records — shared by the RL and warm-start modules."""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_attn.markdown import cell
from lit_attn.rewards import call_reward, reward_name
from lit_attn.sampling import generate


def columns_of(records: list[dict], repeat: int = 1) -> dict[str, list]:
    """Dataset columns (everything but ``prompt``) as lists aligned with completions."""
    keys = [k for k in records[0] if k != "prompt"] if records else []
    return {k: [r.get(k) for r in records for _ in range(repeat)] for k in keys}


@torch.no_grad()
def greedy_pass_at_1(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    verifier: Callable[..., list[float | None]],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
) -> tuple[torch.Tensor, list[str]]:
    """Per-record correctness (1.0 / 0.0; NaN where the verifier skipped) and the completions.

    ``verifier`` has the reward-function signature ``(prompts, completions, **columns)``; a
    completion counts as correct when it returns ≥ 1.0.
    """
    scores: list[float] = []
    completions: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        prompts = [r["prompt"] for r in chunk]
        rollout = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False)
        values = call_reward(verifier, reward_name(verifier), prompts, rollout.completions, **columns_of(chunk))
        scores += [float("nan") if v is None else float(v >= 1.0) for v in values]
        completions += rollout.completions
    return torch.tensor(scores), completions


def sample_table(records: list[dict], completions: list[str], scores: torch.Tensor, limit: int) -> str:
    """A markdown table of the first ``limit`` prompts, completions, answers and scores."""

    rows = ["| prompt | completion | answer | correct |", "|---|---|---|---|"]
    for rec, comp, score in list(zip(records, completions, scores.tolist()))[:limit]:
        rows.append(f"| {cell(rec['prompt'])} | {cell(comp)} | {cell(rec.get('answer', ''))} | {score:g} |")
    return "\n".join(rows)
