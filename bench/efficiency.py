"""AttnRL vs GRPO vs TreeRL vs the early-steps ablation: held-out accuracy against generated tokens.

Each method runs its shipped config (configs/default.yaml = GRPO, configs/attnrl.yaml,
configs/treerl.yaml; ``early`` = configs/attnrl.yaml with ``selection: early``) on the same
shipped model and the same built-in task setting (``--data``, applied to every method), with
the same budget of generated tokens, for several seeds. A probe callback measures held-out
greedy pass@1 (all held-out prompts) every ``budget / points`` generated tokens and stops the
run at the budget. Prints a markdown table and writes docs/bench_efficiency.md (+ .json, +
.png with accuracy against tokens and against training seconds):

    python bench/efficiency.py                          # 3 seeds, 4 methods, 2 runs at a time
    python bench/efficiency.py --budget 300000 --seeds 0 --points 3 --methods grpo attnrl   # a quick look
    python bench/efficiency.py --hard --budget 300000 --points 3   # hard prompts only (see below)

``--hard`` keeps only the prompts the shipped model answers wrong greedily, for training and
held out alike: on the default setting their sampled pass rate is about 0.18 and about a third
of groups of 8 are all wrong — the regime exploration is for. Held-out accuracy then starts at 0.

Goal (issue): AttnRL reaches GRPO's final accuracy with ≤ 0.6× the tokens and beats TreeRL.
Each run is a subprocess with one torch thread; ``--parallel`` runs go side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"grpo": "default.yaml", "attnrl": "attnrl.yaml", "treerl": "treerl.yaml", "early": "attnrl.yaml"}
COLORS = {"grpo": "C0", "attnrl": "C3", "treerl": "C2", "early": "C1"}
KEEP_CALLBACKS = ("AttentionBranchCallback", "EntropyBranchCallback")

# ---------------------------------------------------------------------------------------------
# The probe, loaded by the Lightning CLI inside each run (module bench/efficiency.py on PYTHONPATH)

from lightning import Callback  # noqa: E402

from lit_attn.config_files import load_config  # noqa: E402


class TokenBudgetProbe(Callback):
    """Held-out pass@1 every ``every`` generated tokens; stops the run at ``budget`` tokens.

    Writes ``[{"tokens", "accuracy", "seconds"}, ...]`` to ``out`` (JSON) after each measurement.
    """

    def __init__(self, budget: int, every: int, out: str) -> None:
        self.budget, self.every, self.out = budget, every, out
        self.points: list[dict] = []
        self.next_at = 0
        self.start = 0.0
        self.eval_seconds = 0.0

    def _measure(self, trainer, module) -> None:
        from lit_attn.evaluation import greedy_pass_at_1

        t0 = time.perf_counter()
        records = trainer.datamodule.val_records()
        scores, _ = greedy_pass_at_1(
            module.model, module.tokenizer, records, module.reward_set.funcs[0],
            max_new_tokens=module.max_new_tokens, batch_size=module.evaluation.batch_size,
        )
        self.eval_seconds += time.perf_counter() - t0
        self.points.append({
            "tokens": module.tokens_generated,
            "accuracy": float(scores.nan_to_num(0).mean()),
            "seconds": time.perf_counter() - self.start - self.eval_seconds,
            "rl_steps": trainer.fit_loop.epoch_loop.batch_progress.total.completed,
        })
        Path(self.out).write_text(json.dumps(self.points))
        self.next_at += self.every

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()
        self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.tokens_generated >= self.next_at:
            self._measure(trainer, pl_module)
        if pl_module.tokens_generated >= self.budget:
            trainer.should_stop = True


# ---------------------------------------------------------------------------------------------


def hard_split(data: dict, pool: int, held_out: int, workdir: Path) -> dict:
    """Rate ``pool`` training and ``held_out`` held-out prompts of the built-in task with the
    shipped model (greedy), keep the wrong ones, write them as JSONL; returns the data overrides
    that point every run at them."""
    import torch

    from lit_attn.data import PromptDataModule
    from lit_attn.evaluation import greedy_pass_at_1
    from lit_attn.models import load_policy
    from lit_attn.rewards import task_reward

    torch.manual_seed(0)
    model, tokenizer = load_policy()
    max_new_tokens = load_config(ROOT / "configs" / "default.yaml")["model"]["sampling"]["max_new_tokens"]
    splits = PromptDataModule(**{**data, "train_size": pool, "val_size": held_out})._load()
    counts: list[str] = []
    out: dict = {"counts": counts}
    for name in ("train", "val"):
        records = splits[name]
        scores, _ = greedy_pass_at_1(model, tokenizer, records, task_reward, max_new_tokens=max_new_tokens)
        hard = [r for r, s in zip(records, scores.tolist()) if s < 1.0]
        counts.append(f"{len(hard)} of {len(records)} {'training' if name == 'train' else 'held-out'} prompts")
        path = workdir / f"hard_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in hard))
        print(f"hard {name}: {len(hard)} of {len(records)} prompts answered wrong greedily", flush=True)
        out[f"{name}_path"] = str(path)
    return out


def run_config(method: str, seed: int, budget: int, points: int, workdir: Path, data: dict) -> Path:
    """Write the merged YAML of one run; returns the JSON path the probe will write."""
    config = load_config(ROOT / "configs" / METHODS[method])
    out = workdir / f"{method}_seed{seed}.json"
    callbacks = [c for c in config["trainer"]["callbacks"] if c["class_path"].split(".")[-1] in KEEP_CALLBACKS]
    for c in callbacks:
        c.setdefault("init_args", {})["seed"] = seed
        if method == "early":
            c["init_args"]["selection"] = "early"
    config["data"].update(data)
    callbacks.append({
        "class_path": "efficiency.TokenBudgetProbe",
        "init_args": {"budget": budget, "every": budget // points, "out": str(out)},
    })
    config["seed_everything"] = seed
    config["trainer"].update(
        callbacks=callbacks, max_steps=10**6, val_check_interval=None, limit_val_batches=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        logger=False, default_root_dir=str(workdir / f"{method}_{seed}"),
    )
    config["trainer"].pop("check_val_every_n_epoch", None)
    config["model"]["evaluation"]["validate_at_start"] = False
    config["model"]["seed"] = seed
    config["data"]["seed"] = config["data"].get("seed", 0)  # same data for every method and seed
    path = workdir / f"{method}_seed{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def finished(out: Path, budget: int) -> bool:
    """Whether a run's probe file already reaches the budget (a run to reuse with --workdir)."""
    return out.exists() and json.loads(out.read_text())[-1]["tokens"] >= budget


