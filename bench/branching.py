"""Exploration on its own, before any training: how many correct answers each branch rule finds
per generated token, against fresh samples and an oracle that branches at the first wrong step.

For each prompt of a setting, sample G responses; branch every wrong response at 2 points
chosen by each rule and sample T = 2 continuations at each (fresh samples: 4 new responses;
the oracle: 4 continuations at the response's first wrong step). Per rule it reports the
median relative position of the branch points, the share of branch points at or before the
response's first wrong step (the built-in verifier knows it: ``lit_attn.tasks.first_wrong_step``),
correct answers per 1,000 generated tokens (continuation tokens only: the prefix is reused),
the share of wrong responses with at least one correct continuation, and bootstrap intervals
over prompts. Writes docs/bench_branching.md (+ .json, + .png):

    python bench/branching.py                                   # subtotal mode, 60 prompts
    python bench/branching.py --setting chain-hard --prompts 60 # the first task, hard prompts

Settings: ``subtotal`` is the task's subtotal mode (lit_attn/tasks/subtotal.py ``SubtotalTask``);
``chain-hard`` is the facts + arithmetic chain with 6 operations and 12 distractors, keeping
the prompts the model answers wrong greedily.
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_attn.attention import fci_scores_batch, split_steps  # noqa: E402
from lit_attn.attention.steps import STEP_DELIMITER  # noqa: E402
from lit_attn.exploration.selection import atb_branch_steps, early_branch_steps, entropy_branch_offsets  # noqa: E402
from lit_attn.evaluation import greedy_pass_at_1  # noqa: E402
from lit_attn.exploration.audit import before_first_error, first_error, step_of_offset  # noqa: E402
from lit_attn.logprobs import token_logprobs  # noqa: E402
from lit_attn.models import load_policy  # noqa: E402
from lit_attn.rewards import task_reward  # noqa: E402
from lit_attn.rollout import left_pad, pad_id  # noqa: E402
from lit_attn.sampling import sample_continuations  # noqa: E402
from lit_attn.tasks import FactChainTask, SubtotalTask, make_split, verify  # noqa: E402
from lit_attn.tasks.subtotal import named_values  # noqa: E402

RULES = ("fci", "fci_d4", "fci_d4_top", "early", "entropy", "random", "fresh", "oracle")
LABELS = {
    "fci": "FCI, Δ = {gap} (lit_attn/configs/attnrl.yaml)", "fci_d4": "FCI, Δ = 4 (paper)",
    "fci_d4_top": "FCI, Δ = 4, two best-scored steps (not ATB: a diagnostic)", "early": "early steps",
    "entropy": "entropy (TreeRL)", "random": "random steps", "fresh": "fresh samples (no branching)",
    "oracle": "oracle: first wrong step",
}


def build_records(setting: str, count: int, seed: int, model, tokenizer) -> list[dict]:
    if setting == "subtotal":
        return make_split(SubtotalTask(), count, seed=f"branching-bench-{seed}")
    task = FactChainTask(num_ops=6, num_distractors=12)
    pool = make_split(task, count * 8, seed=f"branching-bench-{seed}")
    scores, _ = greedy_pass_at_1(model, tokenizer, pool, task_reward, max_new_tokens=160, batch_size=64)
    hard = [r for r, s in zip(pool, scores.tolist()) if s < 1.0]
    return hard[:count]


def sample(model, tokenizer, prefixes, counts, budgets, seed, batch_size):
    out = sample_continuations(
        model, tokenizer, prefixes, counts, max_new_tokens=budgets, temperature=1.0,
        generator_seed=seed, batch_size=batch_size,
    )
    return [(int(out.prefix_index[i]), out.new_tokens(i)) for i in range(len(out))]


def subtotal_steps(tokenizer, w: dict) -> set[int]:
    """Response steps (0-based) that write a subtotal down (``x=7``): the subtotal mode's load-bearing steps."""
    seq = w["prompt_ids"] + w["tokens"]
    texts = [tokenizer.decode(seq[a:b]) for a, b in w["spans"][1:]]
    return {i for i, t in enumerate(texts) if named_values([t.strip()])}


def top_scored_steps(fci, points: int) -> list[int]:
    """The ``points`` eligible steps (not the prompt, not the first response step) of highest
    FCI, in position order: what ATB would pick if it took scores, not the earliest candidates."""
    scores = [(float(v), k) for k, v in enumerate(fci) if k >= 2 and float(v) > 0]
    return sorted(k for _, k in sorted(scores, reverse=True)[:points])


