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
    """Measure one variant (``sdpa``, ``eager`` or ``fci:<block_size>``) at one length in this
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
                scores = fci_scores(model, ids[0], spans, block_size=int(variant.split(":")[1]))
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
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[128], help="fci_scores block_size values")
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

**Why FCI costs more than the forward.** `fci_scores` *is* an sdpa forward (the capture runs each
layer's ordinary sdpa attention) plus, per layer, the exact attention probabilities recomputed
block by block: a fp32 query × key matmul, a softmax, and per-step sums. The fused sdpa kernel
does its query × key, softmax and value product in cache-sized tiles; FCI's blocks
(block_size rows × T keys × heads, fp32) go through memory three to four times. The extra work
is of the order of the forward's own attention, and at long T attention dominates both, so the
time ratio rises with T (block_size 32: 1.6× at 1K, 2.1× at 4K, 2.8-2.9× from 16K on). A
profile at 8K tokens (one thread) shows the forward's flash attention at 2.2 s, and FCI's matmul
2.3 s, softmax 1.3 s and step sums 1.1 s. **The time goal (≤ 2×) is missed from 4K on; the
memory goal (≤ 1.5×) is met at every length, and 32K completes.**

**Block size.** On this CPU block_size 32 beats 128 at every length, in time (by 35% at 32K)
and in memory. With 128 at 32K the score and probability blocks are 64 MiB each and the time
grows faster than T² (16K → 32K: 5.2× instead of 4×), most likely because the blocks no longer
fit in the caches. The library default is 128 (AttentionBranchCallback's `fci_block_size` is
256); on CPU pass 32. On a GPU, larger blocks mean fewer kernel launches — not measured here.

**Changed with this benchmark.** FCI used to average the probabilities per key step with a
dense (T × S) weight matrix product — O(block · T · S) per block, S = number of steps, i.e.
cubic in T — and kept two S × T fp32 weight matrices (2 × 57 MB at 32K). It now sums over the
contiguous key runs of each step (`torch.segment_reduce`, O(block · T)) and adds rows per query
step: 8K tokens 5.0 s → 3.75 s, 16K 24.9 s → 14.7 s, same values (old vs new agree to 2e-8; the
exactness tests in `tests/test_attention.py` pass).

**What would lower time further (not done here).**
- `CapturedLayer.attention_rows` (lit_attn/attention/capture.py, shared with attribution)
  multiplies the queries by a transposed *view* of the keys; a contiguous transposed copy made
  once per layer made that matmul 1.7× faster in a micro-benchmark (256 rows × 8K keys:
  13.4 → 7.8 ms).
- The softmax could become `exp(scores − lse)` with each row's log-sum-exp, which the CPU flash
  kernel already computes (`aten::_scaled_dot_product_flash_attention_for_cpu` returns it): one
  pass over the block instead of three; this needs the capture to call the kernel itself.
- More threads, and on GPU a fused kernel for "attention probabilities → per-step sums".

**Memory.** FCI's extra memory is the block: `block_size × T × heads × 4 B` per tensor, with
the scores and the probabilities alive together — 64 MiB each at block 128 and 32K for this
model. The forward's own peak (MLP activations, T × 384 × 4 B each) is small for a 0.8M-parameter
model, so the block dominates the ratio; block_size 32 cuts it about 4× at a small time cost.
With a real model the forward's activations grow with the hidden size while the block does not
(it scales with heads only), so the memory ratio falls.

**Noise.** The machine was shared with other engineers' runs. CPU time excludes waiting for a
core, not memory-bandwidth contention: expect ±10-15% on times between runs.
"""


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        main()
