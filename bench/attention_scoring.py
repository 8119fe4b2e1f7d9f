"""Time and peak memory of FCI scoring against a plain forward, up to 32K tokens.

``lit_attn.attention.fci_scores`` runs one sdpa forward of the sequence and, inside it, turns
each layer's queries and keys into step-to-step attention without a T×T matrix (docs/attnrl.md
§2). This bench compares, on one sequence of T tokens:

* ``sdpa``: one plain forward of the decoder (no LM head, no cache) — the floor;
* ``fci``: ``fci_scores(model, ids, spans)``;
* ``eager``: a forward with ``attn_implementation="eager"`` and ``output_attentions=True`` —
  what one gets by asking transformers for the attention maps (skipped above ``--eager-max``
  tokens: layers × heads × T² × 4 bytes is 16 GiB at 16K for the model below).

Model: a random Qwen2 of the shipped default's shape (4 layers, hidden 128, 4 heads / 2 KV
heads) with 32K+ positions. Steps: a 64-token prompt, then steps of 50-100 tokens (seeded).

Each (variant, T) runs in a fresh Python process: after the model and input exist, the
process's resident-set high-water mark (``ru_maxrss``) is read; the variant runs once; the
rise of the high-water mark is its peak extra memory. Time is the CPU time of that process
(``time.process_time``, one torch thread) of the best of ``--repeats`` calls, so time spent
waiting for a core held by other work on a shared machine is not counted. Run::

    python bench/attention_scoring.py                   # 1K, 4K, 16K, 32K; writes docs/bench_attention_scoring.md
    python bench/attention_scoring.py --lengths 1024 4096 --no-write
    python bench/attention_scoring.py --block-sizes auto 256      # the page: the default and a fixed block
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bench_attention_scoring.md"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""For the memory runs: glibc serves every allocation above 64 KiB with mmap and returns it on
free, so the resident set follows the live tensors (with its default adaptive threshold, freed
blocks stay resident and the high-water mark depends on allocation history)."""
PROMPT_TOKENS = 64
STEP_TOKENS = (50, 100)


def step_spans(length: int, seed: int = 0) -> list[tuple[int, int]]:
    """A 64-token prompt, then steps of 50-100 tokens, covering ``length`` tokens."""
    rng = random.Random(seed)
    spans = [(0, PROMPT_TOKENS)]
    start = PROMPT_TOKENS
    while start < length:
        end = min(length, start + rng.randint(*STEP_TOKENS))
        spans.append((start, end))
        start = end
    return spans


