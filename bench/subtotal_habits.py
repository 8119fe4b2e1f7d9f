"""What a policy does on the task's subtotal mode, step by step: how often it writes a subtotal
down wrong, whether it reads back what it wrote, whether its final chain adds up, and where its
wrong answers first go wrong.

Samples ``--samples`` responses (temperature 1) for each of ``--prompts`` held-out prompts of
``SubtotalTask()`` and counts, over the sampled text:

- a write-down ``x=V`` (``y=V``) is *slipped* when V differs from the result of the step before it;
- a read ``(x=V)`` in the final chain *agrees* when V is the value the response wrote down;
- a final-chain step *adds up* when its result is its two operands combined modulo 10;
- the first wrong step of each wrong response (``lit_attn.tasks.first_wrong_step``).

    python bench/subtotal_habits.py --model runs/subtotal_model      # ~1 min; writes docs/bench_subtotal_habits.md
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_attn.attention.steps import STEP_DELIMITER  # noqa: E402
from lit_attn.models import load_policy  # noqa: E402
from lit_attn.sampling import sample_continuations  # noqa: E402
from lit_attn.tasks import SubtotalTask, first_wrong_step, make_split, verify  # noqa: E402
from lit_attn.tasks.subtotal import OPENERS  # noqa: E402

FINAL_STEP = re.compile(r"\S+ [^:]*:\(?(?:[a-z]=)?(\d)\)?([+-])\([a-z]=(\d)\)=(\d)")


def habits(text: str, solution: str) -> Counter:
    """The counts of one sampled response (see the module docstring)."""
    counts: Counter = Counter()
    steps = text.strip().split(STEP_DELIMITER)
    written: dict[str, str] = {}
    for i, step in enumerate(steps):
        named = re.fullmatch(r"([xy])=(\d)", step)
        if named and i > 0:
            name, value = named.groups()
            written[name] = value
            counts[f"{name} written"] += 1
            counts[f"{name} slipped"] += value != steps[i - 1].rsplit("=", 1)[-1]
        if step.split(" ", 1)[0] in OPENERS:
            for name, value in re.findall(r"\(([xy])=(\d)\)", step):
                if name in written:
                    counts["reads"] += 1
                    counts["reads agree"] += value == written[name]
            match = FINAL_STEP.fullmatch(step)
            if match:
                a, op, b, result = match.groups()
                counts["final steps"] += 1
                counts["final steps add up"] += (int(a) + int(b) if op == "+" else int(a) - int(b)) % 10 == int(result)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs" / "subtotal_model"))
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_subtotal_habits.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    model, tok = load_policy(args.model)
    model.eval()
    task = SubtotalTask()
    records = make_split(task, args.prompts, seed=f"subtotal-habits-{args.seed}")
    prompts = [list(tok(r["prompt"])["input_ids"]) for r in records]
    out = sample_continuations(
        model, tok, prompts, args.samples, max_new_tokens=420, temperature=1.0, generator_seed=args.seed, batch_size=64
    )
    total: Counter = Counter()
    first_wrong: Counter = Counter()
    for i in range(len(out)):
        record = records[int(out.prefix_index[i])]
        text = tok.decode(out.new_tokens(i), skip_special_tokens=True)
        total += habits(text, record["solution"])
        correct = verify(text, record["answer"]) == 1.0
        total["correct"] += correct
        if not correct:
            first_wrong[first_wrong_step(text, record["solution"])] += 1
    n = len(out)
    x, y = task.named_steps
    rows = [
        ("sampled responses", f"{n}"),
        ("correct answers", f"{total['correct']} ({total['correct'] / n:.1%})"),
        ("`x` written down wrong (slip taught: 50%)", f"{total['x slipped']} of {total['x written']} ({total['x slipped'] / max(total['x written'], 1):.0%})"),
        ("`y` written down wrong (slip taught: 50%)", f"{total['y slipped']} of {total['y written']} ({total['y slipped'] / max(total['y written'], 1):.0%})"),
        ("final-chain reads that agree with the value written down", f"{total['reads agree']} of {total['reads']}"),
        ("final-chain steps that add up", f"{total['final steps add up']} of {total['final steps']}"),
    ]
    where = ", ".join(
        f"step {k}{' (x=…)' if k == x else ' (first of y’s chain)' if k == x + 1 else ' (y=…)' if k == y else ''}: {v}"
        for k, v in sorted(first_wrong.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    )
    table = "| quantity | count |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    print("first wrong step of the wrong responses:", where)
    command = "python bench/subtotal_habits.py " + " ".join(sys.argv[1:])
    Path(args.out).write_text(
        "# What a policy does on the subtotal mode, step by step\n\n"
        f"Command: `{command}` ({time.time() - started:.0f} s; model `{Path(args.model).name}`; {args.prompts} held-out "
        f"prompts of `SubtotalTask()` × {args.samples} samples at temperature 1; {time.strftime('%Y-%m-%d')})\n\n"
        "The script's docstring defines each count; what they mean for exploration: "
        "[task.md](task.md#subtotal-mode-steps-that-later-steps-rely-on).\n\n"
        f"{table}\n\nFirst wrong step of the wrong responses (0-based; step {x} writes `x` down, step {y} `y`): {where}.\n"
    )


if __name__ == "__main__":
    main()
