"""AttnRL vs GRPO vs TreeRL vs the early-steps ablation: held-out accuracy at equal generated tokens.

A race under one set of rules (issue 18). Every method runs its shipped config
(lit_attn/configs/default.yaml = GRPO, lit_attn/configs/attnrl.yaml, lit_attn/configs/treerl.yaml; ``early`` =
lit_attn/configs/attnrl.yaml with ``selection: early``) on the shipped model and the same task setting,
with these settings made equal for every arm (the page states each rule):

1. updates per generated token: minibatch = a tenth of the tree step's target sequences
   B′ = prompts × G × (1 + N·T) (the authors' convention), one epoch; with N = T = 2 that is
   prompts × G / 2, so GRPO makes 2 updates per step and a full tree step about 10;
2. the same G, prompts per step, KL coefficient, weight decay, learning rate and optimiser;
3. no arm charged for a batch it never trains: a tree step samples batch m but trains batch
   m−1, so the probe leaves the pending batch's initial responses out of the token count
   until the step that trains it;
4. every measurement logs optimiser updates, charged tokens and continuation tokens;
5. ``--setting``: ``subtotal`` (the task's subtotal mode, every prompt, 480-token budgets) or
   ``chain-hard`` (facts + arithmetic chain, 30 texts, 6 operations, 12 distractors, only
   prompts the shipped model answers wrong greedily);
6. AttnRL's adaptive batch capped at ``--max-batch-prompts`` (default 4 × prompts per step).

A probe callback measures held-out greedy pass@1 every ``budget / points`` charged tokens and
stops the run at the budget. Writes docs/bench_efficiency.md (+ .json, + .png with accuracy
against tokens, training minutes and optimiser updates)::

    python bench/efficiency.py --workdir runs/bench_efficiency        # subtotal, 2 seeds, 4 methods: ~75 min on 2 cores
    python bench/efficiency.py --setting chain-hard --budget 300000   # hard chain prompts
    python bench/efficiency.py --budget 100000 --seeds 0 --points 1 --methods grpo attnrl --out /tmp/eff.md

Goal (issue 18): at equal generated tokens, AttnRL ≥ GRPO at every budget point, and its final
accuracy ≥ 0.03 above GRPO, TreeRL and early steps (mean over seeds, with the spread shown).
Each run is a subprocess with one torch thread; ``--parallel`` runs go side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
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
GOAL = ("at equal generated tokens, AttnRL ≥ GRPO at every budget point, and its final accuracy ≥ 0.03 above "
        "GRPO, TreeRL and early steps (mean over seeds, with the spread shown)")
MARGIN = 0.03
SETTINGS = {
    # data overrides over lit_attn/configs/default.yaml's data section, response length (training and evaluation)
    "subtotal": {"data": {"mode": "subtotal", "num_texts": 0, "lookup_drill": 0.0, "num_distractors": 6},
                 "max_new_tokens": 480, "hard": False},
    "chain-hard": {"data": {"mode": "chain", "num_texts": 30, "num_ops": 6, "num_distractors": 12},
                   "max_new_tokens": 128, "hard": True},
}
EPOCHS = 1  # lit_attn.ppo.ppo_update makes one pass over a step's sequences (no epochs setting)

# ---------------------------------------------------------------------------------------------
# The probe, loaded by the Lightning CLI inside each run (module bench/efficiency.py on PYTHONPATH)

from lightning import Callback  # noqa: E402

from lit_attn.config_files import load_config  # noqa: E402


def pending_tokens(groups) -> int:
    """Tokens of the initial responses a tree step has sampled but not trained yet (the
    exploration state's ``pending`` prompt groups)."""
    return sum(len(r.tokens) for g in groups for r in g.responses)


def charged_tokens(generated: int, pending: int) -> int:
    """Tokens charged to a run: everything generated except the pending batch (rule 3)."""
    return generated - pending


def step_continuation_tokens(step_generated: int, new_pending: int) -> int:
    """Continuation tokens of one tree step: its one sampling call made batch m's initial
    responses (now pending) and the continuations at batch m−1's branch points."""
    return step_generated - new_pending


def has_gradients(optimizer) -> bool:
    """Whether an optimiser step carries any gradient: the first tree step (nothing to train
    yet) steps the optimiser with none, which is not an update."""
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


def find_explorer(trainer):
    """The run's exploration callback (AttentionBranchCallback / EntropyBranchCallback), or None
    (GRPO)."""
    from lit_attn.exploration.state import ExplorationState

    return next((c for c in trainer.callbacks if isinstance(getattr(c, "state", None), ExplorationState)), None)


class TokenBudgetProbe(Callback):
    """Held-out pass@1 every ``every`` charged tokens; stops the run at ``budget`` charged tokens.

    Writes ``{"points": [{"tokens", "generated", "pending", "continuation_tokens", "updates",
    "optimizer_steps", "accuracy", "seconds", "rl_steps"}, ...], "first_step_reward"}`` to
    ``out`` (JSON) after each measurement. ``tokens`` are the charged tokens (the pending batch
    of a tree step left out), ``updates`` the optimiser steps that carried gradients.
    """

    def __init__(self, budget: int, every: int, out: str) -> None:
        self.budget, self.every, self.out = budget, every, out
        self.points: list[dict] = []
        self.next_at = 0
        self.start = 0.0
        self.eval_seconds = 0.0
        self.updates = 0
        self.generated_seen = 0
        self.pending = 0
        self.continuation_tokens = 0
        self.first_step_reward: float | None = None
        self.steps = 0

    def _write(self) -> None:
        Path(self.out).write_text(json.dumps({"points": self.points, "first_step_reward": self.first_step_reward}))

    def _measure(self, trainer, module) -> None:
        from lit_attn.evaluation import greedy_pass_at_1

        t0 = time.perf_counter()
        records = trainer.datamodule.val_records()
        scores, _ = greedy_pass_at_1(
            module.model, module.tokenizer, records, module.reward_set.funcs[0],
            max_new_tokens=module.eval_max_new_tokens, batch_size=module.evaluation.batch_size,
        )
        self.eval_seconds += time.perf_counter() - t0
        generated = module.tokens_generated
        self.points.append({
            "tokens": charged_tokens(generated, self.pending),
            "generated": generated,
            "pending": self.pending,
            "continuation_tokens": self.continuation_tokens,
            "updates": self.updates,
            "optimizer_steps": trainer.global_step,
            "accuracy": float(scores.nan_to_num(0).mean()),
            "seconds": time.perf_counter() - self.start - self.eval_seconds,
            "eval_seconds": self.eval_seconds,
            "rl_steps": self.steps,  # training steps ended (the fit loop counts this one as completed only later)
        })
        self._write()
        while self.next_at <= self.points[-1]["tokens"]:  # one measurement covers every point a big step passed
            self.next_at += self.every

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()
        self._measure(trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if has_gradients(optimizer):
            self.updates += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        generated = pl_module.tokens_generated
        explorer = find_explorer(trainer)
        if explorer is not None:
            self.pending = pending_tokens(explorer.state.pending)
            self.continuation_tokens += step_continuation_tokens(generated - self.generated_seen, self.pending)
        self.generated_seen = generated
        if self.steps == 1 and "reward" in trainer.callback_metrics:
            # the first step's fresh samples (G per prompt of the first batch) under the initial weights
            self.first_step_reward = float(trainer.callback_metrics["reward"])
        tokens = charged_tokens(generated, self.pending)
        if tokens >= self.next_at:
            self._measure(trainer, pl_module)
        if tokens >= self.budget:
            trainer.should_stop = True


# ---------------------------------------------------------------------------------------------


def minibatch_rule(prompts: int, group_size: int, num_points: int, continuations: int) -> tuple[int, int]:
    """(B′, minibatch): the tree step's target sequences B′ = prompts × G × (1 + N·T) and a
    tenth of it, the minibatch of every arm (the authors' convention)."""
    target = prompts * group_size * (1 + num_points * continuations)
    if target % 10:
        raise SystemExit(f"B′ = {prompts} × {group_size} × (1 + {num_points}·{continuations}) = {target} has no "
                         "whole tenth; pick --prompts-per-step and --group-size so it does")
    minibatch = target // 10
    if (prompts * group_size) % minibatch:
        raise SystemExit(f"the minibatch B′/10 = {minibatch} must divide GRPO's {prompts} × {group_size} sequences per step")
    return target, minibatch


def tree_shape() -> tuple[int, int]:
    """(N, T): branch points and continuations per point of the shipped tree configs."""
    config = load_config(ROOT / "lit_attn" / "configs" / "attnrl.yaml")
    args = next(c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("AttentionBranchCallback"))
    return args["num_points"], args["continuations"]


def hard_split(data: dict, pool: int, held_out: int, max_new_tokens: int, workdir: Path) -> dict:
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
    splits = PromptDataModule(**{**data, "train_size": pool, "val_size": held_out})._load()
    out: dict = {"counts": {}}
    for name in ("train", "val"):
        records = splits[name]
        scores, _ = greedy_pass_at_1(model, tokenizer, records, task_reward, max_new_tokens=max_new_tokens)
        hard = [r for r, s in zip(records, scores.tolist()) if s < 1.0]
        out["counts"][name] = [len(hard), len(records)]
        path = workdir / f"hard_{pool}_{held_out}_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in hard))
        print(f"hard {name}: {len(hard)} of {len(records)} prompts answered wrong greedily", flush=True)
        out[f"{name}_path"] = str(path)
    return out


def cap_held_out(paths: dict, val_size: int, workdir: Path) -> str:
    """Keep at most ``val_size`` of the hard held-out prompts (their order); returns the path."""
    lines = Path(paths["val_path"]).read_text().splitlines(keepends=True)
    if len(lines) <= val_size:
        return paths["val_path"]
    path = workdir / f"hard_val_{val_size}.jsonl"
    path.write_text("".join(lines[:val_size]))
    return str(path)


def run_config(method: str, seed: int, args: argparse.Namespace, workdir: Path, data: dict) -> dict:
    """The merged config of one run, under the race's rules."""
    config = load_config(ROOT / "lit_attn" / "configs" / METHODS[method])
    out = workdir / f"{method}_seed{seed}.json"
    setting = SETTINGS[args.setting]
    callbacks = [c for c in config["trainer"]["callbacks"] if c["class_path"].split(".")[-1] in KEEP_CALLBACKS]
    for c in callbacks:
        init = c.setdefault("init_args", {})
        init["seed"] = seed
        init["target_sequences"] = None  # B′ = prompts × G × (1 + N·T), from the loader's batch
        init["max_batch_prompts"] = args.max_batch_prompts  # memory/time guard (rule 6)
        if method == "early":
            init["selection"] = "early"
    config["data"].update(data)
    callbacks.append({
        "class_path": "efficiency.TokenBudgetProbe",
        "init_args": {"budget": args.budget, "every": args.budget // args.points, "out": str(out)},
    })
    config["seed_everything"] = seed
    config["trainer"].update(
        callbacks=callbacks, max_steps=10**6, val_check_interval=None, limit_val_batches=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        logger=False, default_root_dir=str(workdir / f"{method}_{seed}"),
    )
    config["trainer"].pop("check_val_every_n_epoch", None)
    model = config["model"]
    model["sampling"].update(  # rule 2: the same G and prompts per step; rule 5: the setting's length
        group_size=args.group_size, prompts_per_step=args.prompts_per_step, max_new_tokens=setting["max_new_tokens"],
    )
    model["update"].update(minibatch_size=args.minibatch, kl_coef=args.kl)  # rules 1 and 2
    model["optimizer"] = {"lr": args.lr, "weight_decay": args.weight_decay}  # rule 2: AdamW, constant lr
    model["evaluation"].update(max_new_tokens=setting["max_new_tokens"], validate_at_start=False)
    model["seed"] = seed
    config["data"]["seed"] = config["data"].get("seed", 0)  # same data for every method and seed
    return config


def finished(out: Path, config_path: Path, text: str, budget: int) -> bool:
    """Whether a run already done in the work folder can be reused: same config, budget reached."""
    if not (out.exists() and config_path.exists() and config_path.read_text() == text):
        return False
    saved = json.loads(out.read_text())
    return isinstance(saved, dict) and bool(saved["points"]) and saved["points"][-1]["tokens"] >= budget


def launch(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'bench'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lit_attn", "fit", f"--config={config}"], cwd=ROOT, env=env,
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )


# ---------------------------------------------------------------------------------------------
# the report


def tokens_to_reach(curve: list[dict], target: float) -> float | None:
    """Charged tokens at the first measurement with accuracy ≥ target (None if never)."""
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


def measured_at(curve: list[dict], tokens: float) -> dict:
    """A run's first measurement at or past ``tokens`` charged tokens (its last one if none)."""
    return next((p for p in curve if p["tokens"] >= tokens), curve[-1])


def accuracy_at(curve: list[dict], tokens: float) -> float:
    """A run's accuracy at ``tokens`` charged tokens: interpolated linearly between its two
    measurements around it (its last one when none lies at or past it)."""
    previous = curve[0]
    for point in curve:
        if point["tokens"] >= tokens:
            if point["tokens"] <= previous["tokens"]:
                return point["accuracy"]
            w = (tokens - previous["tokens"]) / (point["tokens"] - previous["tokens"])
            return previous["accuracy"] + w * (point["accuracy"] - previous["accuracy"])
        previous = point
    return curve[-1]["accuracy"]


def grid(args: argparse.Namespace) -> list[int]:
    """The charged tokens of the schedule's points (0 included)."""
    return [(args.budget // args.points) * i for i in range(args.points + 1)]


def goal_check(results: dict[str, dict[int, dict]], tokens: list[int]) -> list[str]:
    """The goal, on the means over seeds of the accuracy at equal charged tokens
    (:func:`accuracy_at` each point of ``tokens``): AttnRL ≥ GRPO at every point after 0, and
    AttnRL's accuracy at the last point ≥ each other method's + 0.03."""
    if "attnrl" not in results or "grpo" not in results:
        return ["Goal not checked: it needs both attnrl and grpo."]

    def at(method: str, t: float) -> float:
        return mean([accuracy_at(r["points"], t) for r in results[method].values()])

    behind = [f"{t / 1e6:.2f}M" for t in tokens[1:] if at("attnrl", t) < at("grpo", t) - 1e-9]
    lines = [f"- AttnRL ≥ GRPO at every budget point: **{'yes' if not behind else 'no'}**"
             + (f" (behind at {', '.join(behind)})" if behind else "") + "."]
    for other in ("grpo", "treerl", "early"):
        if other in results:
            gap = at("attnrl", tokens[-1]) - at(other, tokens[-1])
            lines.append(f"- AttnRL's final accuracy − {other}'s: {gap:+.3f} (≥ {MARGIN}: "
                         f"**{'yes' if gap >= MARGIN - 1e-9 else 'no'}**).")
    return lines


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this page, every option spelled out."""

    def rel(path: Path) -> str:
        path = Path(path).resolve()
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

    parts = [
        "python bench/efficiency.py", f"--setting {args.setting}", f"--budget {args.budget}",
        f"--points {args.points}", f"--seeds {' '.join(map(str, args.seeds))}", f"--methods {' '.join(args.methods)}",
        f"--parallel {args.parallel}", f"--val-size {args.val_size}", f"--prompts-per-step {args.prompts_per_step}",
        f"--group-size {args.group_size}", f"--kl {args.kl!r}", f"--weight-decay {args.weight_decay!r}",
        f"--lr {args.lr!r}", f"--max-batch-prompts {args.max_batch_prompts}",
    ]
    if args.data:
        parts.append(f"--data {shlex.quote(args.data)}")
    if SETTINGS[args.setting]["hard"]:
        parts.append(f"--hard-pool {args.hard_pool[0]} {args.hard_pool[1]}")
    if args.workdir is not None:
        parts.append(f"--workdir {shlex.quote(rel(args.workdir))}")
    parts.append(f"--out {shlex.quote(rel(args.out))}")
    return " ".join(parts)


def rules_text(args: argparse.Namespace) -> list[str]:
    """The fairness rules, one sentence each, with this run's numbers."""
    P, G, N, T = args.prompts_per_step, args.group_size, *args.tree_shape
    setting = SETTINGS[args.setting]
    return [
        "## The rules (the same for every arm)",
        "",
        f"1. **Updates per generated token.** Every arm trains minibatches of {args.minibatch} sequences, a tenth of "
        f"the tree step's target B′ = prompts × G × (1 + N·T) = {P} × {G} × (1 + {N}·{T}) = {args.target} (the "
        f"authors' convention), for {EPOCHS} epoch: GRPO's {P * G} sequences per step make {P * G // args.minibatch} "
        f"updates. A tree step trains a variable number n of sequences: lit_attn.ppo.ppo_update shuffles them and "
        f"cuts ceil(n / {args.minibatch}) minibatches of {args.minibatch} from that order, the last one holding the "
        f"remaining n mod {args.minibatch} (each one optimiser step; token_mean normalises each minibatch by its own "
        f"tokens, so the smaller last one still makes a full-size step); every sequence is used once. A full step "
        f"(n = B′) makes {args.target // args.minibatch} updates.",
        f"2. **The same hyper-parameters.** G = {G} and {P} prompts per step for every arm (AttnRL's adaptive batch "
        f"starts from {P}), k3 KL to the initial policy with coefficient {args.kl:g}, AdamW with learning rate "
        f"{args.lr:g} (constant) and weight decay {args.weight_decay:g}, the PPO clip, gradient clip and loss of "
        "lit_attn/configs/default.yaml, temperature 1.0.",
        "3. **No arm charged for a batch it never trains.** On the one-step off-policy schedule a tree step samples "
        "batch m's initial responses but trains batch m−1's trees, and at the end of the budget the last sampled "
        "batch is never trained. The probe reads the exploration callback's pending groups and leaves their tokens "
        "out of the count: a batch's initial responses are charged at the step that trains it (together with its "
        "continuations, sampled at that step). GRPO trains every batch it samples. The uncharged pending tokens at "
        "the last point are in the final table.",
        "4. **What each point records.** Every measurement logs the charged tokens, the continuation tokens (tokens "
        "sampled from branch points: a tree step's generated tokens minus the initial responses it sampled), and "
        "the optimiser updates (optimiser steps that carried gradients: the first tree step, with nothing to train "
        "yet, steps the optimiser without any and is not counted; `optimizer_steps` in the JSON is "
        "`trainer.global_step`, which counts it).",
        f"5. **The setting** ({args.setting}): " + (
            "the built-in task's subtotal mode (`data.mode=subtotal`, lit_attn/tasks/subtotal.py `SubtotalTask`, 6 distractors), "
            f"answers of ~215 tokens (up to ~380), so {setting['max_new_tokens']} new tokens for training and "
            f"evaluation in every arm; every prompt counts (no greedy filter: greedy is usually right here, the "
            f"difficulty is sampled slips); {args.val_size} held-out prompts."
            if args.setting == "subtotal" else
            "the facts + arithmetic chain with 30 texts, 6 operations and 12 distractors, only the prompts the shipped "
            f"model answers wrong greedily (held-out accuracy starts at 0; at most {args.val_size} held-out prompts), "
            f"{setting['max_new_tokens']} new tokens for training and evaluation in every arm."
        ),
        f"6. **Memory guard.** AttnRL's adaptive batch grows without a cap in the authors' code "
        f"(lit_attn/configs/attnrl.yaml: `max_batch_prompts: null`); here it is capped at {args.max_batch_prompts} prompts "
        f"({args.max_batch_prompts / P:g} × {P}) for the tree arms, as a memory and time guard (TreeRL's batch is fixed).",
        "7. **Budget.** Each run measures held-out greedy pass@1 when its charged tokens first reach each point of "
        "the schedule and stops at the first step end at or past the budget. A tree step generates far more tokens "
        "than a GRPO step, so its measurements can land later: the accuracy is compared at equal charged tokens, "
        "each run's measurements interpolated linearly at the schedule's points.",
    ]


BRANCHING_ROWS = ("fci", "fci_d4", "early", "entropy", "random", "fresh", "oracle")


def exploration_section(setting: str, docs: Path = ROOT / "docs") -> list[str]:
    """The exploration numbers of ``bench/branching.py`` for the same setting (issue 18 point 1),
    read from ``docs/bench_branching.<setting>.json``: what each branch rule finds per token
    before any training, which explains the race. Empty when that file is missing."""
    path = docs / f"bench_branching.{setting}.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    meta, rows = data["meta"], data["results"]
    lines = [
        "## What exploration finds here (bench/branching.py, before any training)",
        "",
        f"From [bench_branching.{setting}.md](bench_branching.{setting}.md) (`{meta['command']}`, "
        f"{meta['prompts']} hard prompts, {meta['wrong']} wrong responses of {meta['responses']}, fresh sampled pass "
        f"rate {meta['fresh_pass_rate']:.2f}). Each rule branches every wrong response at 2 points with 2 "
        "continuations each; fresh samples are the same number of new responses from the prompt.",
        "",
        "| rule | median branch position | at or before the first wrong step | correct per 1K tokens | rescued |",
        "|---|---|---|---|---|",
    ]
    for key in BRANCHING_ROWS:
        if key in rows:
            r = rows[key]
            lines.append(f"| {r['label']} | {r['median_position']:.0%} | {r['before_first_error']:.0%} "
                         f"| {r['correct_per_1k_tokens']:.2f} | {r['rescued']:.0%} |")
    if all(k in rows for k in ("fci", "fresh", "oracle")):
        fci, fresh, oracle = (rows[k]["correct_per_1k_tokens"] for k in ("fci", "fresh", "oracle"))
        lines += ["", f"FCI finds {fci / fresh:.2f}× the correct answers per token that fresh samples do; branching at "
                  f"exactly the first wrong step (the oracle) finds {oracle / fresh:.2f}×, the most any branch rule "
                  "could gain here."]
    return lines


WHAT_WOULD_CHANGE = {
    "chain-hard": (
        "On these prompts the model's mistakes belong to the prompt: regenerating the first wrong step from a "
        "prefix that is right up to it succeeds about as often as a fresh sample (the oracle row's success per "
        "continuation against the fresh pass rate, bench_branching.md), so no branch point can beat resampling by "
        "more than the prefix tokens it skips, and FCI's points sit at the first steps, where that saving is "
        "smallest. What would change the result is a setting whose mistakes are path-bound at steps in the middle "
        "of the answer that later steps read: the task's subtotal mode is built for that (docs/task.md), but the "
        "shipped model has not learned it, and on an experimental model that half-learns it ATB still branches "
        "at the first steps: it takes the earliest of the top-scored steps, and early chain steps clear that bar "
        "(bench_branching.md, docs/task.md). On that model's reference solutions ATB at Δ = 4 picks exactly the "
        "early-steps rule's points, so even a policy that had learned the mode's slips would gain at most 1.24× "
        "fresh samples' correct answers per token from FCI, against 1.47-1.89× for branching at the write-downs "
        "(bench_fci_anatomy.md)."
    ),
    "subtotal": (
        "The subtotal mode is meant for path-bound mistakes at the steps that name the subtotals "
        "(docs/task.md); bench_branching.md measures whether FCI branches there on the model used."
    ),
}


def reading(results: dict[str, dict[int, dict]], args: argparse.Namespace) -> list[str]:
    """What the race shows, in sentences computed from its numbers (and, for the setting, what
    would change it)."""
    tokens = grid(args)
    final = {m: mean([accuracy_at(r["points"], tokens[-1]) for r in runs.values()]) for m, runs in results.items()}
    order = sorted(final, key=final.get, reverse=True)
    lines = ["## Reading", "",
             f"- At {tokens[-1] / 1e6:.2f}M charged tokens the order is "
             + ", ".join(f"{m} {final[m]:.3f}" for m in order) + "."]
    for method, runs in results.items():
        last = [r["points"][-1] for r in runs.values()]
        share = mean([p["continuation_tokens"] / max(p["tokens"], 1) for p in last])
        per_k = mean([1000 * p["updates"] / max(p["tokens"], 1) for p in last])
        if share > 0:
            lines.append(f"- {method}: {share:.0%} of its charged tokens are continuations from branch points; "
                         f"{per_k:.3f} optimiser updates per 1K tokens.")
        else:
            lines.append(f"- {method}: every token is a fresh response to a new prompt; {per_k:.3f} optimiser "
                         "updates per 1K tokens.")
    if "grpo" in results and len(tokens) > 2:
        before = mean([accuracy_at(r["points"], tokens[-2]) for r in results["grpo"].values()])
        gain = final["grpo"] - before
        lines.append(f"- GRPO gained {gain:+.3f} over the last {(tokens[-1] - tokens[-2]) / 1e6:.2f}M tokens: "
                     + ("its curve had not flattened at the budget." if gain > 0.02 else "its curve has flattened."))
    if args.setting in WHAT_WOULD_CHANGE:
        lines += ["", WHAT_WOULD_CHANGE[args.setting]]
    return lines


def report(results: dict[str, dict[int, dict]], args: argparse.Namespace, wall: float) -> str:
    tokens = grid(args)
    lines = [
        "# AttnRL vs GRPO vs TreeRL vs early steps: held-out accuracy at equal generated tokens",
        "",
        f"Command: `{command_line(args)}`",
        "",
        f"Goal (issue 18): {GOAL}.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; each run one "
        f"torch thread, {args.parallel} runs side by side; whole benchmark {wall / 60:.1f} min. Model: the shipped tiny "
        f"Qwen2; setting: `{args.setting}`" + (f" with `{args.data}`" if args.data else "")
        + (f" ({args.hard_counts})" if getattr(args, "hard_counts", "") else "")
        + "; held-out greedy pass@1. Methods: GRPO (lit_attn/configs/default.yaml), AttnRL (lit_attn/configs/attnrl.yaml), TreeRL "
        "(lit_attn/configs/treerl.yaml), early steps (lit_attn/configs/attnrl.yaml with `selection: early`), each with the settings "
        "below made equal.",
        "",
        *rules_text(args),
        "",
        "## Accuracy at equal charged tokens",
        "",
        "Mean ± standard deviation over seeds of each run's accuracy at the schedule's charged tokens, interpolated "
        "linearly between the run's two measurements around each point (a tree step is large, so its measurements "
        "can land well past a point; the goal below is checked on these numbers).",
        "",
        "| method | seeds | " + " | ".join(f"{t / 1e6:.2f}M" for t in tokens) + " |",
        "|---|---|" + "---|" * len(tokens),
    ]
    for method, runs in results.items():
        cells = []
        for t in tokens:
            acc = [accuracy_at(r["points"], t) for r in runs.values()]
            cells.append(f"{mean(acc):.3f} ± {std(acc):.3f}")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", "As measured (each run's first measurement at or past each point; in brackets the mean charged "
              "tokens there):",
              "", "| method | " + " | ".join(f"{t / 1e6:.2f}M" for t in tokens) + " |",
              "|---|" + "---|" * len(tokens)]
    for method, runs in results.items():
        cells = []
        for t in tokens:
            at = [measured_at(r["points"], t) for r in runs.values()]
            acc = [p["accuracy"] for p in at]
            cells.append(f"{mean(acc):.3f} ± {std(acc):.3f} ({mean([p['tokens'] for p in at]) / 1e6:.2f}M)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    first = [r["first_step_reward"] for runs in results.values() for r in runs.values() if r.get("first_step_reward") is not None]
    if first:
        lines += ["", f"Fresh sampled pass rate at step 0: **{mean(first):.3f}** (the first step's mean reward: G = "
                  f"{args.group_size} samples for each of the first batch's {args.prompts_per_step} prompts under the "
                  f"initial weights, mean over {len(first)} runs; every run draws the same first prompts, and the runs "
                  "of one seed the same samples). Held-out greedy pass@1 at step 0 is the first column above."]
    lines += ["", "## Goal", "", *goal_check(results, tokens), "", "## Cost at the last point", "",
              "Means over seeds. Updates: optimiser steps with gradients. Continuation tokens: sampled from branch "
              "points (part of the charged tokens). Pending: sampled by the last step, never trained, not charged. "
              "First-step reward: mean reward of the first step's fresh samples (G per prompt of the first batch of "
              f"{args.prompts_per_step} prompts) under the initial weights, the sampled pass rate at step 0.",
              "",
              "| method | charged tokens | continuation tokens (share) | pending, not charged | updates | updates per 1K tokens "
              "| RL steps | first-step reward | train s (no eval) | eval s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for method, runs in results.items():
        last = [r["points"][-1] for r in runs.values()]
        tokens = mean([p["tokens"] for p in last])
        cont = mean([p["continuation_tokens"] for p in last])
        updates = mean([p["updates"] for p in last])
        per_k = mean([1000 * p["updates"] / max(p["tokens"], 1) for p in last])
        rewards = [r["first_step_reward"] for r in runs.values() if r.get("first_step_reward") is not None]
        lines.append(
            f"| {method} | {tokens:,.0f} | {cont:,.0f} ({cont / max(tokens, 1):.0%}) | {mean([p['pending'] for p in last]):,.0f} "
            f"| {updates:.1f} ± {std([p['updates'] for p in last]):.1f} | {per_k:.3f} "
            f"| {mean([p['rl_steps'] for p in last]):.1f} | {mean(rewards):.3f} | {mean([p['seconds'] for p in last]):.0f} "
            f"| {mean([p.get('eval_seconds', float('nan')) for p in last]):.0f} |"
        )
    if "grpo" in results:
        grpo_final = mean([r["points"][-1]["accuracy"] for r in results["grpo"].values()])
        lines += ["", f"GRPO's final accuracy (mean over seeds): **{grpo_final:.3f}**.", "",
                  "| method | charged tokens to reach GRPO's final accuracy (per seed) | ratio to the budget |", "|---|---|---|"]
        for method, runs in results.items():
            reach = [tokens_to_reach(r["points"], grpo_final) for r in runs.values()]
            shown = ", ".join("never" if t is None else f"{t / 1e6:.2f}M" for t in reach)
            done = [t for t in reach if t is not None]
            ratio = f"{mean(done) / args.budget:.2f}" if done and len(done) == len(reach) else "—"
            lines.append(f"| {method} | {shown} | {ratio} |")
    explained = exploration_section(args.setting)
    if explained:
        lines += ["", *explained]
    lines += ["", *reading(results, args)]
    lines += ["", f"Every point of every run (charged, generated and pending tokens, continuation tokens, updates, "
              f"optimiser steps, accuracy, seconds) is in {args.out.with_suffix('.json').name}."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for method, runs in results.items():
        for seed, run in runs.items():
            curve = run["points"]
            label = method if seed == min(runs) else None
            acc = [p["accuracy"] for p in curve]
            style = {"marker": "o", "color": COLORS[method], "alpha": 0.7, "label": label}
            axes[0].plot([p["tokens"] / 1e6 for p in curve], acc, **style)
            axes[1].plot([p["seconds"] / 60 for p in curve], acc, **style)
            axes[2].plot([p["updates"] for p in curve], acc, **style)
    axes[0].set_xlabel("charged generated tokens (M)")
    axes[1].set_xlabel("training minutes (evaluation excluded)")
    axes[2].set_xlabel("optimiser updates")
    axes[0].set_ylabel("held-out pass@1")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=list(SETTINGS), default="subtotal")
    parser.add_argument("--budget", type=int, default=200_000, help="charged generated tokens per run")
    parser.add_argument("--points", type=int, default=2, help="measurements after the one at 0 tokens")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--val-size", type=int, default=200,
                        help="held-out prompts (chain-hard: at most this many of the hard held-out prompts)")
    parser.add_argument("--prompts-per-step", type=int, default=16, help="prompts per step, every arm")
    parser.add_argument("--group-size", type=int, default=6, help="G, every arm")
    parser.add_argument("--kl", type=float, default=0.001, help="k3 KL coefficient, every arm (paper: 0.001)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay, every arm (authors: 0.01)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate, every arm (default: lit_attn/configs/default.yaml's)")
    parser.add_argument("--max-batch-prompts", type=int, default=None,
                        help="cap on AttnRL's adaptive prompt batch (default: 4 × prompts per step = 64)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_efficiency.md")
    parser.add_argument("--data", default="", help="extra task settings for every arm over the setting's, key=value,...")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep every run's files here (default: a temporary folder); finished runs with the same "
                             "config are reused")
    parser.add_argument("--hard-pool", type=int, nargs=2, default=[2400, 440], metavar=("TRAIN", "HELD_OUT"),
                        help="chain-hard: built-in prompts rated for each split")
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = float(load_config(ROOT / "lit_attn" / "configs" / "default.yaml")["model"]["optimizer"]["lr"])
    if args.max_batch_prompts is None:
        args.max_batch_prompts = 4 * args.prompts_per_step
    args.tree_shape = tree_shape()
    args.target, args.minibatch = minibatch_rule(args.prompts_per_step, args.group_size, *args.tree_shape)
    return args


def main() -> None:
    args = parse_args()
    setting = SETTINGS[args.setting]
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.data.split(",") if item)}
    # the task every arm trains on: lit_attn/configs/default.yaml's data section, the setting, then --data
    data = {**load_config(ROOT / "lit_attn" / "configs" / "default.yaml")["data"], **setting["data"], "val_size": args.val_size,
            **overrides}

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if setting["hard"]:
            saved = workdir / f"hard_{args.hard_pool[0]}_{args.hard_pool[1]}.json"
            if saved.exists():
                paths = json.loads(saved.read_text())
            else:
                paths = hard_split(data, *args.hard_pool, setting["max_new_tokens"], workdir)
                saved.write_text(json.dumps(paths))
            (train_hard, train_all), (val_hard, val_all) = paths["counts"]["train"], paths["counts"]["val"]
            val_path = cap_held_out(paths, args.val_size, workdir)
            args.hard_counts = (f"prompts answered wrong greedily: {train_hard} of {train_all} training prompts, "
                                f"{min(val_hard, args.val_size)} held out (of {val_hard} wrong among {val_all})")
            data.update(train_path=paths["train_path"], val_path=val_path)
        jobs = []
        for s in args.seeds:
            for m in args.methods:
                config_path, out = workdir / f"{m}_seed{s}.yaml", workdir / f"{m}_seed{s}.json"
                text = yaml.safe_dump(run_config(m, s, args, workdir, data))
                if finished(out, config_path, text, args.budget):
                    print(f"reusing {m} seed {s}", flush=True)
                    continue
                config_path.write_text(text)
                jobs.append((m, s, config_path))
        ran_any = bool(jobs)
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
        results: dict[str, dict[int, dict]] = {m: {} for m in args.methods}
        for method in args.methods:
            for seed in args.seeds:
                results[method][seed] = json.loads((workdir / f"{method}_seed{seed}.json").read_text())
    wall = time.perf_counter() - start
    if args.workdir is not None:
        # a rerun that reuses finished runs (to rewrite the page) reports the time the runs took
        wall_file = args.workdir / "wall_seconds.json"
        if ran_any:
            wall_file.write_text(json.dumps({"seconds": wall}))
        elif wall_file.exists():
            wall = json.loads(wall_file.read_text())["seconds"]
    text = report(results, args, wall)
    print(text)
    args.out.write_text(text + f"\n![accuracy vs charged tokens, training time and optimiser updates]"
                        f"({args.out.with_suffix('.png').name})\n")
    args.out.with_suffix(".json").write_text(json.dumps({
        "command": command_line(args), "setting": args.setting, "budget": args.budget, "points": args.points,
        "minibatch": args.minibatch, "target_sequences": args.target, "runs": results,
    }, indent=1))
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
