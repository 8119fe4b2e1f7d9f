"""AttnTrace: which context texts drove an answer, from attention — docs/attribution.md §3.

Each of ``num_subsamples`` rounds draws exactly ``m = max(1, ⌊subsample_ratio · n⌋)`` texts
uniformly without replacement, keeps them in their original order and builds a prompt with
only those texts (the others are absent: positions stay contiguous). The answer is
teacher-forced; each round is scored with :func:`~lit_attn.attribution.scores.text_scores`
(docs/attribution.md §2). A text's final score is the mean of its scores over the rounds that drew it, 0 if
none did. ``subsample_ratio=1`` or ``num_subsamples=1`` is one pass over all texts. Rounds run
as left-padded batches of ``batch_size``. The draws use their own ``random.Random(seed)``:
same inputs and seed → same scores; torch's and Python's global RNGs are never touched.

Example::

    model, tokenizer = load_policy("default")
    tracer = AttnTrace(model, tokenizer)
    result = tracer.attribute(["k=7", "a=3", "q=5", "m=2"], "a+m-k")
    print(result.top(3))
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_attn.attribution.prompt import (
    PromptTemplate,
    SequenceInput,
    TokenizedPrompt,
    check_contexts,
    check_length,
    document_sep,
    encode_answer,
    generate_answer,
    resolve_template,
    tokenize_prompt,
)
from lit_attn.attribution.result import AttributionResult
from lit_attn.attribution.scores import DEFAULT_TOP_K, text_scores_batch

DEFAULT_SUBSAMPLE_RATIO = 0.4
"""ρ of docs/attribution.md §3: the fraction of the texts each subsampling round keeps."""

DEFAULT_NUM_SUBSAMPLES = 30
"""B of docs/attribution.md §3: subsampling rounds."""
from lit_attn.errors import UserError
from lit_attn.rollout import left_pad, pad_id

DEFAULT_BATCH_SIZE = 8
"""Sequences per forward pass (rounds, or leave-one-out variants)."""


@dataclass
class PreparedInput:
    """Texts, question, answer text and the tokenised pieces of one attribution."""

    contexts: list[str]
    question: str
    answer: str
    pieces: TokenizedPrompt


def prepare(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: PromptTemplate | str | None,
    contexts: Sequence[str] | str,
    question: str,
    answer: str | None,
    *,
    split: str = "segment",
    max_new_tokens: int = 64,
) -> PreparedInput:
    """Check the inputs, tokenise the pieces, generate the answer greedily if none is given,
    and check that prompt + answer fit the model's context. A document string is cut by
    ``split`` and its pieces joined with nothing between them (the document verbatim)."""
    texts = check_contexts(contexts, split)
    pieces = tokenize_prompt(tokenizer, resolve_template(template), texts, question, sep=document_sep(contexts))
    prompt_length = len(pieces.build().input_ids)
    if answer is None:
        check_length(model, prompt_length, 1)
        pieces.answer = generate_answer(model, tokenizer, pieces.build().input_ids, max_new_tokens)
        answer = tokenizer.decode(pieces.answer, skip_special_tokens=True)
    else:
        pieces.answer = encode_answer(tokenizer, answer)
    check_length(model, prompt_length, len(pieces.answer))
    return PreparedInput(contexts=texts, question=question, answer=answer, pieces=pieces)


def check_trace_settings(top_k_tokens: int | None, subsample_ratio: float, num_subsamples: int, *, who: str = "") -> None:
    """A one-line :class:`UserError` (prefixed ``who``) for a bad K, ρ or B."""
    if top_k_tokens is not None and top_k_tokens < 1:
        raise UserError(f"{who}top_k_tokens must be >= 1 (or None for all tokens), got {top_k_tokens}")
    if not 0.0 < subsample_ratio <= 1.0:
        raise UserError(f"{who}subsample_ratio must be in (0, 1], got {subsample_ratio}")
    if num_subsamples < 1:
        raise UserError(f"{who}num_subsamples must be >= 1, got {num_subsamples}")


class AttnTrace:
    """Attention-based context traceback (docs/attribution.md).

    Args:
        model: a Hugging Face causal LM whose attention layers use transformers'
            AttentionInterface (Qwen2, Llama, GPT-2, Mistral, ...).
        tokenizer: its tokenizer.
        template: prompt template (``None``/``"builtin"``: the built-in task's format;
            ``"reference"``: the paper's shape; or a :class:`PromptTemplate`).
        top_k_tokens: K of docs/attribution.md §2, tokens averaged per text (``None``: all tokens).
        subsample_ratio: ρ, fraction of the texts each round keeps (1 turns subsampling off).
        num_subsamples: B, number of rounds (1 turns subsampling off).
        seed: seed of the draws.
        max_new_tokens: answer length cap when the answer is generated.
        batch_size: rounds per forward pass.
        split: how a single document string is cut (``segment``, ``paragraph``, ``sentence``;
            see :func:`~lit_attn.attribution.prompt.split_document`); its pieces follow each
            other in the prompt with nothing between them, so the model reads the document verbatim.
    """

    method = "attntrace"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        template: PromptTemplate | str | None = None,
        top_k_tokens: int | None = DEFAULT_TOP_K,
        subsample_ratio: float = DEFAULT_SUBSAMPLE_RATIO,
        num_subsamples: int = DEFAULT_NUM_SUBSAMPLES,
        seed: int = 0,
        max_new_tokens: int = 64,
        batch_size: int = DEFAULT_BATCH_SIZE,
        split: str = "segment",
    ) -> None:
        check_trace_settings(top_k_tokens, subsample_ratio, num_subsamples)
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model
        self.tokenizer = tokenizer
        self.template = resolve_template(template)
        self.top_k_tokens = top_k_tokens
        self.subsample_ratio = subsample_ratio
        self.num_subsamples = num_subsamples
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.split = split

    @property
    def subsampling(self) -> bool:
        """False when ρ = 1 or B = 1: one pass over all texts."""
        return self.subsample_ratio < 1.0 and self.num_subsamples > 1

    def draw_subsets(self, num_texts: int) -> list[list[int]]:
        """The texts of every round: exactly ``max(1, ⌊ρ·n⌋)`` indices each, sorted."""
        if not self.subsampling:
            return [list(range(num_texts))]
        size = max(1, math.floor(self.subsample_ratio * num_texts))
        rng = random.Random(self.seed)
        return [sorted(rng.sample(range(num_texts), size)) for _ in range(self.num_subsamples)]

    def score_rounds(self, rounds: Sequence[SequenceInput], num_texts: int) -> list[float]:
        """Mean score of each text over the rounds that contain it (0 when none does)."""
        total = torch.zeros(num_texts, dtype=torch.float64)
        count = torch.zeros(num_texts, dtype=torch.float64)
        for start in range(0, len(rounds), self.batch_size):
            chunk = rounds[start : start + self.batch_size]
            ids, mask, _ = left_pad([r.input_ids for r in chunk], pad_id(self.tokenizer))
            scores = text_scores_batch(
                self.model, ids, mask, [r.text_spans for r in chunk], [r.answer_start for r in chunk],
                top_k=self.top_k_tokens,
            )
            for sequence, row_scores in zip(chunk, scores):
                index = torch.tensor(sequence.texts, dtype=torch.long)
                total.index_add_(0, index, row_scores.double())
                count.index_add_(0, index, torch.ones(len(sequence.texts), dtype=torch.float64))
        mean = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
        return [float(x) for x in mean]

    def attribute(
        self, contexts: Sequence[str] | str, question: str, answer: str | None = None
    ) -> AttributionResult:
        """Score every context text for ``answer`` (generated greedily when ``None``).

        ``contexts`` is a list of texts (joined by the template's ``sep``), or one document
        string cut by ``split`` (its pieces joined with nothing: the document verbatim).
        """
        started = time.perf_counter()
        prepared = prepare(
            self.model, self.tokenizer, self.template, contexts, question, answer,
            split=self.split, max_new_tokens=self.max_new_tokens,
        )
        n = len(prepared.contexts)
        rounds = [prepared.pieces.build(keep) for keep in self.draw_subsets(n)]
        scores = self.score_rounds(rounds, n)
        return AttributionResult(
            contexts=prepared.contexts, question=question, answer=prepared.answer, scores=scores,
            method=self.method, seconds=time.perf_counter() - started,
            params={
                "top_k_tokens": self.top_k_tokens, "subsample_ratio": self.subsample_ratio,
                "num_subsamples": self.num_subsamples if self.subsampling else 1, "seed": self.seed,
                "rounds": len(rounds),
            },
        )