def fci_offsets(
    model, tokenizer, wrong, gap: int, ratio: float, points: int, block: int, by_score: bool = False
) -> list[list[int]]:
    offsets = []
    for start in range(0, len(wrong), 16):
        chunk = wrong[start : start + 16]
        ids, mask, _ = left_pad([w["prompt_ids"] + w["tokens"] for w in chunk], pad_id(tokenizer))
        fci = fci_scores_batch(model, ids, mask, [w["spans"] for w in chunk], min_gap=gap, block_size=block)
        for w, y in zip(chunk, fci):
            steps = top_scored_steps(y, points) if by_score else atb_branch_steps(y, w["spans"], ratio=ratio, num_points=points)
            offsets.append([w["spans"][k][0] - len(w["prompt_ids"]) for k in steps])
    return offsets


@torch.no_grad()
def entropy_offsets(model, tokenizer, wrong, points: int) -> list[list[int]]:
    offsets = []
    for start in range(0, len(wrong), 16):
        chunk = wrong[start : start + 16]
        ids, mask, _ = left_pad([w["prompt_ids"] + w["tokens"] for w in chunk], pad_id(tokenizer))
        _, entropy = token_logprobs(model, ids, mask, with_entropy=True)
        width = ids.shape[1]
        for b, w in enumerate(chunk):
            n = len(w["tokens"])
            offsets.append(entropy_branch_offsets(entropy[b, width - 1 - n : width - 1].float(), num_points=points))
    return offsets


def choose(rule: str, model, tokenizer, wrong, args, gap_cfg: int, rng: random.Random) -> list[list[int]]:
    if rule == "fci":
        return fci_offsets(model, tokenizer, wrong, gap_cfg, args.ratio, args.points, args.block)
    if rule == "fci_d4":
        return fci_offsets(model, tokenizer, wrong, 4, args.ratio, args.points, args.block)
    if rule == "fci_d4_top":
        return fci_offsets(model, tokenizer, wrong, 4, args.ratio, args.points, args.block, by_score=True)
    if rule == "entropy":
        return entropy_offsets(model, tokenizer, wrong, args.points)
    out = []
    for w in wrong:
        spans, P = w["spans"], len(w["prompt_ids"])
        if rule == "early":
            steps = early_branch_steps(spans, num_points=args.points)
        elif rule == "random":
            eligible = list(range(2, len(spans)))
            steps = sorted(rng.sample(eligible, min(args.points, len(eligible))))
        elif rule == "fresh":
            out.append([0])
            continue
        else:  # oracle: the start of the first wrong step (span index error + 1)
            k = w["error"] + 1
            out.append([spans[k][0] - P if k < len(spans) else len(w["tokens"])])
            continue
        out.append([spans[k][0] - P for k in steps])
    return out


