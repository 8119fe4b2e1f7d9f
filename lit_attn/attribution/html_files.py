"""Writing the attribution pages to disk: whole files only, and the AttributionCallback's folder.

:func:`write_text_atomic` writes a temporary file in the target's folder and renames it over
the target (``os.replace``): a reader never sees half a page and a failure leaves no partial
file. The page gets the mode ``open(path, "w")`` would give it, ``0o666 & ~umask``.

The callback's folder (``<run dir>/attribution/``) holds, per logging point,
``step_<step:06d>.html`` and ``step_<step:06d>.json`` (its scalars), and ``index.html``,
rebuilt from every ``step_*.json`` in the folder at each point, so a resumed run's index lists
the points written before the interruption too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from lit_attn.attribution.html_report import render_index

INDEX = "index.html"
"""The page that lists the callback's logging points."""


def _umask() -> int:
    """The process's umask (set and restored at once: os offers no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder renamed over
    it; the file ends with mode ``0o666 & ~umask``. Missing parent folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def step_name(step: int) -> str:
    """``step_000020`` for step 20: the stem of a logging point's page and scalars."""
    return f"step_{step:06d}"


def write_step_page(folder: Path, step: int, page: str, scalars: Mapping[str, float], title: str) -> Path:
    """Write one logging point's page and scalars into ``folder``, then rebuild ``index.html``
    (titled ``title``) from every point there. Returns the page's path."""
    stem = step_name(step)
    page_path = folder / f"{stem}.html"
    write_text_atomic(page_path, page)
    write_text_atomic(folder / f"{stem}.json", json.dumps({"step": step, "scalars": dict(scalars)}, indent=1) + "\n")
    points = []
    for path in sorted(folder.glob("step_*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        points.append((int(record["step"]), f"{path.stem}.html", record["scalars"]))
    write_text_atomic(folder / INDEX, render_index(title, points))
    return page_path
