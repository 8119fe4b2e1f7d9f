"""The built wheel carries callbacks/ as lit_attn.callbacks, the configs and the shipped model."""

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
    assert not any(n.startswith("callbacks/") or n.startswith("tests/") for n in names)
    # Every module of the core and of callbacks/ is in the wheel (a new subpackage must be listed in pyproject).
    for source_dir, installed in (("lit_attn", "lit_attn"), ("callbacks", "lit_attn/callbacks")):
        for module in (ROOT / source_dir).rglob("*.py"):
            wanted = f"{installed}/{module.relative_to(ROOT / source_dir).as_posix()}"
            assert wanted in names, f"{wanted} missing from {wheel.name}"


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
