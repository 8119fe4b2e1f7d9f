"""AttnTrace: which context texts drove an answer, from attention (docs/attribution.md).

Public names:

* :class:`AttnTrace` — ``AttnTrace(model, tokenizer, ...).attribute(contexts, question, answer=None)``
  → :class:`AttributionResult` (top-K token averaging + context subsampling);
* :func:`text_scores`, :func:`text_scores_batch` — the one-pass score of each text (docs/attribution.md §2);
* :func:`leave_one_out`, :func:`attention_scores` — the baselines, same interface (docs/attribution.md §5);
* :func:`attribute` — one entry point, ``method="attntrace" | "leave_one_out" | "attention"``;
* :class:`PromptTemplate`, :func:`split_document` — the prompt and document splitting.

Submodules not imported here: :mod:`~lit_attn.attribution.examples` (the example format and its
one validation rule), :mod:`~lit_attn.attribution.metrics` (ranking against ground truth),
:mod:`~lit_attn.attribution.report` (markdown table, heatmap), :mod:`~lit_attn.attribution.isolation`
(running a model without touching training's state), :mod:`~lit_attn.attribution.cli`
(``python -m lit_attn attribute``),
:mod:`~lit_attn.attribution.kinds` (credit by kind of text, following an injected instruction),
:mod:`~lit_attn.attribution.html_report` / :mod:`~lit_attn.attribution.html_files` (the HTML pages).

Plain functions over a Hugging Face model and tokenizer: no Lightning needed, and no task: probes
are plain records (the built-in task's come from :mod:`lit_attn.tasks.probes`).

Imports: ``lit_attn.attention``, ``models``, ``families``, ``lora``, ``records``, ``errors``;
never ``lit_attn.data`` nor ``lit_attn.tasks`` (tests/test_task_layout.py checks).
"""

from lit_attn.attribution.baselines import METHODS, attention_scores, attribute, leave_one_out
from lit_attn.attribution.prompt import (
    BUILTIN_TEMPLATE,
    REFERENCE_TEMPLATE,
    PromptTemplate,
    split_document,
)
from lit_attn.attribution.result import AttributionResult
from lit_attn.attribution.scores import text_scores, text_scores_batch
from lit_attn.attribution.trace import AttnTrace

__all__ = [
    "BUILTIN_TEMPLATE",
    "METHODS",
    "REFERENCE_TEMPLATE",
    "AttnTrace",
    "AttributionResult",
    "PromptTemplate",
    "attention_scores",
    "attribute",
    "leave_one_out",
    "split_document",
    "text_scores",
    "text_scores_batch",
]