def one(variant: str, length: int, repeats: int) -> dict:
    """Measure one variant (``sdpa``, ``eager`` or ``fci:<block_size or auto>``) at one length in this
    (fresh) process; return the numbers."""
    import torch

    from lit_attn.attention import fci_scores
    from lit_attn.models import build_tiny_model

    torch.set_num_threads(1)
    model = build_tiny_model(
        "qwen2", vocab_size=100, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
        intermediate_size=384, max_positions=max(length, 32768),
    ).eval()
    if variant == "eager":
        model.set_attn_implementation("eager")
    ids = torch.randint(3, 100, (1, length), generator=torch.Generator().manual_seed(0))
    spans = step_spans(length)
    decoder = model.base_model

    def run() -> None:
        with torch.no_grad():
            if variant == "sdpa":
                decoder(input_ids=ids, use_cache=False)
            elif variant == "eager":
                out = decoder(input_ids=ids, use_cache=False, output_attentions=True)
                assert len(out.attentions) == 4 and out.attentions[0].shape[-1] == length
            else:
                block = variant.split(":")[1]
                scores = fci_scores(model, ids[0], spans, block_size=None if block == "auto" else int(block))
                assert scores.shape == (len(spans),)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = []
    start = time.process_time()
    run()
    seconds.append(time.process_time() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(repeats - 1):
        start = time.process_time()
        run()
        seconds.append(time.process_time() - start)
    return {
        "variant": variant, "length": length, "steps": len(spans), "seconds": min(seconds),
        "extra_peak_mib": (peak - base) / 1024, "base_mib": base / 1024,
    }


def run_fresh(variant: str, length: int, repeats: int, env: dict | None = None) -> dict:
    """:func:`one` in a new Python process (so the memory high-water mark is its own)."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", variant, str(length), str(repeats)],
        check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(variant: str, length: int, repeats: int) -> dict:
    """Time from a process with the default allocator, memory from one with :data:`MALLOC_ENV`."""
    timed = run_fresh(variant, length, repeats)
    memory = run_fresh(variant, length, 1, MALLOC_ENV)
    return {**timed, "extra_peak_mib": memory["extra_peak_mib"], "base_mib": memory["base_mib"]}


def table(results: list[dict]) -> str:
    """Markdown table: one row per (T, variant), with ratios to the sdpa forward of the same T."""
    sdpa = {r["length"]: r for r in results if r["variant"] == "sdpa"}
    lines = [
        "| T | steps | variant | seconds | extra peak MiB | time / sdpa | memory / sdpa |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        base = sdpa.get(r["length"])
        name = f"fci_scores, block_size {r['variant'].split(':')[1]}" if r["variant"].startswith("fci") else r["variant"]
        if r["variant"] == "eager":
            name = "eager + output_attentions"
        ratios = (
            [f"{r['seconds'] / base['seconds']:.2f}×", f"{r['extra_peak_mib'] / base['extra_peak_mib']:.2f}×"]
            if base and r is not base else ["1", "1"] if base else ["—", "—"]
        )
        length = f"{r['length'] // 1024}K" if r["length"] % 1024 == 0 else str(r["length"])
        lines.append(
            f"| {length} | {r['steps']} | {name} | {r['seconds']:.2f} | {r['extra_peak_mib']:.0f} | " + " | ".join(ratios) + " |"
        )
    return "\n".join(lines)


def goal_summary(results: list[dict]) -> str:
    """One line per FCI block size: the worst time and memory ratios to sdpa, against the goal."""
    sdpa = {r["length"]: r for r in results if r["variant"] == "sdpa"}
    lines = ["Goal: fci_scores ≤ 2× the time and ≤ 1.5× the peak memory of the sdpa forward; 32K completes."]
    for variant in sorted({r["variant"] for r in results if r["variant"].startswith("fci")}):
        rows = [r for r in results if r["variant"] == variant and r["length"] in sdpa]
        time_ratio = {r["length"]: r["seconds"] / sdpa[r["length"]]["seconds"] for r in rows}
        memory_ratio = {r["length"]: r["extra_peak_mib"] / sdpa[r["length"]]["extra_peak_mib"] for r in rows}
        meets = [length for length in time_ratio if time_ratio[length] <= 2 and memory_ratio[length] <= 1.5]
        lines.append(
            f"- block_size {variant.split(':')[1]}: time ratio {min(time_ratio.values()):.2f}-{max(time_ratio.values()):.2f}×, "
            f"memory ratio {min(memory_ratio.values()):.2f}-{max(memory_ratio.values()):.2f}×; both goals met at "
            + (", ".join(f"{length // 1024}K" for length in meets) or "no length")
            + f"; 32K {'completed' if 32768 in time_ratio else 'not run'}."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--repeats", type=int, default=2, help="timed calls below 16K tokens (best kept); 1 from 16K")
    parser.add_argument("--eager-max", type=int, default=4096, help="longest T for the eager variant")
    parser.add_argument(
        "--block-sizes", nargs="+", default=["auto"], help="fci_scores block_size values: numbers or 'auto' (the default, None)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, do not write the docs page")
    args = parser.parse_args()
    variants = ["sdpa"] + [f"fci:{b}" for b in args.block_sizes] + ["eager"]
    results = []
    for length in args.lengths:
        for variant in variants:
            if variant == "eager" and length > args.eager_max:
                continue
            result = measure(variant, length, args.repeats if length < 16384 else 1)
            print(json.dumps(result), flush=True)
            results.append(result)
    result_table = table(results)
    print(result_table)
    if args.no_write:
        return
    command = "python bench/attention_scoring.py" + "".join(f" {a}" for a in sys.argv[1:])
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    base = min(r["base_mib"] for r in results)
    DOC.write_text(
        "# Attention scoring: FCI vs a plain forward, up to 32K tokens\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: {platform.machine()} Linux VM, {os.cpu_count()} CPU cores shared with other engineers' "
        f"tests and benchmarks running at the same time; one torch thread, fp32, torch "
        f"{_torch_version()}. Date: {today}.\n\n"
        "Model: random Qwen2 of the shipped default's shape (4 layers, hidden 128, 4 query / 2 KV heads of "
        "32 dims), positions extended to 32K. One sequence of T random tokens; steps: a 64-token prompt, "
        "then 50-100 tokens each (seeded).\n\n"
        "Method: every number comes from a fresh Python process that builds the model and the input, then "
        "runs the variant. *Time*: CPU time of that process (`time.process_time`, one thread, so waiting "
        "for a core held by other work is not counted), best of "
        f"{args.repeats} calls below 16K tokens, one call from 16K. *Memory*: a second fresh process, run "
        "with `MALLOC_MMAP_THRESHOLD_=65536` so that freed tensors leave the resident set; the rise of the "
        "resident-set high-water mark (`ru_maxrss`) over the first call, from a baseline taken after the "
        f"model and input exist (~{base:.0f} MiB, mostly the Python/torch/transformers imports). "
        "sdpa = decoder forward, no LM head, no cache; eager = the same with `attn_implementation=\"eager\"` "
        f"and `output_attentions=True`, skipped above {args.eager_max} tokens (its attention maps alone "
        "are layers × heads × T² × 4 B: 16 GiB at 16K, 64 GiB at 32K).\n\n"
        f"{result_table}\n\n{goal_summary(results)}\n\n{NOTES}"
    )
    print(f"wrote {DOC.relative_to(ROOT)}")


def _torch_version() -> str:
    import torch

    return torch.__version__


NOTES = """## Reading the numbers

**The goal is met at every length from 1K to 32K**, with the default (`block_size=None`, auto)
and with block_size 256 alike: FCI costs 1.1-1.7× the time of the sdpa forward and at most
1.2× its extra memory, and 32K completes. An earlier full run of the same command, minutes
before this one, gave for auto 1.41× / 1.47× / 1.53× / 1.61× time and 1.18× / 1.07× / 1.03× /
1.02× memory at 1K / 4K / 16K / 32K (block 256: 1.21× / 1.31× / 1.58× / 1.60× time). The
time ratio still rises slowly with T (the attention work grows as T², the rest as T) and should
level off near 1.7× for this model; the memory ratio falls.

**Before this change** (the code as it was, same protocol, same machine and day, against the
sdpa numbers of that earlier run), with block_size 256, the callback's and lit_attn/configs/attnrl.yaml's
former default:

| T | seconds | extra peak MiB | time / sdpa | memory / sdpa |
|---|---|---|---|---|
| 1K | 0.10 | 23 | 1.77× | 1.56× |
| 4K | 0.99 | 69 | 2.36× | 1.96× |
| 16K | 19.77 | 249 | 4.11× | 2.15× |
| 32K | 84.30 | 490 | 4.67× | 2.19× |

The previous version of this page had block_size 32 as the best setting: 2.83× time at 32K.

**What changed.** Three things, none of them an approximation:

1. *Only what FCI sums is computed.* Per key position `s`, FCI needs
   `c[s] = Σ_t w[t] · A[t, s]` over the query rows `t` whose step is at least Δ steps after the
   key's step, with `w[t] = 1/|step of t|`; a step's score is the mean of `c` over its keys.
   So no full softmax rows, no per-row step sums and no step × step matrix: only the target
   columns (keys of steps 2 and later, up to each row's limit) and, for them, a sum over rows.
2. *The softmax normaliser comes from the forward.* `A[t, s] = exp(score − lse[t])` needs each
   row's log-sum-exp `lse[t]`. On CPU, sdpa runs torch's flash kernel, which computes it anyway
   and returns it; when the consumer asks for it (`FCIAccumulator.wants_logsumexp`), the capture
   calls that kernel directly, after the same dispatch check sdpa makes, so the layer output is
   the same tensor (a test checks it bit for bit, padded and unpadded, for Qwen2, Llama, GPT-2).
3. *One matmul gives the exponent.* `w[t] · A[t, s] = 2^(x)` with
   `x = log2(e) · scale · q_t·k_s + (log2 w[t] − log2(e) · lse[t])`; the queries get the
   per-row constant as an extra component and the keys a component 1, so one batched fp32
   matmul per tile yields `x`, then an in-place `exp2` (about 2.7× cheaper than `exp` on this
   CPU in a micro-benchmark, and accurate to one unit in the last place) and a sum over the tile's rows, which the
   key-major tile layout keeps contiguous. Keys past a row's limit are zeroed in the small band
   where the limit changes inside a tile; the layer's own mask (padding, sliding window) is
   applied to the tile.

Tiles are `rows × key_chunk` per batch row and head, about 2 MiB of fp32 on CPU
(`lit_attn.attention.fci.fci_block_shape`): `block_size` sets the rows, the key chunk fills the
budget. Auto picks the power of two that fits 1024 keys per row (128 rows for this model's 4
heads at batch 1, 16 rows for 28 heads). Tuned in-process at 8K tokens: tiles of 2^19 or 2^20
elements with 32-256 rows all gave 1.46-1.52×; 2^21 elements 1.6-1.7× (past the cache), 2^18
with 32-64 rows 1.6-1.7× (more calls).

**Block size matters little now.** From 4K on, auto and 256 are within noise of each other
(medians of 7 in-process calls at 4K: 0.604 vs 0.603 s). At 1K, 256 was ahead in both full
runs (0.061 vs 0.069 s here, 0.067 vs 0.078 s before; in-process medians 0.074 vs 0.081 s):
with calls this short, fewer row blocks mean less per-call overhead — some 8 ms, well inside the
goal either way. Auto is the default because it keeps the tile cache-sized when heads × batch
is large, where a fixed 256 rows would make each tile tens of MiB.

**Exactness.** The values are the definition's, up to fp32 rounding: the exactness tests
against eager attention (`tests/test_attention.py`: Qwen2, Llama, GPT-2; several gaps, block
sizes, small key chunks, left-padded batches, a sliding-window model, the think-end cut) pass
at 1e-5, and auto agrees with fixed block sizes to 1e-6. Differences against the eager maps are
about 1e-7; the flash kernel's log-sum-exp agrees with `torch.logsumexp` to about 1e-6.

**Where the time goes now.** A profile at 16K tokens (one thread; the profiler adds overhead):
the forward's flash attention 5.7 s; FCI's matmul 2.5 s, `exp2` 0.8 s, row sums 0.4 s, the rest
small. FCI's extra work is about 0.7× the forward's attention kernel. The matmul (33-long dot
products, fp32) already runs at roughly 80% of this core's fp32 multiply-add peak, so going lower would need
lower-precision scores, i.e. no longer exact.

**Memory.** FCI's extra memory is now one tile (2 MiB), the fp32 keys with their column of ones
(`T × 33 × 4 B` per KV head: 8 MiB at 32K here) and `heads × T` floats for the sums and the
log-sum-exp; the old block 256 kept two `256 × T × heads` fp32 blocks (128 MiB each at 32K).

**Where the forward's log-sum-exp is not available** — GPU, CPU under autocast, or an sdpa
that picks another kernel — FCI computes it from the fp32 scores of each row block (one more
matmul and a log-sum-exp pass; memory `4 · batch · heads · rows · T` bytes per block) and uses
larger tiles (256 MiB) on accelerators. That path is tested on CPU (with sdpa forced to its math
kernel) but its speed was not measured; no GPU was available for this page.

**A realistic layer shape.** With Qwen2.5-0.5B-like layers (14 query / 2 KV heads of 64 dims,
hidden 896, MLP 4864; 2 layers, random weights) at 8K tokens, in-process best of 2: the forward
9.0 s, FCI auto 10.9 s (1.21×), block 256 10.5 s (1.17×): the MLPs weigh more, the ratio falls.

**Noise.** The machine was shared with other engineers' runs. CPU time excludes waiting for a
core, not memory-bandwidth contention: expect ±10-15% on times between runs.
"""


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        main()
