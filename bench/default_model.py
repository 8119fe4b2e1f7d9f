"""What the shipped default model can do: held-out accuracy, format, lookups, and its training curves.

Evaluates a model (default: the shipped ``lit_attn/default_model``) on held-out built-in
examples drawn from seeds the warm start never used:

1. greedy pass@1 and the share of completions in the task's format, for every count of
   operations (1-6) and several counts of distractor facts, and on the 50-text long contexts;
2. at every lookup (a fact key ``m=`` in the reference solution, teacher-forced): lookup
   accuracy, the attention mass of the supervised heads on the right fact, the mean mass of
   all heads, and the lookup accuracy with the supervised heads switched off (their output
   zeroed) — the check that the answers depend on what those heads read;
3. with ``--events DIR`` (the warm start's TensorBoard run), the training curves of lookup
   accuracy and of the attention mass on the right fact, drawn to docs/default_model.png.

Writes docs/default_model_eval.md (tables and the command). Run::

    python bench/default_model.py --events runs/sft/version_0    # ~5 minutes on 2 CPU cores
    python bench/default_model.py --quick --no-write             # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "default_model_eval.md"
PLOT = ROOT / "docs" / "default_model.png"
DISTRACTORS = (0, 3, 8, 20)


def grid(model_path: str, count: int) -> list[dict]:
    """Greedy pass@1 and format share per (operations, distractors), and on long contexts."""
    from lit_attn.models import load_policy
    from lit_attn.tasks import MAX_FACTS, MAX_OPS, FactChainTask, make_split
    from lit_attn.tasks.warm_start import held_out_set

    model, tokenizer = load_policy(model_path)
    rows = []
    cells = [(ops, d) for ops in range(1, MAX_OPS + 1) for d in DISTRACTORS if ops + 1 + d <= MAX_FACTS]
    for ops, distractors in cells:
        records = make_split(FactChainTask(num_ops=ops, num_distractors=distractors), count, seed=f"bench-model-{ops}-{distractors}")
        rows.append(_score(model, tokenizer, records, f"{ops} op / {distractors} distractors"))
    long = held_out_set("long_50", count, seed=1)
    rows.append(_score(model, tokenizer, long, "3 op / 50 texts (long context)"))
    return rows


def _score(model, tokenizer, records: list[dict], name: str) -> dict:
    """Greedy pass@1 and the share of completions in the task's format, on ``records``."""
    from lit_attn.evaluation import greedy_pass_at_1
    from lit_attn.rewards import task_reward
    from lit_attn.tasks import in_format

    started = time.time()
    scores, completions = greedy_pass_at_1(model, tokenizer, records, task_reward, max_new_tokens=160, batch_size=50)
    formatted = [in_format(c, r["question"]) for c, r in zip(completions, records)]
    row = {"set": name, "examples": len(records), "pass@1": float(scores.mean()),
           "in format": sum(formatted) / len(formatted), "seconds": time.time() - started}
    print(row, flush=True)
    return row


def lookups(model_path: str, count: int) -> list[dict]:
    """Teacher-forced lookup accuracy and attention on the right fact, with and without the supervised head."""
    from lit_attn.sft import SFTModule
    from lit_attn.tasks.warm_start import HELD_OUT_SETS, held_out_set

    import yaml

    settings = yaml.safe_load((ROOT / "lit_attn" / "configs" / "sft.yaml").read_text())["model"]
    module = SFTModule(name_or_path=model_path, lookup_layer=settings["lookup_layer"], lookup_heads=settings["lookup_heads"])
    model = module.model.eval()
    layer, heads = module.lookup_layer, settings["lookup_heads"]
    attention = model.model.layers[layer].self_attn
    head_dim = attention.head_dim

    def silence(_module, args):
        hidden = args[0].clone()
        hidden[..., : heads * head_dim] = 0
        return (hidden,)

    rows = []
    for name in HELD_OUT_SETS:
        records = held_out_set(name, count, seed=1)
        result = {"set": name, "examples": len(records)}
        for label in ("", " (heads off)"):
            hook = attention.o_proj.register_forward_pre_hook(silence) if label else None
            try:
                module.val_metrics.clear()
                for start in range(0, len(records), 16):
                    module.lookup_metrics(records[start : start + 16], "")
                values = {k: float(m.compute()) for k, m in module.val_metrics.items()}
            finally:
                if hook is not None:
                    hook.remove()
            result["lookup accuracy" + label] = values["lookup_accuracy"]
            if not label:
                result["supervised heads on right fact"] = values["fact_attention"]
                result["all heads on right fact"] = values["fact_attention_all_heads"]
        print(result, flush=True)
        rows.append(result)
    return rows


