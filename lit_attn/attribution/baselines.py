"""The baselines of docs/attribution.md §5, with AttnTrace's interface, and one entry point.

* :func:`leave_one_out` — ``score_i = log p(answer | all texts) − log p(answer | all but i)``,
  the answer's summed token log-probs, teacher-forced; ``n + 1`` sequences, batched.
* :func:`attention_scores` — plain attention: one pass over all texts, the mean over all of a
  text's tokens (no top-K, no subsampling): the ablation showing what each part adds.
* :func:`attribute` — ``method="attntrace" | "leave_one_out" | "attention"``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_attn.models import eval_mode
from lit_attn.attribution.prompt import PromptTemplate
from lit_attn.rollout import left_pad, pad_id
from lit_attn.attribution.result import AttributionResult
from lit_attn.attribution.trace import DEFAULT_BATCH_SIZE, AttnTrace, prepare
from lit_attn.errors import UserError
from lit_attn.logprobs import token_logprobs

METHODS = ("attntrace", "leave_one_out", "attention")
"""Names accepted by :func:`attribute`."""


@torch.no_grad()
def answer_logprobs(
    model: PreTrainedModel,
    sequences: Sequence[Sequence[int]],
    answer_length: int,
    padding_id: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """Summed log-prob of the last ``answer_length`` tokens of each sequence (float64, CPU)."""
    device = next(model.parameters()).device
    totals: list[torch.Tensor] = []
    for start in range(0, len(sequences), batch_size):
        ids, mask, _ = left_pad(sequences[start : start + batch_size], padding_id)
        if answer_length == 0:
            totals.append(torch.zeros(ids.shape[0], dtype=torch.float64))
            continue
        with eval_mode(model):
            logprobs, _ = token_logprobs(model, ids.to(device), mask.to(device))
        # Entry t scores token t + 1: the answer's tokens are the last answer_length columns.
        totals.append(logprobs[:, -answer_length:].double().sum(dim=1).cpu())
    return torch.cat(totals)


def leave_one_out(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str] | str,
    question: str,
    answer: str | None = None,
    *,
    template: PromptTemplate | str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = 64,
    split: str = "segment",
) -> AttributionResult:
    """Leave-one-out scores: the drop of the answer's log-prob when text i is removed."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    prepared = prepare(model, tokenizer, template, contexts, question, answer, split=split, max_new_tokens=max_new_tokens)
    n = len(prepared.contexts)
    pieces = prepared.pieces
    sequences = [pieces.build().input_ids] + [
        pieces.build([j for j in range(n) if j != i]).input_ids for i in range(n)
    ]
    logp = answer_logprobs(model, sequences, len(pieces.answer), pad_id(tokenizer), batch_size)
    scores = [float(logp[0] - logp[1 + i]) for i in range(n)]
    return AttributionResult(
        contexts=prepared.contexts, question=question, answer=prepared.answer, scores=scores,
        method="leave_one_out", seconds=time.perf_counter() - started,
        params={"passes": n + 1, "logprob_all": float(logp[0])},
    )


def attention_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str] | str,
    question: str,
    answer: str | None = None,
    *,
    template: PromptTemplate | str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = 64,
    split: str = "segment",
) -> AttributionResult:
    """Plain attention: one pass over all texts, mean over every token of a text."""
    tracer = AttnTrace(
        model, tokenizer, template=template, top_k_tokens=None, subsample_ratio=1.0, num_subsamples=1,
        batch_size=batch_size, max_new_tokens=max_new_tokens, split=split,
    )
    result = tracer.attribute(contexts, question, answer)
    result.method = "attention"
    return result


def attribute(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str] | str,
    question: str,
    answer: str | None = None,
    *,
    method: str = "attntrace",
    **params: Any,
) -> AttributionResult:
    """Attribute ``answer`` to the context texts with ``method``; ``params`` go to the method
    (:class:`AttnTrace`'s arguments, or those of :func:`leave_one_out` / :func:`attention_scores`)."""
    check_method_params(method, params)
    if method == "attntrace":
        return AttnTrace(model, tokenizer, **params).attribute(contexts, question, answer)
    if method == "leave_one_out":
        return leave_one_out(model, tokenizer, contexts, question, answer, **params)
    return attention_scores(model, tokenizer, contexts, question, answer, **params)


def method_options(method: str) -> list[str]:
    """The keyword options ``method`` takes (its ``params`` in :func:`attribute`)."""
    target = {"attntrace": AttnTrace, "leave_one_out": leave_one_out, "attention": attention_scores}.get(method)
    if target is None:
        raise UserError(f"unknown attribution method {method!r}; use one of {', '.join(METHODS)}")
    return [name for name, p in inspect.signature(target).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def check_method_params(method: str, params: Any, *, who: str = "") -> None:
    """A one-line :class:`UserError` unless ``method`` takes every key of ``params``."""
    accepted = method_options(method)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(f"{who}{method!r} does not take {', '.join(unknown)}; its options are {', '.join(sorted(accepted))}")
