"""The GPU path, checked in a few minutes: short bf16 fits of GRPO (lit_attn/configs/default.yaml) and
AttnRL (lit_attn/configs/attnrl.yaml) on the shipped model with both callbacks firing (exploration and
AttributionCallback), then the same AttnRL fit on 2 GPUs with DDP when more than one is
visible. Prints each run's step time and peak GPU memory. CI never needs it; run it whenever
a GPU machine is at hand:

    bash bench/gpu_check.sh                 # or: python bench/gpu_check.py
    python bench/gpu_check.py --accelerator cpu --precision 32-true --steps 2   # the script itself, on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Loaded by the CLI inside each run (module ``gpu_check`` on PYTHONPATH)

from lightning import Callback  # noqa: E402

from lit_attn.config_files import load_config  # noqa: E402


class StepStats(Callback):
    """Wall time of every training step and the peak accelerator memory, written as JSON."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.times: list[float] = []
        self.start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        attribution = sorted(next((cb.last_metrics for cb in trainer.callbacks if getattr(cb, "last_metrics", None)), {}))
        exploration = [k for k in metrics if k.startswith("branching/")]
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps({
                "step_seconds": self.times, "peak_gib": peak, "attribution_tags": attribution,
                "branching_tags": exploration, "reward": metrics.get("reward"),
            }))


# ---------------------------------------------------------------------------------------------


def write_config(name: str, workdir: Path, args: argparse.Namespace, devices: int) -> tuple[Path, Path]:
    config = load_config(ROOT / "lit_attn" / "configs" / name)
    out = workdir / f"{name}_{devices}.json"
    trainer = config["trainer"]
    trainer.update(
        accelerator=args.accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto",
        precision=args.precision, max_steps=args.steps, val_check_interval=None, limit_val_batches=0,
        enable_progress_bar=False, default_root_dir=str(workdir / f"{name}_{devices}"), logger=False,
    )
    callbacks = []
    for callback in trainer["callbacks"]:
        kind = callback["class_path"].rsplit(".", 1)[-1]
        if kind in ("RichProgressBar", "ModelCheckpoint"):
            continue
        if kind == "AttributionCallback":
            callback["init_args"].update(every_n_train_steps=2, at_train_start=True, num_examples=2)
        callbacks.append(callback)
    callbacks.append({"class_path": "gpu_check.StepStats", "init_args": {"out": str(out)}})
    trainer["callbacks"] = callbacks
    trainer["enable_checkpointing"] = False
    config["model"]["evaluation"]["validate_at_start"] = False
    config["model"]["update"]["micro_batch_size"] = args.micro_batch_size
    path = workdir / f"{name}_{devices}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, out


def run(config: Path, log: Path) -> float:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'bench'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.run([sys.executable, "-m", "lit_attn", "fit", f"--config={config}"], cwd=ROOT, env=env,
                              stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"{config.name} failed (exit {proc.returncode}):\n{log.read_text()[-4000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="model.update.micro_batch_size of every run")
    args = parser.parse_args()

    import torch

    gpus = torch.cuda.device_count() if args.accelerator == "gpu" else 0
    if args.accelerator == "gpu" and gpus == 0:
        sys.exit("no CUDA device visible; run with --accelerator cpu --precision 32-true to check the script alone")
    if gpus:
        print(f"{gpus} GPU(s): {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    runs = [("default.yaml", 1), ("attnrl.yaml", 1)] + ([("attnrl.yaml", 2)] if gpus > 1 else [])
    rows = ["| config | devices | precision | steps | mean step s (after the first) | peak GiB | callbacks fired | wall s |",
            "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, devices in runs:
            config, out = write_config(name, workdir, args, devices)
            wall = run(config, workdir / f"{name}_{devices}.log")
            stats = json.loads(out.read_text())
            times = stats["step_seconds"][1:] or stats["step_seconds"]
            fired = ("attribution" if stats["attribution_tags"] else "") + (" + branching" if stats["branching_tags"] else "")
            rows.append(f"| {name} | {devices} | {args.precision} | {len(stats['step_seconds'])} | "
                        f"{sum(times) / len(times):.2f} | {stats['peak_gib']:.2f} | {fired or 'none'} | {wall:.0f} |")
            print(rows[-1], flush=True)
    if gpus < 2:
        print(f"{gpus} GPU(s) visible: the 2-GPU DDP run was skipped")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
