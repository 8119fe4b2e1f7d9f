"""What the exploration needs of the RL module that hosts it, and how it chunks its no-grad calls.

The host is the LightningModule the callbacks adapt the step to (docs/attnrl.md, "Hosting the
callback"); :class:`~lit_attn.PolicyModule` is one.
"""

from __future__ import annotations

from typing import Any

from lit_attn.errors import UserError

Host = Any
"""The RL module that hosts the exploration; what it offers is :data:`REQUIRED`."""

REQUIRED: tuple[str, ...] = ("model", "tokenizer", "group_size", "max_new_tokens", "temperature", "score", "experience_source")
"""The host contract (docs/attnrl.md, "Hosting the callback"), written here only:

* ``model``: a Hugging Face causal LM (or a PEFT model around one); ``tokenizer``: its tokenizer;
* ``group_size`` (G), ``max_new_tokens``, ``temperature``: how the initial responses are sampled;
* ``score(records, completions) -> Tensor``: one reward in [0, 1] per completion, NaN = none
  (a response counts as correct at ``reward >= correct_threshold``);
* ``experience_source``: a slot the exploration callback sets to itself; the host's training
  step calls ``experience_source.make_experience(module, records)`` and trains on the
  :class:`~lit_attn.experience.Experience` it returns (zero sequences at the very first step);
* and, as every LightningModule, ``device``; optionally ``rollout_batch_size`` (most sequences
  per no-grad call, None = no limit).

:class:`~lit_attn.PolicyModule` offers it; :func:`check_host` checks it."""


def check_host(module: Any, who: str) -> None:
    """Raise a one-line :class:`UserError` naming what ``module`` lacks of :data:`REQUIRED`."""
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise UserError(
            f"{who} needs the LightningModule to offer {', '.join(missing)}; {type(module).__name__} lacks them "
            "(see the contract in lit_attn/exploration/host.py)"
        )


def rollout_batch_size(host: Host) -> int | None:
    """Most sequences the host lets one no-grad call sample or score (None = no limit)."""
    return getattr(host, "rollout_batch_size", None)


def row_chunks(count: int, size: int | None) -> list[range]:
    """``range(count)`` in consecutive pieces of at most ``size`` (one piece when None)."""
    size = size or max(count, 1)
    return [range(start, min(start + size, count)) for start in range(0, count, size)]
