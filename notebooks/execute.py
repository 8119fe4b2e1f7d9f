"""Execute every notebook in this folder in a fresh kernel and store the outputs in place, so
that a reader who opens one on the web sees its results and pictures::

    python notebooks/execute.py            # all notebooks
    python notebooks/execute.py attribution.ipynb

tests/test_notebooks.py checks that the committed notebooks are executed and still run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]


def execute(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    for cell in notebook.cells:
        cell.get("metadata", {}).pop("execution", None)  # timings change every run; keep diffs to real changes
        if cell.cell_type == "code":  # warnings and progress bars name this machine's paths; results stay
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    nbformat.write(notebook, path)
    print(f"executed {path.relative_to(ROOT)}")


def main(names: list[str]) -> None:
    here = Path(__file__).resolve().parent
    paths = [here / name for name in names] if names else sorted(here.glob("*.ipynb"))
    for path in paths:
        execute(path)


if __name__ == "__main__":
    main(sys.argv[1:])
