"""Seeded train / held-out splits of any built-in task (anything with ``example(rng)``)."""

from __future__ import annotations

import random
from typing import Any, Protocol

from lit_attn.seeding import mix_seed


class ExampleSource(Protocol):
    """A task that draws one record from a random generator."""

    def example(self, rng: random.Random) -> dict[str, Any]: ...


def make_split(task: ExampleSource, size: int, seed: int | str, exclude: set[str] | None = None) -> list[dict]:
    """``size`` examples drawn with ``seed``; prompts in ``exclude`` are skipped (held-out guard)."""
    rng = random.Random(seed)
    out: list[dict] = []
    seen: set[str] = set(exclude or ())
    attempts = 0
    while len(out) < size:
        attempts += 1
        if attempts > 20 * size + 1000:
            raise ValueError(
                f"could not draw {size} distinct examples from {task}; lower the split size "
                "or raise num_distractors / num_ops"
            )
        ex = task.example(rng)
        if ex["prompt"] in seen:
            continue
        seen.add(ex["prompt"])
        out.append(ex)
    return out


def make_splits(
    task: ExampleSource, train_size: int, val_size: int, seed: int = 0, *, train_task: ExampleSource | None = None
) -> tuple[list[dict], list[dict]]:
    """Train and held-out splits; no held-out prompt appears in train.

    ``train_task`` (default: ``task``) lets the training split differ, e.g. a warm-start
    curriculum with lookup drills, while the held-out split stays the task being measured.
    """
    val = make_split(task, val_size, seed=mix_seed(seed, 1))
    train = make_split(train_task or task, train_size, seed=mix_seed(seed, 2), exclude={e["prompt"] for e in val})
    return train, val
