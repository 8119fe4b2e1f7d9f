"""Attention-derived scores without T×T matrices: step splitting, Forward Context Influence.

Public names:

* :func:`split_steps`, :func:`find_think_end_step`, :func:`delimiter_token_ids` — reasoning
  steps as token spans (docs/attnrl.md §1);
* :func:`fci_scores`, :func:`fci_scores_batch`, :class:`FCIAccumulator` — Forward Context
  Influence of each step (docs/attnrl.md §2);
* :func:`capture_qk`, :class:`CapturedLayer` — the one capture mechanism behind every score:
  stream each layer's post-RoPE queries and keys out of a normal sdpa forward.

Imports: ``lit_attn.compat``, ``models``, ``lora``, ``logprobs``, ``errors``; never the
exploration, attribution, tasks, data or callbacks that use it (docs/architecture.md).
"""

from lit_attn.attention.capture import (
    CAPTURE_ATTN_IMPLEMENTATION,
    CapturedLayer,
    CaptureSession,
    capture_qk,
)
from lit_attn.attention.fci import FCIAccumulator, fci_scores, fci_scores_batch
from lit_attn.attention.steps import Span, delimiter_token_ids, find_think_end_step, split_steps

__all__ = [
    "CAPTURE_ATTN_IMPLEMENTATION",
    "CaptureSession",
    "CapturedLayer",
    "FCIAccumulator",
    "Span",
    "capture_qk",
    "delimiter_token_ids",
    "fci_scores",
    "fci_scores_batch",
    "find_think_end_step",
    "split_steps",
]
