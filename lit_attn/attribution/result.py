"""What an attribution returns: one score per context text, ranked, printable."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from lit_attn.markdown import cell


def _short(text: str, width: int = 60) -> str:
    """One line of at most ``width`` characters (newlines shown as ``⏎``)."""
    line = text.replace("\n", "⏎")
    return line if len(line) <= width else line[: width - 1] + "…"


@dataclass
class AttributionResult:
    """Scores of the context texts for one answer.

    Attributes:
        contexts: the texts, in the order given.
        question: the question.
        answer: the answer that was attributed (generated greedily when none was given).
        scores: one score per text (higher = more responsible for the answer).
        method: ``"attntrace"``, ``"attention"`` or ``"leave_one_out"``.
        seconds: wall-clock time of the attribution (answer generation included).
        ranking: text indices, best first (ties keep the original order).
        params: the settings that produced the scores.
    """

    contexts: list[str]
    question: str
    answer: str
    scores: list[float]
    method: str
    seconds: float
    ranking: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.contexts):
            raise ValueError(f"{len(self.scores)} scores for {len(self.contexts)} texts")
        if not self.ranking:
            self.ranking = sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))

    def top(self, k: int = 5) -> list[tuple[int, float, str]]:
        """The ``k`` best texts as ``(index, score, text)``."""
        return [(i, self.scores[i], self.contexts[i]) for i in self.ranking[:k]]

    def to_markdown(self, relevant: Iterable[int] | None = None, k: int | None = None) -> str:
        """A ranked markdown table (``k`` rows, default all); ground-truth texts marked ✓."""
        marked = set(relevant or ())
        lines = ["| rank | text | score | true |" if relevant is not None else "| rank | text | score |"]
        lines.append("|---|---|---|---|" if relevant is not None else "|---|---|---|")
        for rank, (i, score, text) in enumerate(self.top(k or len(self.scores)), start=1):
            text_cell = cell(_short(text))
            row = f"| {rank} | [{i}] {text_cell} | {score:.4g} |"
            lines.append(row + (f" {'✓' if i in marked else ''} |" if relevant is not None else ""))
        return "\n".join(lines)

    def to_rich_table(self, relevant: Iterable[int] | None = None, k: int | None = 10) -> Table:
        """A ranked rich table of the ``k`` best texts; ground-truth texts marked ✓."""
        marked = set(relevant or ())
        table = Table(
            title=f"{self.method}: {_short(self.question, 50)}", caption=f"answer: {_short(self.answer, 70)}",
            title_justify="left", caption_justify="left",
        )
        table.add_column("rank", justify="right")
        table.add_column("text", min_width=50)
        table.add_column("score", justify="right")
        if relevant is not None:
            table.add_column("true")
        for rank, (i, score, text) in enumerate(self.top(k or len(self.scores)), start=1):
            cells = [str(rank), f"[{i}] {_short(text)}", f"{score:.4g}"]
            table.add_row(*cells, *(["✓" if i in marked else ""] if relevant is not None else []))
        return table

    def __rich__(self) -> Table:
        return self.to_rich_table()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what the CLI writes per example)."""
        return {
            "question": self.question,
            "answer": self.answer,
            "method": self.method,
            "scores": self.scores,
            "ranking": self.ranking,
            "seconds": self.seconds,
            "params": self.params,
        }
