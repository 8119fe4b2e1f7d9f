"""bench/default_fit.py --explain: the callback's probes attributed again at both ends of a run,
counted by kind of text (docs/default_fit.md, "Where the credit moved")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

from lit_attn.config_files import load_config, set_callback_args
from lit_attn.models import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]


def test_explain_counts_top_k_slots_by_kind_and_lists_changed_probes(tmp_path):
    spec = importlib.util.spec_from_file_location("default_fit_bench", ROOT / "bench" / "default_fit.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    config = load_config(ROOT / "lit_attn" / "configs" / "default.yaml")
    set_callback_args(config, "AttributionCallback", num_examples=2, num_subsamples=3, max_new_tokens=12)
    config["data"].update(val_size=4, train_size=20)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "policy").symlink_to(resolve_model_path("default"))  # the "end" is the start: nothing moves
    text = bench.explain(tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| ")}
    slots = [(int(rows[kind][0]), int(rows[kind][1])) for kind in bench.KINDS]
    assert sum(a for a, _ in slots) == 2 * 7 and all(a == b for a, b in slots)  # 2 probes × top-7, same both ends
    shares = [float(rows[kind][2]) for kind in bench.KINDS]
    assert abs(sum(shares) - 1) < 2e-3 and shares == [float(rows[kind][3].rstrip(" |")) for kind in bench.KINDS]
    assert text.rstrip().endswith("- none")
