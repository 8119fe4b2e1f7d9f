"""What the AttributionCallback shows of one logging point: a markdown table per example and
the examples × texts heatmap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lit_attn.attribution.examples import AttributionExample
from lit_attn.attribution.result import AttributionResult
from lit_attn.markdown import cell


def result_markdown(example: AttributionExample, result: AttributionResult, step: int) -> str:
    """A markdown table of one attribution: the texts ranked, their scores, ground truth marked."""
    lines = [
        f"**question** {cell(example.question)} — **answer** {cell(result.answer)}"
        + (f" — **reference** {cell(example.reference)}" if example.reference is not None else ""),
        "",
        f"method `{result.method}`, step {step}, {result.seconds:.2f} s"
        + ("; ✓ = ground truth (a text the answer needs)" if example.relevant is not None else ""),
        "",
        result.to_markdown(relevant=example.relevant),
    ]
    return "\n".join(lines)


def heatmap_figure(
    examples: Sequence[AttributionExample], scores: Sequence[Sequence[float]], title: str, k: int = 5
) -> Figure:
    """Examples × texts, each row scaled from its own min (0) to its own max (1).

    Attention scores of different texts can differ by a few percent of their size (0.0211 to
    0.0232, say); scaling a row by its max would paint every cell the same colour. Min-to-max
    scaling shows the ranking whatever the spread. Ground-truth texts are circled and each
    row's top-``k`` texts carry a dot, so a right ranking reads as dots inside circles.

    Built on a bare :class:`~matplotlib.figure.Figure` with the Agg canvas, so it never
    touches pyplot's global state or the user's backend.
    """
    width = max(len(row) for row in scores)
    grid = np.full((len(scores), width), np.nan)
    tops: list[list[int]] = []
    for r, row in enumerate(scores):
        values = np.asarray(row, dtype=float)
        low, high = np.nanmin(values), np.nanmax(values)
        grid[r, : len(values)] = (values - low) / (high - low) if high > low else 0.5
        tops.append(sorted(range(len(values)), key=lambda i: (-values[i], i))[: min(k, len(values))])
    figure = Figure(figsize=(min(3.0 + 0.45 * width, 18), 1.6 + 0.42 * len(scores)))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    truth = [(i, r) for r, example in enumerate(examples) for i in (example.relevant or ())]
    if truth:
        ax.scatter(*zip(*truth), s=90, facecolors="none", edgecolors="white", linewidths=1.6, label="ground truth")
    top = [(i, r) for r, row in enumerate(tops) for i in row]
    ax.scatter(*zip(*top), s=14, c="red", marker="o", linewidths=0, label=f"top-{k}")
    ax.set_xlabel("context text (index)")
    ax.set_ylabel("example")
    if width <= 40:  # beyond that, matplotlib's own ticks stay readable
        ax.set_xticks(range(width))
    ax.set_yticks(range(len(scores)))
    ax.set_title(title, fontsize=9)
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / max(len(scores), 1)), ncol=2, fontsize=8, frameon=False)
    for handle in legend.legend_handles:
        if handle.get_label() == "ground truth":
            handle.set_edgecolor("black")
    figure.colorbar(image, ax=ax, label="score, row min (0) to row max (1)")
    figure.tight_layout()
    return figure
