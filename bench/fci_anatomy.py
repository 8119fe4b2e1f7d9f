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
  write-down steps as *queries* (a three-token step's attention counts 1/3 per token in α).

    python bench/fci_anatomy.py --model runs/subtotal_model     # ~1 min; writes docs/bench_fci_anatomy.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_attn.attention import split_steps  # noqa: E402
from lit_attn.attention.steps import STEP_DELIMITER  # noqa: E402
from lit_attn.exploration.selection import atb_branch_steps  # noqa: E402
from lit_attn.models import load_policy  # noqa: E402
from lit_attn.tasks import SubtotalTask, make_split  # noqa: E402

KINDS = ("x chain", "x=…", "y chain", "y=…", "final chain")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs" / "subtotal_model"))
    parser.add_argument("--solutions", type=int, default=32)
    parser.add_argument("--seed", default="fci-anatomy")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_fci_anatomy.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    model, tok = load_policy(args.model, attn_implementation="eager")
    model.eval()
    task = SubtotalTask()
    kinds = step_kinds(task)
    records = make_split(task, args.solutions, seed=args.seed)
    rows = []
    for gap in (1, 4):
        fci_by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
        on_write_down = []
        from_write_downs = []
        for rec in records:
            prompt = list(tok(rec["prompt"])["input_ids"])
            ids = prompt + list(tok(rec["solution"], add_special_tokens=False)["input_ids"])
            spans = split_steps(ids, tok, STEP_DELIMITER, prompt_length=len(prompt))
            alpha = step_attention(model, ids, spans)  # span 0 is the prompt; span i is response step i - 1
            n = len(spans)
            per_head = torch.zeros(alpha.shape[0], alpha.shape[1], n, dtype=torch.double)
            for k in range(2, n):  # the prompt and the first response step are never scored
                if k + gap < n:
                    per_head[:, :, k] = alpha[:, :, k + gap :, k].sum(-1)
            fci = per_head.flatten(0, 1).max(0).values
            for k in range(2, n - 1):
                fci_by_kind[kinds[k - 1]].append(float(fci[k]))
            chosen = atb_branch_steps(fci, spans, ratio=0.2, num_points=2)
            written = {task.named_steps[0] + 1, task.named_steps[1] + 1}
            on_write_down += [k in written for k in chosen]
            for k in range(2, n):
                if kinds[k - 1] in ("x chain", "y chain") and fci[k] > 0:
                    l, h = divmod(int(per_head[:, :, k].flatten().argmax()), per_head.shape[1])
                    share = sum(float(alpha[l, h, j, k]) for j in written if j >= k + gap) / float(fci[k])
                    from_write_downs.append(share)
        means = {k: statistics.mean(v) if v else float("nan") for k, v in fci_by_kind.items()}
        rows.append((gap, means, sum(on_write_down) / len(on_write_down), statistics.mean(from_write_downs)))
    header = "| Δ | " + " | ".join(f"mean FCI: {k}" for k in KINDS) + " | ATB points on a write-down | chain steps' FCI given by the write-downs |"
    lines = [header, "|---" * (len(KINDS) + 3) + "|"]
    for gap, means, share, given in rows:
        lines.append(f"| {gap} | " + " | ".join(f"{means[k]:.3f}" for k in KINDS) + f" | {share:.2f} | {given:.2f} |")
    table = "\n".join(lines)
    print(table)
    command = "python bench/fci_anatomy.py " + " ".join(sys.argv[1:])
    readings = []
    for gap, means, share, given in rows:
        best = max(KINDS, key=lambda k: means[k])
        readings.append(
            f"- Δ = {gap}: the best-scored kind of step is {best} (mean FCI {means[best]:.3f}); {share:.0%} of ATB's points land "
            f"on a write-down; the write-downs, as readers, give {given:.0%} of the chain "
            "steps' scores in each step's best head."
        )
    text = (
        "# Where FCI's scores come from on the subtotal mode\n\n"
        f"Command: `{command}` ({time.time() - started:.0f} s; model `{Path(args.model).name}`; "
        f"{args.solutions} correct reference solutions of `SubtotalTask()`; eager attention, float64 step maps; "
        f"{time.strftime('%Y-%m-%d')})\n\n"
        "FCI scores a step by the attention that steps at least Δ later pay it (mean over the reader's tokens and "
        "the scored step's tokens, summed over readers, max over the model's heads); ATB branches at the earliest "
        "two steps among the top 20% of a response's scores ([attnrl.md](attnrl.md)). Columns: the mean FCI of each "
        "kind of step (the final chain's last Δ steps have no reader that far on, so they score 0 and pull its mean "
        "down); the share of ATB's points on `x=…` or `y=…`; for each chain step, the share of its score (in its "
        "best head) that the write-downs give as readers. What the mode is and what these numbers mean for "
        "exploration: [task.md](task.md#subtotal-mode-steps-that-later-steps-rely-on).\n\n"
        + table + "\n\n" + "\n".join(readings) + "\n"
    )
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
