"""What the exploration needs of the RL module that hosts it, and how it chunks its no-grad calls.

The host is the LightningModule the callbacks adapt the step to (docs/attnrl.md, "Hosting the
callback"); :class:`~lit_attn.PolicyModule` is one.
"""

from __future__ import annotations

from typing import Any

Host = Any
"""The RL module: ``model``, ``tokenizer``, ``group_size``, ``max_new_tokens``, ``temperature``,
``score(records, completions)``, ``device``, optionally ``rollout_batch_size``
(docs/attnrl.md, "Hosting the callback")."""


def rollout_batch_size(host: Host) -> int | None:
    """Most sequences the host lets one no-grad call sample or score (None = no limit)."""
    return getattr(host, "rollout_batch_size", None)


def row_chunks(count: int, size: int | None) -> list[range]:
    """``range(count)`` in consecutive pieces of at most ``size`` (one piece when None)."""
    size = size or max(count, 1)
    return [range(start, min(start + size, count)) for start in range(0, count, size)]
