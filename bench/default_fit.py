"""Evidence for the embedded default: held-out accuracy before and after `fit` on this machine.

Runs the README's main job (`python -m lit_attn fit --config configs/default.yaml`) in a
fresh run directory, then reads TensorBoard: greedy held-out pass@1 at step 0 and at every
validation, with cumulative generated tokens and wall-clock time, and the AttributionCallback's
``attribution/relevant_share`` (the share of AttnTrace's credit that lands on the facts the
question needs) beside it. Prints a table, draws both curves to docs/default_fit.png and
writes docs/default_fit.md with the command. Run::

    python bench/default_fit.py                       # ~10 minutes on 2 CPU cores
    python bench/default_fit.py --trainer.max_steps=20   # extra arguments go to `fit`
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def main(extra: list[str]) -> None:
    run_dir = ROOT / "runs" / f"bench-default-fit-{int(time.time())}"
    command = [sys.executable, "-m", "lit_attn", "fit", "--config", "configs/default.yaml",
               f"--trainer.logger.init_args.save_dir={run_dir}", f"--trainer.default_root_dir={run_dir}", *extra]
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.time() - start

    events = next(run_dir.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    first_wall = min(e.wall_time for e in acc.Scalars("reward"))
    tokens = {e.step: e.value for e in acc.Scalars("tokens/generated")}
    rows = []
    for e in acc.Scalars("val/pass@1"):
        # step 0 is validate_at_start, before any generation; later validations follow step e.step
        generated = 0.0 if not rows and e.step == 0 else max((v for s, v in tokens.items() if s <= e.step), default=0.0)
        rows.append((e.step, int(generated), e.value, max(0.0, e.wall_time - first_wall)))
    table = ["| step | tokens generated | held-out pass@1 | seconds since first step |", "|---|---|---|---|"]
    table += [f"| {s} | {t} | {p:.3f} | {w:.0f} |" for s, t, p, w in rows]
    share = {e.step: e.value for e in acc.Scalars("attribution/relevant_share")} if "attribution/relevant_share" in acc.Tags()["scalars"] else {}
    precision = {e.step: e.value for e in acc.Scalars("attribution/precision_at_k")} if share else {}
    _plot(rows, share, precision)
    if share:
        table.append("")
        table.append("| step | attribution/relevant_share | attribution/precision_at_k |")
        table.append("|---|---|---|")
        table += [f"| {s} | {v:.3f} | {precision.get(s, float('nan')):.3f} |" for s, v in sorted(share.items())]
    rewards = [e.value for e in acc.Scalars("reward")]
    k = max(1, len(rewards) // 10)
    summary = (
        f"Held-out greedy pass@1 (200 prompts): **{rows[0][2]:.3f} before → {rows[-1][2]:.3f} after** "
        f"{rows[-1][0]} steps; training reward (mean of first / last {k} steps): "
        f"{sum(rewards[:k]) / k:.3f} → {sum(rewards[-k:]) / k:.3f}. Whole command: {wall / 60:.1f} min wall-clock."
    )
    shown = " ".join(["python", "-m", "lit_attn", "fit", "--config", "configs/default.yaml", *extra])
    text = "\n".join(table)
    print(text)
    print(summary)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads default, Python {platform.python_version()}"
    (ROOT / "docs" / "default_fit.md").write_text(
        "# The embedded default `fit`: held-out accuracy before and after\n\n"
        f"Command: `{shown}`, run by `{('python bench/default_fit.py ' + ' '.join(extra)).strip()}`.\n\n"
        f"Machine: {machine}. Model: the shipped tiny Qwen2 (lit_attn/default_model); task: the "
        "built-in facts + arithmetic chain, held-out split of 200 prompts, greedy decoding.\n\n"
        f"{summary}\n\n![held-out pass@1 and attribution relevant share](default_fit.png)\n\n{text}\n"
    )
    print("wrote docs/default_fit.md")


def _plot(rows: list[tuple], share: dict[int, float], precision: dict[int, float]) -> None:
    """val/pass@1 and attribution/relevant_share (and precision@k) against step, one figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 3.8))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot([r[0] for r in rows], [r[2] for r in rows], marker="o", markersize=3, label="val/pass@1 (held-out, greedy)")
    if share:
        steps = sorted(share)
        ax.plot(steps, [share[s] for s in steps], marker="s", markersize=3, label="attribution/relevant_share (AttnTrace)")
        ax.plot(steps, [precision[s] for s in steps], marker="^", markersize=3, linestyle="--",
                label="attribution/precision_at_k")
    ax.set_xlabel("RL step")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("python -m lit_attn fit (embedded default), 2 CPU cores", fontsize=9)
    figure.tight_layout()
    figure.savefig(ROOT / "docs" / "default_fit.png", dpi=110)
    print("wrote docs/default_fit.png")


if __name__ == "__main__":
    main(sys.argv[1:])
