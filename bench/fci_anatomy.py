"""Where FCI's scores come from on the task's subtotal mode: which steps it ranks high, and which
later steps' attention puts them there.

FCI (docs/attnrl.md) scores step k by the attention later steps j ≥ k + Δ pay it, averaged over
the query tokens of j and the key tokens of k, summed over j, and maxed over heads. On correct
reference solutions of the subtotal mode this bench takes eager attention maps (one forward per
solution) and reports, at Δ = 1 and Δ = 4:

- the mean FCI of each kind of step (the chain that works ``x`` out, the write-down ``x=…``,
  ``y``'s chain, ``y=…``, the final chain);
- how often ATB's two branch points (top 20%, earliest two) land on a write-down;
- for the best-scored head of each chain step, the share of that step's FCI given by the
  write-down steps as *queries* (a three-token step's attention counts 1/3 per token in α);
- what each branch rule's points would yield for an *ideal slip policy* (one that slips at each
  write-down with probability s and makes no other mistake), the points chosen by this model's
  own attention or entropy on the reference solutions: this separates what the selection rule can
  reach on the mode from how well a model has learned it (for each answer shape of ``--shapes``;
  the first shape also gives the FCI table).

    python bench/fci_anatomy.py --model runs/subtotal_model     # ~15 s; writes docs/bench_fci_anatomy.md
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from lit_attn.attention import split_steps  # noqa: E402
from lit_attn.attention.steps import STEP_DELIMITER  # noqa: E402
from lit_attn.exploration.selection import atb_branch_steps, early_branch_steps, entropy_branch_offsets  # noqa: E402
from lit_attn.models import load_policy  # noqa: E402
from lit_attn.tasks import SubtotalTask, make_split  # noqa: E402
from branching import top_scored_steps  # noqa: E402  (bench/branching.py's diagnostic rule)

KINDS = ("x chain", "x=…", "y chain", "y=…", "final chain")
RULES = {
    "fci_d1": "FCI Δ = 1, ATB (the built-in config)",
    "fci_d4": "FCI Δ = 4, ATB (paper)",
    "fci_d4_top": "FCI Δ = 4, two best-scored steps (diagnostic, not ATB)",
    "early": "early steps",
    "entropy": "entropy (TreeRL)",
    "random": "random steps (expected over all pairs)",
    "write_downs": "both write-downs",
    "oracle": "oracle: the first wrong step",
}


def ideal_continuation(offset: int, x_value: int, y_value: int, length: int, slip: float) -> tuple[float, float]:
    """Expected (correct, cost) of one continuation sampled from ``offset`` of a *wrong* response
    of the ideal slip policy: it writes each subtotal down wrong with probability ``slip``
    independently (the value tokens at response offsets ``x_value`` and ``y_value``) and makes no
    other mistake. A continuation that regenerates both values must get both right; one that
    keeps ``x``'s value succeeds only if ``x`` was right and ``y`` comes out right; one past
    ``y``'s value keeps the mistake. Cost: the continuation's tokens as a share of a response of
    ``length`` tokens."""
    right = 1.0 - slip
    wrong = 1.0 - right * right
    x_right_given_wrong = right * slip / wrong
    if offset <= x_value:
        correct = right * right
    elif offset <= y_value:
        correct = x_right_given_wrong * right
    else:
        correct = 0.0
    return correct, (length - offset) / length


def ideal_oracle(x_step: int, y_step: int, length: int, slip: float) -> tuple[float, float]:
    """Expected (correct, cost) of a continuation from the first wrong step of the ideal slip
    policy's wrong responses: ``x``'s write-down (at response offset ``x_step``) when ``x`` slipped,
    else ``y``'s (at ``y_step``)."""
    right = 1.0 - slip
    wrong = 1.0 - right * right
    x_first = slip / wrong
    correct = x_first * right * right + (1.0 - x_first) * right
    cost = (x_first * (length - x_step) + (1.0 - x_first) * (length - y_step)) / length
    return correct, cost


