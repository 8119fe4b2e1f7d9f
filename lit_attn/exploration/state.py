"""Everything the tree step carries from one step to the next: :class:`ExplorationState`.

The Lightning adapters (``lit_attn.callbacks.BranchingCallback``) checkpoint it with
``state_dict`` and restore it with ``load_state_dict``; a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lit_attn.exploration.groups import PromptGroup
from lit_attn.exploration.selection import RunningMean
from lit_attn.seeding import mix_seed
from lit_attn.tree import Sample


@dataclass
class ExplorationState:
    """Everything that carries from one step to the next (all of it is checkpointed)."""

    seed: int = 0
    rank: int = 0  # this process's rank (not checkpointed: each rank's state is saved under its rank)
    rl_step: int = 0
    batch_prompts: int | None = None  # B_m: the adaptive batch recurrence's last value (the next step takes it)
    queue: list[dict] = field(default_factory=list)
    pending: list[PromptGroup] = field(default_factory=list)
    fci_mean: RunningMean = field(default_factory=RunningMean)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(mix_seed(self.seed, self.rank))

    def state_dict(self) -> dict[str, Any]:
        return {
            "rl_step": self.rl_step,
            "batch_prompts": self.batch_prompts,
            "queue": list(self.queue),
            "pending": [
                {"record": g.record, "prompt_ids": g.prompt_ids, "responses": [asdict(r) for r in g.responses], "offsets": g.offsets}
                for g in self.pending
            ],
            "fci_mean": asdict(self.fci_mean),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rl_step = state["rl_step"]
        self.batch_prompts = state["batch_prompts"]
        self.queue = list(state["queue"])
        self.pending = [
            PromptGroup(g["record"], g["prompt_ids"], [Sample(**r) for r in g["responses"]], g["offsets"])
            for g in state["pending"]
        ]
        self.fci_mean = RunningMean(**state["fci_mean"])
        self.generator.set_state(state["generator"])
