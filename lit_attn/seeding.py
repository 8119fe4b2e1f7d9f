"""Seeds derived from several integers — the one rule every private generator here uses.

Randomness in lit_attn never comes from torch's global RNG, which no checkpoint holds: each
use seeds its own ``torch.Generator`` from the run's seed and what identifies the draw (the
RL step, the process rank, the split), so a run resumed from a checkpoint, or re-run, draws
exactly the same numbers, and two ranks never draw the same ones.
"""

from __future__ import annotations

MULTIPLIER = 1_000_003
"""A prime larger than any step count or rank we mix in."""


def mix_seed(*parts: int) -> int:
    """``((p0 · M + p1) · M + p2) …`` with M = 1,000,003, kept within 63 bits.

    ``mix_seed(seed, 1)`` is ``seed · 1,000,003 + 1``: the built-in task's split seeds.
    """
    value = 0
    for part in parts:
        value = (value * MULTIPLIER + int(part)) % (1 << 63)
    return value
