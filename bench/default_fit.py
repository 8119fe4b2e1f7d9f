"""Evidence for the embedded default: held-out accuracy before and after `fit` on this machine.

Runs the README's main job (`python -m lit_attn fit --config lit_attn/configs/default.yaml`) in a
fresh run directory, then reads TensorBoard: greedy held-out pass@1 at step 0 and at every
validation, with cumulative generated tokens and wall-clock time, and the AttributionCallback's
``attribution/relevant_share`` (the share of AttnTrace's credit that lands on the facts the
question needs) beside it, with the credit by kind of text (``attribution/share/<kind>``,
``attribution/follows_injection``) and what the callback cost (the sum of its per-probe seconds
against the command's wall-clock). Then it attributes the callback's probes once more with the
shipped model (step 0) and with the exported policy (the last step), as the callback does, and
counts which kinds of text hold each probe's top-k at both ends: where the credit moved.
Prints the tables, draws both curves to docs/default_fit.png and writes docs/default_fit.md
with the command (everything under its ``## Notes`` heading is kept: it is written by hand). Run::

    python bench/default_fit.py                       # ~10 minutes on 2 CPU cores
    python bench/default_fit.py --trainer.max_steps=20   # extra arguments go to `fit`
    python bench/default_fit.py --explain runs/bench-default-fit-N/default/version_0   # redo the top-k by kind only
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


KINDS = ("needed", "distractor", "paraphrase", "injected", "filler")
NOTES = "## Notes"
MOVES = "Where the credit moved:"
"""The page's hand-written part: from this heading on, docs/default_fit.md is kept as it is."""


