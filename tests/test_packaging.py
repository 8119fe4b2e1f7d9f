"""The built wheel carries lit_attn with its callbacks, its configs and the shipped model; the
checkout has no folder outside lit_attn/ that the wheel installs under another name."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # Build from a copy so the checkout gets no build/ or egg-info litter.
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True, text=True,
    ).stdout.split("\n")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            dst = build / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(build)],
        check=True,
    )
    (found,) = out.glob("lit_attn-*.whl")
    return found


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "lit_attn/__init__.py",
        "lit_attn/callbacks/__init__.py",
        "lit_attn/callbacks/export.py",
        "lit_attn/configs/default.yaml",
        "lit_attn/configs/grpo.yaml",
        "lit_attn/default_model/config.json",
        "lit_attn/default_model/model.safetensors",
        "lit_attn/default_model/tokenizer.json",
        "lit_attn/default_model/lit_attn_export.json",  # ExportPolicy's marker: `sft` may replace the folder
    ):
        assert required in names, f"{required} missing from {wheel.name}"
    assert all(n.startswith(("lit_attn/", "lit_attn-")) for n in names), sorted(names)
    # Every module and shipped config of the package is in the wheel (a new subpackage must be listed in pyproject).
    for pattern in ("*.py", "configs/*.yaml"):
        for source in (ROOT / "lit_attn").rglob(pattern):
            wanted = source.relative_to(ROOT).as_posix()
            assert wanted in names, f"{wanted} missing from {wheel.name}"


def test_the_package_is_its_own_folder():
    """No package of the wheel is mapped from a folder of another name (issue 22: an error message
    named lit_attn/callbacks/branching.py while the file sat in callbacks/)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "package-dir" not in pyproject
    assert not (ROOT / "callbacks").exists() and not (ROOT / "configs").exists()
    for package in ("callbacks", "configs"):
        assert (ROOT / "lit_attn" / package / "__init__.py").is_file()


def test_installed_wheel_imports_callbacks_and_finds_its_files(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True
    )
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import lit_attn, lit_attn.callbacks as cb;"
        "from lit_attn.callbacks import ExportPolicy;"
        "from lit_attn.cli import packaged_config;"
        "from lit_attn.models import resolve_model_path;"
        "print(lit_attn.__file__); print(cb.__file__);"
        "print(packaged_config('default.yaml').is_file()); print(resolve_model_path('default'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(site)], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert all(line.startswith(str(site)) for line in (out[0], out[1], out[3])), out
    assert out[2] == "True"
