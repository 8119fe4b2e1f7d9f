"""docs/architecture.md names the hops of one RL step and one attribution as `file:function`;
each must name a function (or a class's method) that exists, so the map cannot go stale silently."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOP = re.compile(r"`(lit_attn/[\w/]+\.py):([\w.]+)`")


def defines(path: Path, name: str) -> bool:
    """Whether ``path`` defines ``name`` (``func`` or ``Class.method``) at any depth."""
    first, _, method = name.partition(".")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == first:
            if not method:
                return True
            if any(isinstance(n, ast.FunctionDef) and n.name == method for n in node.body):
                return True
    return False


def test_every_hop_of_the_architecture_map_exists():
    hops = set(HOP.findall((ROOT / "docs" / "architecture.md").read_text()))
    assert len(hops) >= 30, "the map lost its hops"
    missing = [f"{f}:{name}" for f, name in sorted(hops) if not (ROOT / f).is_file() or not defines(ROOT / f, name)]
    assert not missing, f"docs/architecture.md names hops that do not exist: {missing}"


def test_the_readme_links_the_map():
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()