def bootstrap(per_prompt: list[tuple[float, float]], draws: int, rng: random.Random) -> tuple[float, float]:
    """95% interval of sum(a)/sum(b) over prompts resampled with replacement."""
    if not per_prompt:
        return float("nan"), float("nan")
    values = []
    for _ in range(draws):
        pick = [per_prompt[rng.randrange(len(per_prompt))] for _ in per_prompt]
        den = sum(b for _, b in pick)
        values.append(sum(a for a, _ in pick) / den if den else 0.0)
    values.sort()
    return values[int(0.025 * draws)], values[int(0.975 * draws) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "lit_attn" / "default_model"))
    parser.add_argument("--setting", choices=("subtotal", "chain-hard"), default="subtotal")
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--group", type=int, default=6, help="G initial responses per prompt")
    parser.add_argument("--points", type=int, default=2, help="branch points per wrong response")
    parser.add_argument("--continuations", type=int, default=2, help="T continuations per branch point")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--block", type=int, default=64, help="FCI query block size")
    parser.add_argument("--max-new-tokens", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per sampling call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_branching"), help="writes OUT.md, OUT.json, OUT.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    gap_cfg = next(c["init_args"]["min_gap"] for c in yaml.safe_load((ROOT / "lit_attn" / "configs" / "attnrl.yaml").read_text())["trainer"]["callbacks+"]
                   if c["class_path"].endswith("AttentionBranchCallback"))
    model, tokenizer = load_policy(args.model)
    model.eval()
    records = build_records(args.setting, args.prompts, args.seed, model, tokenizer)
    prompt_ids = [list(tokenizer(r["prompt"])["input_ids"]) for r in records]

    # 1. G fresh responses per prompt
    rows = sample(model, tokenizer, prompt_ids, args.group, args.max_new_tokens, args.seed, args.batch_size)
    responses, wrong = [], []
    for p, new in rows:
        text = tokenizer.decode(new, skip_special_tokens=True)
        ok = verify(text, records[p]["answer"]) == 1.0
        responses.append((p, len(new), ok))
        if not ok:
            seq = prompt_ids[p] + new
            wrong.append({
                "p": p, "prompt_ids": prompt_ids[p], "tokens": new, "text": text,
                "spans": split_steps(seq, tokenizer, STEP_DELIMITER, prompt_length=len(prompt_ids[p])),
                "error": first_error(records[p], text),
            })
    wrong = [w for w in wrong if w["error"] is not None]
    fresh_rate = sum(ok for _, _, ok in responses) / len(responses)
    print("first wrong step of the wrong responses (step: count):", dict(sorted(Counter(w["error"] for w in wrong).items())))
    mean_len = statistics.mean(n for _, n, _ in responses)
    load_bearing = [subtotal_steps(tokenizer, w) for w in wrong]
    print(f"{len(records)} prompts, {len(responses)} responses, fresh pass rate {fresh_rate:.3f}, "
          f"{len(wrong)} wrong, mean length {mean_len:.0f} tokens", flush=True)

    rng = random.Random(args.seed)
    results = {}
    for r_i, rule in enumerate(RULES):
        offsets = choose(rule, model, tokenizer, wrong, args, gap_cfg, rng)
        count = args.points * args.continuations if rule in ("fresh", "oracle") else args.continuations
        prefixes, budgets, owners = [], [], []
        for w_i, (w, offs) in enumerate(zip(wrong, offsets)):
            for off in offs:
                prefixes.append(w["prompt_ids"] + w["tokens"][:off])
                budgets.append(max(args.max_new_tokens - off, 1))
                owners.append((w_i, off))
        out = sample(model, tokenizer, prefixes, count, budgets, args.seed + 1000 * (r_i + 1), args.batch_size)
        per_prompt: dict[int, list[float]] = {}
        by_error: dict[int, list[int]] = {}  # first wrong step -> [correct, continuations]
        found = [False] * len(wrong)
        successes = tokens = 0
        for prefix_i, new in out:
            w_i, off = owners[prefix_i]
            w = wrong[w_i]
            ok = verify(tokenizer.decode(w["tokens"][:off] + new, skip_special_tokens=True), records[w["p"]]["answer"]) == 1.0
            found[w_i] |= ok
            tally = by_error.setdefault(w["error"], [0, 0])
            tally[0] += ok
            tally[1] += 1
            successes += ok
            tokens += len(new)
            acc = per_prompt.setdefault(w["p"], [0.0, 0.0, 0.0, 0.0])
            acc[0] += ok
            acc[1] += len(new) / 1000
        for w_i, w in enumerate(wrong):
            acc = per_prompt.setdefault(w["p"], [0.0, 0.0, 0.0, 0.0])
            acc[2] += found[w_i]
            acc[3] += 1
        positions = [off / max(len(w["tokens"]), 1) for w, offs in zip(wrong, offsets) for off in offs]
        before = [flag for w, offs in zip(wrong, offsets) for flag in before_first_error(w["spans"], len(w["prompt_ids"]), offs, w["error"])]
        on_load = [step_of_offset(w["spans"], len(w["prompt_ids"]), off) in lb for w, offs, lb in zip(wrong, offsets, load_bearing) for off in offs]
        boot = random.Random(args.seed)
        results[rule] = {
            "label": LABELS[rule].format(gap=gap_cfg),
            "branch_points": len(positions),
            "median_position": statistics.median(positions) if positions else float("nan"),
            "positions": positions,
            "before_first_error": sum(before) / len(before) if before else float("nan"),
            "at_subtotal_step": sum(on_load) / len(on_load) if on_load and args.setting == "subtotal" else None,
            "continuations": len(out),
            "tokens": tokens,
            "correct": successes,
            "success_per_continuation": successes / len(out) if out else float("nan"),
            "correct_per_1k_tokens": 1000 * successes / tokens if tokens else float("nan"),
            "correct_per_1k_ci": bootstrap([(a[0], a[1]) for a in per_prompt.values()], args.bootstrap, boot),
            "rescued": sum(found) / len(found) if found else float("nan"),
            "rescued_ci": bootstrap([(a[2], a[3]) for a in per_prompt.values()], args.bootstrap, boot),
            "by_first_wrong_step": {str(k): v for k, v in sorted(by_error.items())},
        }
        res = results[rule]
        print(f"{rule:8s} median pos {res['median_position']:.2f}  before 1st error {res['before_first_error']:.2f}  "
              f"correct/1k {res['correct_per_1k_tokens']:.2f} [{res['correct_per_1k_ci'][0]:.2f}-{res['correct_per_1k_ci'][1]:.2f}]  "
              f"rescued {res['rescued']:.2f}  per continuation {res['success_per_continuation']:.3f}", flush=True)

    meta = {
        "command": "python bench/branching.py " + " ".join(sys.argv[1:]),
        "setting": args.setting, "prompts": len(records), "responses": len(responses), "wrong": len(wrong),
        "fresh_pass_rate": fresh_rate, "mean_response_tokens": mean_len,
        "first_wrong_steps": {str(k): v for k, v in sorted(Counter(w["error"] for w in wrong).items())}, "group": args.group, "points": args.points,
        "continuations": args.continuations, "fci_min_gap_configured": gap_cfg, "model": Path(args.model).name,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "minutes": (time.time() - started) / 60, "date": time.strftime("%Y-%m-%d"),
    }
    write(Path(args.out), meta, results)


def write(out: Path, meta: dict, results: dict) -> None:
    out.with_suffix(f".{meta['setting']}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    fresh = results["fresh"]["correct_per_1k_tokens"]
    lines = [
        "| rule | median branch position | at or before the first wrong step | at a subtotal step | correct per 1,000 tokens [95% CI] | × fresh | wrong responses rescued [95% CI] | success per continuation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule, r in results.items():
        sub = "—" if r["at_subtotal_step"] is None else f"{r['at_subtotal_step']:.2f}"
        lo, hi = r["correct_per_1k_ci"]
        rlo, rhi = r["rescued_ci"]
        lines.append(
            f"| {r['label']} | {r['median_position']:.2f} | {r['before_first_error']:.2f} | {sub} | "
            f"{r['correct_per_1k_tokens']:.2f} [{lo:.2f}-{hi:.2f}] | {r['correct_per_1k_tokens'] / fresh:.2f}× | "
            f"{r['rescued']:.2f} [{rlo:.2f}-{rhi:.2f}] | {r['success_per_continuation']:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    section = (
        f"### Setting `{meta['setting']}`\n\nCommand: `{meta['command']}` ({meta['minutes']:.1f} min; {meta['machine']}; "
        f"model `{meta['model']}`; {meta['date']})\n\n{meta['prompts']} prompts × G = {meta['group']} responses: fresh pass rate "
        f"{meta['fresh_pass_rate']:.3f}, mean response {meta['mean_response_tokens']:.0f} tokens; {meta['wrong']} wrong "
        f"responses, each branched at {meta['points']} points × T = {meta['continuations']} continuations "
        f"(fresh samples and the oracle: {meta['points'] * meta['continuations']} per wrong response).\n\n{table}\n"
    )
    out.with_suffix(f".{meta['setting']}.md").write_text(section)
    plot(out.with_suffix(f".{meta['setting']}.png"), meta, results)


def plot(path: Path, meta: dict, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    values = [results[n]["correct_per_1k_tokens"] for n in names]
    # a percentile interval of few prompts need not contain the point estimate: draw what it covers
    errors = [[max(v - results[n]["correct_per_1k_ci"][0], 0.0) for v, n in zip(values, names)],
              [max(results[n]["correct_per_1k_ci"][1] - v, 0.0) for v, n in zip(values, names)]]
    colors = ["C1" if n == "fci_d4_top" else "C3" if n.startswith("fci") else "C7" if n in ("fresh", "oracle") else "C0" for n in names]
    left.bar(range(len(names)), values, yerr=errors, color=colors, capsize=4)
    left.set_xticks(range(len(names)), [results[n]["label"].split(" (")[0] for n in names], rotation=30, ha="right", fontsize=8)
    left.set_ylabel("correct answers per 1,000 generated tokens")
    left.set_title(f"{meta['setting']}: what each rule finds (95% bootstrap over prompts)", fontsize=9)
    branching = [n for n in names if n not in ("fresh",)]
    right.boxplot([results[n]["positions"] or [float("nan")] for n in branching], orientation="horizontal")
    right.set_yticks(range(1, len(branching) + 1), [results[n]["label"].split(" (")[0] for n in branching], fontsize=8)
    right.set_xlabel("branch point: relative position in the response")
    right.set_xlim(0, 1)
    right.set_title("where each rule branches", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
