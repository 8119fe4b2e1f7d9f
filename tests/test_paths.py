"""Every repository path the code, the configs and the docs show exists in a checkout (issue 22:
an error message named lit_attn/callbacks/branching.py while the file sat in callbacks/)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A path into one of the checkout's top folders, as prose, a docstring, an error message or a command shows it.
SHOWN_PATH = re.compile(r"(?<![\w/.\-])((?:lit_attn|bench|docs|examples|tests|notebooks|configs|callbacks)/[\w/.\-]*\w)")


def shown_paths() -> dict[str, list[str]]:
    """Each path shown in a tracked or new text file → the files that show it."""
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard",
         "*.py", "*.md", "*.yaml", "*.ipynb", ".ci/run", "pyproject.toml"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    found: dict[str, list[str]] = {}
    for name in names:
        if not (ROOT / name).is_file():
            continue
        for match in SHOWN_PATH.finditer((ROOT / name).read_text(encoding="utf-8")):
            found.setdefault(match.group(1), []).append(name)
    return found


def exists(shown: str) -> bool:
    """``shown`` is a file or folder of the checkout, or the stem of some (``--out docs/bench_branching``)."""
    path = ROOT / shown.split("::")[0]
    return path.exists() or any(path.parent.glob(f"{path.name}.*"))


def test_every_shown_path_exists_in_a_checkout():
    found = shown_paths()
    assert "lit_attn/callbacks/branching.py" in found and "lit_attn/configs/attnrl.yaml" in found
    missing = {path: files[:3] for path, files in found.items() if not exists(path)}
    assert not missing, f"paths shown that a checkout lacks: {missing}"