def curves(events_dir: Path) -> str:
    """Draw lookup accuracy and fact attention per held-out set against step; returns a table."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events_dir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    sets = sorted({t.split("/")[1] for t in tags if t.startswith("val/") and t.count("/") == 2})
    figure = Figure(figsize=(11, 3.6))
    FigureCanvasAgg(figure)
    panels = [("lookup_accuracy", "lookup accuracy (teacher-forced)"),
              ("fact_attention", "supervised heads: mass on the right fact"),
              ("fact_attention_all_heads", "all heads: mean mass on the right fact")]
    table = ["| step | " + " | ".join(f"{s} lookup acc / head mass" for s in sets) + " |", "|---" * (len(sets) + 1) + "|"]
    by_step: dict[int, list[str]] = {}
    for i, (metric, title) in enumerate(panels):
        ax = figure.add_subplot(1, 3, i + 1)
        for name in sets:
            points = acc.Scalars(f"val/{name}/{metric}")
            ax.plot([p.step for p in points], [p.value for p in points], marker="o", markersize=3, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("warm-start step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    for name in sets:
        for a, h in zip(acc.Scalars(f"val/{name}/lookup_accuracy"), acc.Scalars(f"val/{name}/fact_attention")):
            by_step.setdefault(a.step, []).append(f"{a.value:.2f} / {h.value:.2f}")
    table += [f"| {step} | " + " | ".join(cells) + " |" for step, cells in sorted(by_step.items())]
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)
    print(f"wrote {PLOT}")
    return "\n".join(table)


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model directory (default: the shipped model)")
    parser.add_argument("--events", type=Path, default=None, help="the warm start's TensorBoard run directory")
    parser.add_argument("--examples", type=int, default=100, help="examples per cell")
    parser.add_argument("--quick", action="store_true", help="10 examples per cell")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(2)
    count = 10 if args.quick else args.examples
    started = time.time()
    accuracy = grid(args.model, count)
    lookup = lookups(args.model, count)
    curve = curves(args.events) if args.events else None
    command = "python bench/default_model.py" + (" --events runs/sft/version_0" if args.events else "")
    text = (
        "# The shipped default model on held-out examples\n\n"
        f"Command: `{command}` ({datetime.date.today()}, {platform.machine()}, 2 torch threads, "
        f"{(time.time() - started) / 60:.1f} min). Model: `{args.model}`. Every example is drawn from seeds the "
        "warm start never used. Explanation: [default_model.md](default_model.md).\n\n"
        "## Greedy pass@1 and format, by operations and distractor facts\n\n"
        f"{_table(accuracy)}\n\n"
        "## Lookups (teacher-forced reference solutions)\n\n"
        "At each fact key `m=` of the reference solution: does the model predict the right value, how much "
        "attention the supervised heads and all heads put on the right fact's text, and the lookup accuracy "
        "with the supervised heads' output zeroed.\n\n"
        f"{_table(lookup)}\n"
    )
    if curve:
        text += f"\n## Training curves\n\n![warm-start curves](default_model.png)\n\n{curve}\n"
    print(text)
    if not args.no_write:
        DOC.write_text(text)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    sys.exit(main())