def launch(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'bench'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lit_attn", "fit", f"--config={config}"], cwd=ROOT, env=env,
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )


def tokens_to_reach(curve: list[dict], target: float) -> float | None:
    """Generated tokens at the first measurement with accuracy ≥ target (None if never)."""
    for point in curve:
        if point["accuracy"] >= target - 1e-9:
            return point["tokens"]
    return None


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def report(results: dict[str, dict[int, list[dict]]], args: argparse.Namespace, wall: float) -> str:
    lines = [
        "# AttnRL vs GRPO vs TreeRL vs early steps: held-out accuracy against generated tokens",
        "",
        f"Command: `python bench/efficiency.py --budget {args.budget} --seeds {' '.join(map(str, args.seeds))} "
        f"--points {args.points} --parallel {args.parallel} --methods {' '.join(args.methods)}"
        + (f" --data {args.data}" if args.data else "")
        + (f" --hard --hard-pool {' '.join(map(str, args.hard_pool))}`" if args.hard else "`"),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; each run one "
        f"torch thread, {args.parallel} runs side by side; whole benchmark {wall / 60:.1f} min. Model: the shipped tiny "
        f"Qwen2; task: the built-in facts + arithmetic chain as the shipped configs set it"
        + (f", with `{args.data}`" if args.data else "") + " for every method"
        + (f", hard prompts only (those the shipped model answers wrong greedily: {args.hard_counts})" if args.hard else "")
        + "; held-out greedy pass@1 over the held-out prompts. "
        "Each method uses its shipped config (GRPO: configs/default.yaml, G = 8; "
        "AttnRL: configs/attnrl.yaml, TreeRL: configs/treerl.yaml and the early-steps ablation (AttnRL with "
        "`selection: early`), G = 6 with trees) and the same budget of generated tokens.",
        "",
        "| method | seeds | " + " | ".join(f"acc @ {p}" for p in _grid(args)) + " | RL steps | train s (no eval) |",
        "|---|---|" + "---|" * len(_grid(args)) + "---|---|",
    ]
    for method, runs in results.items():
        curves = list(runs.values())
        cells = []
        for i in range(len(_grid(args))):
            vals = [c[i]["accuracy"] for c in curves if len(c) > i]
            cells.append(f"{mean(vals):.3f} ± {std(vals):.3f}" if vals else "—")
        steps = mean([c[-1]["rl_steps"] for c in curves])
        secs = mean([c[-1]["seconds"] for c in curves])
        lines.append(f"| {method} | {len(curves)} | " + " | ".join(cells) + f" | {steps:.0f} | {secs:.0f} |")
    lines.append("")
    lines.append("Token columns are the probe's schedule; each measurement happens at the first step end at or past "
                 "it, so the exact token counts per point are in docs/bench_efficiency.json.")
    grpo_final = mean([c[-1]["accuracy"] for c in results.get("grpo", {}).values()])
    if "grpo" in results:
        lines += ["", f"GRPO's final accuracy (mean over seeds): **{grpo_final:.3f}**.", ""]
        lines.append("| method | tokens to reach GRPO's final accuracy (per seed) | ratio to GRPO's budget |")
        lines.append("|---|---|---|")
        for method, runs in results.items():
            reach = [tokens_to_reach(c, grpo_final) for c in runs.values()]
            shown = ", ".join("never" if r is None else f"{r / 1e6:.2f}M" for r in reach)
            done = [r for r in reach if r is not None]
            ratio = f"{mean(done) / args.budget:.2f}" if len(done) == len(reach) else "—"
            lines.append(f"| {method} | {shown} | {ratio} |")
    return "\n".join(lines) + "\n"