def ideal_ratio(pairs: list[tuple[float, float]], slip: float) -> float:
    """Correct answers per generated token of continuations, over those of fresh samples."""
    correct = sum(c for c, _ in pairs)
    cost = sum(t for _, t in pairs)
    return (correct / cost) / (1.0 - slip) ** 2


def step_kinds(task: SubtotalTask) -> list[str]:
    """The kind of each response step (0-based) of a subtotal-mode solution."""
    x, y = task.named_steps
    kinds = ["x chain"] * x + ["x=…"] + ["y chain"] * (y - x - 1) + ["y=…"]
    return kinds + ["final chain"] * (task.num_steps - len(kinds))


@torch.no_grad()
def step_attention(model, ids: list[int], spans: list[tuple[int, int]]) -> torch.Tensor:
    """α[l, h, j, k]: mean over the query tokens of step j and the key tokens of step k."""
    out = model(torch.tensor([ids]), output_attentions=True)
    attn = torch.stack([a[0] for a in out.attentions]).double()  # (L, H, T, T)
    weights = torch.zeros(len(spans), len(ids), dtype=torch.double)
    for k, (a, b) in enumerate(spans):
        weights[k, a:b] = 1.0 / (b - a)
    return torch.einsum("jt,lhts,ks->lhjk", weights, attn, weights)


@torch.no_grad()
def response_entropy(model, ids: list[int], prompt_length: int) -> torch.Tensor:
    """Entropy of the next-token distribution that produced each response token (teacher-forced)."""
    logits = model(torch.tensor([ids])).logits[0, prompt_length - 1 : len(ids) - 1].double()
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def parse_shape(text: str) -> tuple[int, int]:
    """``"7x5"`` → (7, 5): facts in ``x``'s chain and in ``y``'s."""
    try:
        x, y = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is <x facts>x<y facts>, e.g. 5x4; got {text!r}") from None
    return x, y


