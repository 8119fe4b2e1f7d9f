"""The value a step passes between its stages and its branch rule: :class:`PromptGroup`."""

from __future__ import annotations

from dataclasses import dataclass, field

from lit_attn.tree import Sample


@dataclass
class PromptGroup:
    """A prompt, its G sampled responses, and the branch offsets chosen for each (``[]`` = not
    expanded)."""

    record: dict
    prompt_ids: list[int]
    responses: list[Sample]
    offsets: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.offsets:
            self.offsets = [[] for _ in self.responses]
