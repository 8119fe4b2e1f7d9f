"""How the tree step explores: every exploration knob once, with its doc, default and check.

Both exploration callbacks (``lit_attn.callbacks.AttentionBranchCallback``,
``EntropyBranchCallback``) take these as constructor arguments of the same names, build one
:class:`ExplorationSettings` and hand it whole to :func:`lit_attn.exploration.step.explore_step`.
Where to branch (FCI or entropy, and their own knobs) is the branch rule's
(:mod:`lit_attn.exploration.rules`).
"""

from __future__ import annotations

from dataclasses import dataclass

from lit_attn.errors import UserError


@dataclass(frozen=True)
class ExplorationSettings:
    """How the tree step explores (docs/attnrl.md §4-§6).

    Attributes:
        continuations: T, new continuations sampled at each branch point (paper: 2).
        num_points: branch points per expanded response (paper: 2).
        adaptive_sampling: docs/attnrl.md §4's ADS — expand ``ceil(exp(-z)·G)`` responses per prompt
            (incorrect-first rule), FCI filter for all-correct prompts. Off: every response is
            expanded (TreeRL).
        all_correct_expand: responses expanded for an all-correct prompt kept by the filter (paper: 3).
        adaptive_batch: adapt the prompt batch size B_m with ``batch_lambda`` (docs/attnrl.md §4).
        batch_lambda: λ of the batch-size update (paper: 0.9).
        target_sequences: B′, training sequences wanted per step; None = the loader's prompts
            per step × G × (1 + num_points × continuations), the paths an expanded response
            yields (the authors' B·G·5).
        max_batch_prompts: an optional memory guard: the largest prompt batch B_m may grow to
            (None = no cap, as in the authors' code). Prompts beyond what the loader gave are
            the loader's next ones; at the end of an epoch a step takes what there is.
        train_unbranched: also train on responses that were not expanded, each as a one-node
            path with advantage 2·(r − V(root)). Off by default, as in the authors' code: they
            count only in V(root).
        correct_threshold: a reward at or above it counts as correct for ADS.
        seed: seed of the exploration's own random choices and of the sampling of each step
            (so a resumed run samples exactly what the uninterrupted one would have).
    """

    continuations: int = 2
    num_points: int = 2
    adaptive_sampling: bool = True
    all_correct_expand: int = 3
    adaptive_batch: bool = True
    batch_lambda: float = 0.9
    target_sequences: int | None = None
    max_batch_prompts: int | None = None
    train_unbranched: bool = False
    correct_threshold: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in (("continuations", self.continuations), ("num_points", self.num_points)):
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value} (paper: 2)")
        if not 0 <= self.batch_lambda <= 1:
            raise UserError(f"batch_lambda must be in [0, 1], got {self.batch_lambda} (paper: 0.9)")
        if self.target_sequences is not None and self.target_sequences < 1:
            raise UserError(
                f"target_sequences must be >= 1 or null, got {self.target_sequences} "
                "(null = prompts per step × G × (1 + num_points × continuations))"
            )
        if self.max_batch_prompts is not None and self.max_batch_prompts < 1:
            raise UserError(f"max_batch_prompts must be >= 1 or null, got {self.max_batch_prompts} (null = no cap)")