def measure(model, tok, task: SubtotalTask, solutions: int, seed: str, slip: float) -> dict:
    """FCI per kind of step, ATB's points on write-downs, and each rule's ideal-policy yield."""
    kinds = step_kinds(task)
    records = make_split(task, solutions, seed=seed)
    gaps = (1, 4)
    fci_by_kind = {gap: {k: [] for k in KINDS} for gap in gaps}
    on_write_down: dict[int, list[bool]] = {gap: [] for gap in gaps}
    from_write_downs: dict[int, list[float]] = {gap: [] for gap in gaps}
    ideal: dict[str, list[tuple[float, float]]] = {rule: [] for rule in RULES}
    positions: dict[str, list[float]] = {rule: [] for rule in RULES}
    as_early: dict[int, list[bool]] = {gap: [] for gap in gaps}  # ATB chose exactly the early-steps rule's points
    x_span, y_span = task.named_steps[0] + 1, task.named_steps[1] + 1  # span indices of x=… and y=…
    written = {x_span, y_span}
    right = 1.0 - slip
    x_first = slip / (1.0 - right * right)  # share of wrong responses whose first wrong step is x=…
    for rec in records:
        prompt = list(tok(rec["prompt"])["input_ids"])
        ids = prompt + list(tok(rec["solution"], add_special_tokens=False)["input_ids"])
        spans = split_steps(ids, tok, STEP_DELIMITER, prompt_length=len(prompt))
        alpha = step_attention(model, ids, spans)  # span 0 is the prompt; span i is response step i - 1
        n, P, length = len(spans), len(prompt), len(ids) - len(prompt)
        # the value token of a write-down (`x=` `4` `\n\n`) is its step's second token
        x_value, y_value = spans[x_span][0] + 1 - P, spans[y_span][0] + 1 - P
        chosen_steps: dict[str, list[int]] = {}
        for gap in gaps:
            per_head = torch.zeros(alpha.shape[0], alpha.shape[1], n, dtype=torch.double)
            for k in range(2, n):  # the prompt and the first response step are never scored
                if k + gap < n:
                    per_head[:, :, k] = alpha[:, :, k + gap :, k].sum(-1)
            fci = per_head.flatten(0, 1).max(0).values
            for k in range(2, n - 1):
                fci_by_kind[gap][kinds[k - 1]].append(float(fci[k]))
            chosen = atb_branch_steps(fci, spans, ratio=0.2, num_points=2)
            chosen_steps[f"fci_d{gap}"] = chosen
            if gap == 4:
                chosen_steps["fci_d4_top"] = top_scored_steps(fci, 2)
            on_write_down[gap] += [k in written for k in chosen]
            for k in range(2, n):
                if kinds[k - 1] in ("x chain", "y chain") and fci[k] > 0:
                    l, h = divmod(int(per_head[:, :, k].flatten().argmax()), per_head.shape[1])
                    share = sum(float(alpha[l, h, j, k]) for j in written if j >= k + gap) / float(fci[k])
                    from_write_downs[gap].append(share)
        chosen_steps["early"] = early_branch_steps(spans, num_points=2)
        for gap in gaps:
            as_early[gap].append(chosen_steps[f"fci_d{gap}"] == chosen_steps["early"])
        chosen_steps["write_downs"] = [x_span, y_span]
        offsets = {rule: [spans[k][0] - P for k in steps] for rule, steps in chosen_steps.items()}
        offsets["entropy"] = entropy_branch_offsets(response_entropy(model, ids, P), num_points=2)
        pairs = list(itertools.combinations(range(2, n), 2))
        offsets["random"] = [spans[k][0] - P for pair in pairs for k in pair]
        for rule, points in offsets.items():
            weight = 1.0 / len(pairs) if rule == "random" else 1.0
            for o in points:
                correct, cost = ideal_continuation(o, x_value, y_value, length, slip)
                ideal[rule].append((correct * weight, cost * weight))
                positions[rule].append(o / length)
        ideal["oracle"].append(ideal_oracle(spans[x_span][0] - P, spans[y_span][0] - P, length, slip))
        positions["oracle"] += [(spans[x_span][0] - P) / length] * round(100 * x_first)
        positions["oracle"] += [(spans[y_span][0] - P) / length] * round(100 * (1 - x_first))
    rows = []
    for gap in gaps:
        means = {k: statistics.mean(v) if v else float("nan") for k, v in fci_by_kind[gap].items()}
        rows.append((gap, means, statistics.mean(on_write_down[gap]), statistics.mean(from_write_downs[gap])))
    return {
        "rows": rows,
        "as_early": {gap: statistics.mean(v) for gap, v in as_early.items()},
        "ratio": {rule: ideal_ratio(ideal[rule], slip) for rule in RULES},
        "position": {rule: statistics.median(positions[rule]) for rule in RULES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs" / "subtotal_model"))
    parser.add_argument("--solutions", type=int, default=32)
    parser.add_argument("--seed", default="fci-anatomy")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_fci_anatomy.md"))
    parser.add_argument(
        "--shapes", type=parse_shape, nargs="+", default=[(5, 4), (6, 4), (7, 5), (8, 6)],
        help="answer shapes (<x facts>x<y facts>) for the ideal-policy table; the first also gives the FCI table",
    )
    parser.add_argument("--slip", type=float, default=0.5, help="the ideal policy's slip rate at each write-down")
    args = parser.parse_args()
    if not 0.0 < args.slip < 1.0:
        parser.error(f"--slip must be in (0, 1), got {args.slip}")
    torch.set_num_threads(1)
    started = time.time()
    model, tok = load_policy(args.model, attn_implementation="eager")
    model.eval()
    results = {
        shape: measure(model, tok, SubtotalTask(x_facts=shape[0], y_facts=shape[1]), args.solutions, args.seed, args.slip)
        for shape in args.shapes
    }
    first = args.shapes[0]
    rows = results[first]["rows"]
    header = "| Δ | " + " | ".join(f"mean FCI: {k}" for k in KINDS) + " | ATB points on a write-down | chain steps' FCI given by the write-downs |"
    lines = [header, "|---" * (len(KINDS) + 3) + "|"]
    for gap, means, share, given in rows:
        lines.append(f"| {gap} | " + " | ".join(f"{means[k]:.3f}" for k in KINDS) + f" | {share:.2f} | {given:.2f} |")
    table = "\n".join(lines)
    names = [f"{x} + {y} facts" for x, y in args.shapes]
    ideal_lines = [
        "| rule | " + " | ".join(f"{name}: median position, yield" for name in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for rule, label in RULES.items():
        cells = [f"{results[shape]['position'][rule]:.2f}, **{results[shape]['ratio'][rule]:.2f}×**" for shape in args.shapes]
        ideal_lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ideal_table = "\n".join(ideal_lines)
    print(table)
    print()
    print(ideal_table)
    command = "python bench/fci_anatomy.py " + " ".join(sys.argv[1:])
    readings = []
    for gap, means, share, given in rows:
        best = max(KINDS, key=lambda k: means[k])
        readings.append(
            f"- Δ = {gap}: the best-scored kind of step is {best} (mean FCI {means[best]:.3f}); {share:.0%} of ATB's points land "
            f"on a write-down; the write-downs, as readers, give {given:.0%} of the chain "
            f"steps' scores in each step's best head. ATB's two points are exactly the early-steps rule's (the first "
            f"two eligible steps) in {results[first]['as_early'][gap]:.0%} of the solutions."
        )
    text = (
        "# Where FCI's scores come from on the subtotal mode\n\n"
        f"Command: `{command}` ({time.time() - started:.0f} s; model `{Path(args.model).name}`; "
        f"{args.solutions} correct reference solutions per shape, `SubtotalTask(x_facts, y_facts)`; eager attention, "
        f"float64 step maps; {time.strftime('%Y-%m-%d')})\n\n"
        "FCI scores a step by the attention that steps at least Δ later pay it (mean over the reader's tokens and "
        "the scored step's tokens, summed over readers, max over the model's heads); ATB branches at the earliest "
        "two steps among the top 20% of a response's scores ([attnrl.md](attnrl.md)). What the mode is and what "
        "these numbers mean for exploration: [task.md](task.md#subtotal-mode-steps-that-later-steps-rely-on).\n\n"
        f"## Which steps FCI scores high ({first[0]} + {first[1]} facts)\n\n"
        "Columns: the mean FCI of each kind of step (the final chain's last Δ steps have no reader that far on, "
        "so they score 0 and pull its mean down); the share of ATB's points on `x=…` or `y=…`; for each chain "
        "step, the share of its score (in its best head) that the write-downs give as readers.\n\n"
        + table + "\n\n" + "\n".join(readings) + "\n\n"
        "## What the rules' points would give a policy that had learned the mode\n\n"
        f"An ideal slip policy writes each subtotal down wrong with probability s = {args.slip:g}, independently, "
        "and makes no other mistake. Each rule picks its two points on the reference solutions with this "
        "model's own attention (FCI) or next-token entropy (TreeRL's rule; teacher-forced, so the taught slips "
        "show as uncertainty at the written values); a continuation from a point then succeeds as that policy "
        "would: from at or before `x`'s written value it must get both subtotals right, from between the two "
        "values only `y` (and only if `x` was right), from past `y`'s value never. Cost: the continuation's "
        "tokens as a share of a response, as in bench_branching.md. Yield: correct answers per generated token "
        "× fresh samples' (fresh = 1.00×). Position: median branch offset / response length. The oracle branches "
        "at the first wrong step (`x=…` when `x` slipped, else `y=…`). These are expectations, not samples: "
        "they say what each rule's selection can reach on a shape with this model's scores, however well a "
        "policy learned the slips.\n\n"
        + ideal_table + "\n"
    )
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
