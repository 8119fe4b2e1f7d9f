"""The built-in task, in one place: "facts + arithmetic chain", its variants and its verifier.

A context of named facts (``k=7``, one per line) and a question that chains them
(``a+m-k?``); every example names the facts its question needs (``relevant``), the ground
truth for attribution (docs/task.md). Plain Python, no Lightning: the data modules
(:mod:`lit_attn.data`) and the AttributionCallback read the task; the task imports neither,
nor :mod:`lit_attn.attribution`.

* :mod:`~lit_attn.tasks.chain` — ``chain`` mode: :class:`FactChainTask`, recall drills,
  :func:`format_prompt` (the built-in prompt), :func:`in_format`, ``MAX_OPS`` / ``MAX_FACTS``;
* :mod:`~lit_attn.tasks.subtotal` — ``subtotal`` mode: :class:`SubtotalTask`,
  :func:`slip_subtotals` (the solutions of a policy that slips at the subtotals);
* :mod:`~lit_attn.tasks.long_context` — the question among 50-200 texts (paraphrases, an
  injected instruction, filler): :class:`LongContextTask`, and :class:`LongContextPrompts`,
  its prompt records (``data.num_texts``);
* :mod:`~lit_attn.tasks.verifier` — :func:`extract_answer`, :func:`verify` (what
  ``task_reward`` scores), :func:`first_wrong_step`;
* :mod:`~lit_attn.tasks.splits` — :func:`make_split`, :func:`make_splits`: seeded train /
  held-out splits of any of the above;
* :mod:`~lit_attn.tasks.warm_start` — the warm-start curriculum (drills, chains, long
  contexts, slipped subtotals, absent facts) and its held-out sets (``python -m lit_attn sft``);
* :mod:`~lit_attn.tasks.probes` — the built-in attribution probes as plain records: what an
  AttributionCallback's ``examples: builtin`` resolves to.
"""

from lit_attn.tasks.chain import MAX_FACTS, MAX_OPS, FactChainTask, format_prompt, in_format
from lit_attn.tasks.long_context import LongContextPrompts, LongContextTask
from lit_attn.tasks.splits import make_split, make_splits
from lit_attn.tasks.subtotal import SubtotalTask, slip_subtotals
from lit_attn.tasks.verifier import extract_answer, first_wrong_step, verify

__all__ = [
    "MAX_FACTS", "MAX_OPS", "FactChainTask", "LongContextPrompts", "LongContextTask", "SubtotalTask",
    "extract_answer", "first_wrong_step", "format_prompt", "in_format", "make_split", "make_splits",
    "slip_subtotals", "verify",
]
