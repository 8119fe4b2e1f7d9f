"""ContextCite (Cohen-Wang et al. 2024; PyPI ``context-cite`` 0.0.4) on the benchmark's inputs.

ContextCite ablates random subsets of the context's *sources* (each kept with probability 1/2),
scores the response's logit-probability under each ablation, and fits a sparse linear
surrogate (LASSO); a source's weight is its score. Its packaged defaults do not fit this
project, so this adapter changes three things and nothing else (the ablation masks, the
logit-probability, the LASSO solver and its settings are ContextCite's own):

* **Sources** — ContextCite splits one context string into sentences with NLTK (whose data
  it downloads at import time). :class:`TextListPartitioner` takes our list of context texts
  as the sources directly, so ContextCite ranks exactly the texts AttnTrace and leave-one-out
  rank; an ablated context is the kept texts joined by the template's separator, the same
  sequence leave-one-out builds.
* **Prompt** — ContextCite wraps ``Context: … Query: …`` in the tokenizer's chat template;
  the shipped character-level tokenizer has none. :class:`TeacherForcedContextCiter` builds
  the plain prompt of :class:`~lit_attn.attribution.prompt.PromptTemplate`
  (``before ‖ texts joined by sep ‖ after``; the built-in one is ``lit_attn.tasks.format_prompt``).
* **Response** — ContextCite generates the response itself; here it is given (the
  benchmark's teacher-forced reference solution) and never generated.

:func:`context_cite` checks that the full prompt + response it scores is token-for-token the
sequence the other methods score (``lit_attn.attribution.prompt.tokenize_prompt``) and
returns an :class:`~lit_attn.attribution.result.AttributionResult` like theirs.

Benchmark code: ``context_cite`` is an optional extra (``pip install -e '.[bench]'``), never a
dependency of the library. Importing this module imports it (ImportError when missing).
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lit_attn.attribution.prompt import BUILTIN_TEMPLATE, PromptTemplate, encode_answer, tokenize_prompt
from lit_attn.attribution.result import AttributionResult
from lit_attn.models import eval_mode

NUM_ABLATIONS = 64
"""Ablated contexts per attribution: ``ContextCiter``'s default in 0.0.4."""

METHOD = "context_cite"


@contextlib.contextmanager
def _no_nltk_download() -> Iterator[None]:
    """``context_cite.utils`` calls ``nltk.download("punkt_tab")`` when imported; the sentence
    splitter it is for is never used here (our texts are the sources), so skip the download
    (no network here, and a needless one elsewhere)."""
    import nltk

    original = nltk.download
    nltk.download = lambda *args, **kwargs: True
    try:
        yield
    finally:
        nltk.download = original


with _no_nltk_download():
    import context_cite.utils as _cc_utils
    from context_cite import ContextCiter
    from context_cite.context_partitioner import BaseContextPartitioner

# One progress bar per attribution would flood the benchmark's output.
_cc_utils.tqdm = functools.partial(_cc_utils.tqdm, disable=True)


class TextListPartitioner(BaseContextPartitioner):
    """The given texts are the sources, in order; the context is them joined by ``sep``.

    ``get_context(mask)`` keeps the texts whose mask entry is true (separators only between
    kept texts; an all-false mask is the empty context)."""

    def __init__(self, texts: Sequence[str], sep: str = "\n") -> None:
        self.texts = list(texts)
        self.sep = sep
        super().__init__(sep.join(self.texts))

    @property
    def num_sources(self) -> int:
        return len(self.texts)

    def split_context(self) -> None:
        """Nothing to split: the sources were given."""

    def get_source(self, index: int) -> str:
        return self.texts[index]

    def get_context(self, mask: Any = None) -> str:
        if mask is None:
            return self.context
        keep = np.asarray(mask, dtype=bool)
        if keep.shape != (self.num_sources,):
            raise ValueError(f"mask of shape {keep.shape} for {self.num_sources} sources")
        return self.sep.join(text for text, kept in zip(self.texts, keep) if kept)


class TeacherForcedContextCiter(ContextCiter):
    """``ContextCiter`` with our plain prompt (no chat template) and a given response.

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer.
        contexts: the texts (the sources).
        question: the question (``{question}`` of the template).
        response: the response to attribute, teacher-forced (never generated).
        template: where texts and question go (default: the built-in task's format).
        **kwargs: ``ContextCiter``'s own options (``num_ablations``, ``ablation_keep_prob``,
            ``batch_size``, ``solver``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        contexts: Sequence[str],
        question: str,
        response: str,
        *,
        template: PromptTemplate = BUILTIN_TEMPLATE,
        **kwargs: Any,
    ) -> None:
        partitioner = TextListPartitioner(contexts, template.sep)
        super().__init__(model, tokenizer, partitioner.context, question, partitioner=partitioner, **kwargs)
        self.template = template
        self.given_response = response

    def _prompt(self, mask: Any = None) -> str:
        return self.template.before + self.partitioner.get_context(mask) + self.template.suffix(self.query)

    def _get_prompt_ids(self, mask: Any = None, return_prompt: bool = False) -> Any:
        prompt = self._prompt(mask)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        return (ids, prompt) if return_prompt else ids

    @property
    def _output(self) -> str:
        # ContextCite's full text (prompt + response), normally prompt + generated continuation.
        return self._prompt() + self.given_response


def context_cite(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    question: str,
    answer: str,
    *,
    template: PromptTemplate = BUILTIN_TEMPLATE,
    num_ablations: int = NUM_ABLATIONS,
    **kwargs: Any,
) -> AttributionResult:
    """ContextCite's score of each text for ``answer`` (one ``AttributionResult``, like
    :func:`lit_attn.attribution.attribute`). ``seconds`` covers the ablation passes and the fit.

    Raises ``ValueError`` if the sequence ContextCite would score differs from the one the
    other methods score (e.g. a tokenizer that adds BOS, or merges across the prompt/answer
    boundary): the comparison would not be like for like."""
    started = time.perf_counter()
    citer = TeacherForcedContextCiter(
        model, tokenizer, contexts, question, answer, template=template, num_ablations=num_ablations, **kwargs
    )
    ours = tokenize_prompt(tokenizer, template, contexts, question, encode_answer(tokenizer, answer)).build()
    theirs = list(citer._output_tokens["input_ids"])
    if theirs != ours.input_ids or citer._response_start != ours.answer_start:
        raise ValueError(
            "ContextCite's prompt + response tokens differ from the sequence the other methods score "
            f"({len(theirs)} vs {len(ours.input_ids)} tokens, answer at {citer._response_start} vs {ours.answer_start})"
        )
    with eval_mode(model), warnings.catch_warnings():
        # Its forward passes run under torch.cuda.amp.autocast(): deprecated, and off on CPU.
        warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.autocast", category=FutureWarning)
        warnings.filterwarnings("ignore", message="CUDA is not available", category=UserWarning)
        weights = citer.get_attributions(verbose=False)
    scores = [float(w) for w in np.asarray(weights, dtype=np.float64)]
    return AttributionResult(
        contexts=list(contexts), question=question, answer=answer, scores=scores, method=METHOD,
        seconds=time.perf_counter() - started,
        params={"num_ablations": citer.num_ablations, "ablation_keep_prob": citer.ablation_keep_prob,
                "batch_size": citer.batch_size},
    )