def main(extra: list[str]) -> None:
    if extra[:1] == ["--explain"]:
        moves = explain(Path(extra[1]).resolve())
        print(moves)
        page = ROOT / "docs" / "default_fit.md"
        text = page.read_text(encoding="utf-8")
        if MOVES in text and NOTES in text:  # rewrite that section of the page in place
            page.write_text(text[: text.index(MOVES)] + moves + "\n\n" + text[text.index(NOTES):], encoding="utf-8")
            print("rewrote its section of docs/default_fit.md")
        return
    run_dir = ROOT / "runs" / f"bench-default-fit-{int(time.time())}"
    command = [sys.executable, "-m", "lit_attn", "fit", "--config", "lit_attn/configs/default.yaml",
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
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"] if tag.startswith("attribution/")}
    share = scalars.get("attribution/relevant_share", {})
    precision = scalars.get("attribution/precision_at_k", {})
    _plot(rows, share, precision)
    cost = ""
    if share:
        kinds = [k for k in KINDS if f"attribution/share/{k}" in scalars]
        columns = ["relevant_share", "precision_at_k", *[f"share/{k}" for k in kinds], "follows_injection"]
        table.append("")
        table.append("| step | " + " | ".join(f"attribution/{c}" if i < 2 else c for i, c in enumerate(columns)) + " |")
        table.append("|---|" + "---|" * len(columns))
        table += [
            f"| {s} | " + " | ".join(f"{scalars.get('attribution/' + c, {}).get(s, float('nan')):.3f}" for c in columns) + " |"
            for s in sorted(share)
        ]
        probes = len({tag.split("/")[1] for tag in acc.Tags().get("tensors", []) if tag.startswith("attribution/example_")})
        seconds = sum(scalars.get("attribution/seconds", {}).values()) * probes
        cost = (
            f"AttributionCallback: {probes} probes at {len(share)} logging points, {seconds:.0f} s of attribution "
            f"(the sum of `attribution/seconds` × probes; tables, heatmap and pages not counted) = "
            f"{100 * seconds / wall:.1f}% of the command's wall-clock."
        )
    rewards = [e.value for e in acc.Scalars("reward")]
    k = max(1, len(rewards) // 10)
    summary = (
        f"Held-out greedy pass@1 (200 prompts): **{rows[0][2]:.3f} before → {rows[-1][2]:.3f} after** "
        f"{rows[-1][0]} steps; training reward (mean of first / last {k} steps): "
        f"{sum(rewards[:k]) / k:.3f} → {sum(rewards[-k:]) / k:.3f}. Whole command: {wall / 60:.1f} min wall-clock."
    )
    moves = explain(events.parent) if share and (events.parent / "policy").is_dir() else ""
    shown = " ".join(["python", "-m", "lit_attn", "fit", "--config", "lit_attn/configs/default.yaml", *extra])
    text = "\n".join(table)
    print(text)
    print(summary)
    print(cost)
    print(moves)
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if os.environ.get("OMP_NUM_THREADS") else "torch threads default"
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {threads}, Python {platform.python_version()}"
    page = ROOT / "docs" / "default_fit.md"
    old = page.read_text(encoding="utf-8") if page.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else f"{NOTES}\n\n(none yet)\n"
    page.write_text(
        "# The embedded default `fit`: held-out accuracy before and after\n\n"
        f"Command: `{shown}`, run by `{('python bench/default_fit.py ' + ' '.join(extra)).strip()}`.\n\n"
        f"Machine: {machine}. Model: the shipped tiny Qwen2 (lit_attn/default_model); task: the "
        "built-in facts + arithmetic chain, held-out split of 200 prompts, greedy decoding.\n\n"
        f"{summary}\n\n![held-out pass@1 and attribution relevant share](default_fit.png)\n\n{text}\n\n"
        + (f"{cost}\n\n" if cost else "")
        + (f"{moves}\n\n" if moves else "")
        + notes.rstrip() + "\n"
    )
    print("wrote docs/default_fit.md")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def explain(folder: Path) -> str:
    """Where the credit moved: the run's AttributionCallback probes attributed again, as the
    callback does (its settings from ``folder/config.yaml``), with the starting model and with
    the exported policy (``folder/policy``); per kind of text, the top-k slots it holds and its
    share of the positive credit at both ends, then every probe whose top-k changed."""
    from types import SimpleNamespace

    import yaml

    from lit_attn.callbacks.attribution import builtin_examples
    from lit_attn.attribution.kinds import SHARE_PREFIX, follows_injection, kind_scalars
    from lit_attn.callbacks import AttributionCallback
    from lit_attn.data import PromptDataModule
    from lit_attn.models import load_policy
    from lit_attn.tasks import extract_answer

    config = yaml.safe_load((folder / "config.yaml").read_text())
    args = next(c.get("init_args") or {} for c in config["trainer"]["callbacks"] if c["class_path"].endswith("AttributionCallback"))
    callback = AttributionCallback(**args)
    callback.examples = builtin_examples(PromptDataModule(**config["data"]), callback.num_examples,
                                         num_distractors=callback.num_distractors)
    examples, k = callback.examples, callback.k
    ends = {"start": config["model"]["name_or_path"], "end": folder / "policy"}
    results = {}
    for end, path in ends.items():
        model, tokenizer = load_policy(path)
        results[end] = callback.attribute_examples(SimpleNamespace(model=model, tokenizer=tokenizer))

    def top(scores):
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]

    slots = {end: {kind: 0 for kind in KINDS} for end in ends}
    shares = {end: kind_scalars(examples, results[end]) for end in ends}  # as the callback logs them
    right = {end: 0 for end in ends}
    follows = {end: 0 for end in ends}
    restated = {end: [0, 0] for end in ends}  # answer lines whose restated expression is not the question's, all lines
    margins = {end: [] for end in ends}  # (k-th score - (k+1)-th score) / k-th score, per probe
    for end in ends:
        for example, result in zip(examples, results[end]):
            for i in top(result.scores):
                slots[end][example.kinds[i]] += 1
            right[end] += extract_answer(result.answer) == example.reference
            for line in result.answer.split("\n"):
                if ":" in line:
                    prefix = line.split(":")[0]
                    restated[end][0] += prefix != example.question[: len(prefix)] or len(prefix) % 2 == 0
                    restated[end][1] += 1
            ranked = sorted(result.scores, reverse=True)
            if len(ranked) > k and ranked[k - 1] > 0:
                margins[end].append((ranked[k - 1] - ranked[k]) / ranked[k - 1])
            follows[end] += follows_injection(result.answer, example.injected_answer)
    n = len(examples)
    lines = [
        f"Where the credit moved: the {n} probes attributed again as the callback does, with the shipped model "
        f"(start) and the exported policy (end) (`python bench/default_fit.py --explain <run folder>`):",
        "",
        f"| kind | top-{k} slots, start | top-{k} slots, end | share of credit, start | share of credit, end |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {kind} | {slots['start'][kind]} | {slots['end'][kind]} | {shares['start'].get(SHARE_PREFIX + kind, 0.0):.3f} | {shares['end'].get(SHARE_PREFIX + kind, 0.0):.3f} |"
        for kind in KINDS
    ]
    lines += [
        f"| (precision@{k}) | {slots['start']['needed'] / (n * k):.3f} | {slots['end']['needed'] / (n * k):.3f} | | |",
        f"| (answers right / follow the injection) | {right['start']} / {follows['start']} | {right['end']} / {follows['end']} | | |",
        f"| (answer lines whose restated expression is not the question's) | {restated['start'][0]} of {restated['start'][1]} "
        f"| {restated['end'][0]} of {restated['end'][1]} | | |",
        f"| (median gap between the {k}th and {k + 1}th score, of the {k}th) | {_median(margins['start']):.1%} "
        f"| {_median(margins['end']):.1%} | | |",
        "",
        f"Probes whose top-{k} changed (out = left the top-{k}, in = entered it; kind in brackets):",
        "",
    ]
    changed = 0
    for i, example in enumerate(examples):
        before, after = set(top(results["start"][i].scores)), set(top(results["end"][i].scores))
        if before == after:
            continue
        changed += 1
        out = ", ".join(f"`{example.contexts[j]}` ({example.kinds[j]})" for j in sorted(before - after))
        into = ", ".join(f"`{example.contexts[j]}` ({example.kinds[j]})" for j in sorted(after - before))
        same = "same answer" if results["start"][i].answer == results["end"][i].answer else "the answer changed"
        verdict = lambda r: "right" if extract_answer(r.answer) == example.reference else "wrong"  # noqa: E731
        lines.append(f"- probe {i}: out {out}; in {into} ({same}: {verdict(results['start'][i])} → {verdict(results['end'][i])})")
    if not changed:
        lines.append("- none")
    return "\n".join(lines)


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
