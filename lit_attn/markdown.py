"""Markdown for TensorBoard text panels and reports."""

from __future__ import annotations


def cell(text: object) -> str:
    """``text`` as one markdown table cell: pipes escaped, newlines as ``<br>``."""
    return str(text).replace("|", "\\|").replace("\n", "<br>")