def _grid(args: argparse.Namespace) -> list[str]:
    return [f"{(args.budget // args.points) * i / 1e6:.2f}M" for i in range(args.points + 1)]


def plot(results: dict[str, dict[int, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for method, runs in results.items():
        for seed, curve in runs.items():
            label = method if seed == min(runs) else None
            acc = [p["accuracy"] for p in curve]
            axes[0].plot([p["tokens"] / 1e6 for p in curve], acc, marker="o", color=COLORS[method], alpha=0.7, label=label)
            axes[1].plot([p["seconds"] / 60 for p in curve], acc, marker="o", color=COLORS[method], alpha=0.7, label=label)
    axes[0].set_xlabel("generated tokens (M)")
    axes[1].set_xlabel("training minutes (evaluation excluded)")
    axes[0].set_ylabel("held-out pass@1")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=1_200_000, help="generated tokens per run")
    parser.add_argument("--points", type=int, default=4, help="measurements after the one at 0 tokens")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_efficiency.md")
    parser.add_argument("--data", default="", help="task settings for every method over the shipped configs' "
                        "data section (which all methods share), key=value,...; default: none")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep every run's files here (default: a temporary folder); runs already finished there are reused")
    parser.add_argument("--hard", action="store_true",
                        help="train and hold out only prompts the shipped model answers wrong greedily")
    parser.add_argument("--hard-pool", type=int, nargs=2, default=[2400, 440], metavar=("TRAIN", "HELD_OUT"),
                        help="with --hard: built-in prompts rated for each split")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=") for item in args.data.split(",") if item)}
    data = {**load_config(ROOT / "configs" / "default.yaml")["data"], **overrides}  # the setting every method trains on

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.hard:
            saved = workdir / "hard.json"
            if saved.exists():
                paths = json.loads(saved.read_text())
            else:
                paths = hard_split(data, *args.hard_pool, workdir)
                saved.write_text(json.dumps(paths))
            args.hard_counts = ", ".join(paths.pop("counts"))
            data.update(paths)
        jobs = [
            (m, s, run_config(m, s, args.budget, args.points, workdir, data))
            for s in args.seeds for m in args.methods if not finished(workdir / f"{m}_seed{s}.json", args.budget)
        ]
        running: list[tuple[str, int, subprocess.Popen, Path]] = []
        while jobs or running:
            while jobs and len(running) < args.parallel:
                method, seed, config = jobs.pop(0)
                log = workdir / f"{method}_{seed}.log"
                running.append((method, seed, launch(config, log), log))
                print(f"started {method} seed {seed}", flush=True)
            time.sleep(2)
            for item in list(running):
                method, seed, proc, log = item
                if proc.poll() is not None:
                    running.remove(item)
                    if proc.returncode:
                        sys.exit(f"{method} seed {seed} failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
                    print(f"finished {method} seed {seed}", flush=True)
        results: dict[str, dict[int, list[dict]]] = {m: {} for m in args.methods}
        for method in args.methods:
            for seed in args.seeds:
                results[method][seed] = json.loads((workdir / f"{method}_seed{seed}.json").read_text())
    wall = time.perf_counter() - start
    text = report(results, args, wall)
    print(text)
    args.out.write_text(text + f"\n![accuracy vs tokens and vs training time]({args.out.with_suffix('.png').name})\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
