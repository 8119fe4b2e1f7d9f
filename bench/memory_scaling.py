"""Peak memory of one RL step's heavy work as the step's batch grows 8×, at a fixed micro-batch.

A random Qwen2 of a realistic shape (~20M parameters: hidden 384, 8 layers, vocab 16K) and
responses of 2,048 tokens after 256-token prompts. For each batch size B (sequences per step)
a fresh process runs what a step does with B sequences and reports its peak resident memory
(ru_maxrss) above what the model and optimiser hold before the step:

* ``grpo``: behaviour and reference log-probs (no grad) and the PPO update (one optimiser
  step over all B sequences), :func:`lit_attn.ppo.ppo_update`.
* ``attnrl``: the FCI capture over the B responses (``rollout_batch_size`` at a time), the
  prefill of B branch prefixes with 2 continuations each (``sample_continuations``,
  ``batch_size``), and the update with per-token (tree) advantages.

With ``micro_batch_size`` = ``rollout_batch_size`` = 2 the peak should stay flat as B grows; the
``whole`` rows (no micro-batches) show what it costs otherwise. Run::

    python bench/memory_scaling.py          # writes docs/bench_memory_scaling.md (~10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=16384, hidden_size=384, num_layers=8, num_heads=6, num_kv_heads=2, intermediate_size=1024,
             max_positions=4096)
PROMPT, RESPONSE = 256, 2048


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Host:
    """What ppo_update needs of a LightningModule, around plain AdamW (one process)."""

    _trainer = None

    def __init__(self, model) -> None:
        import torch

        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def optimizers(self):
        return self.optimizer

    def manual_backward(self, loss) -> None:
        loss.backward()

    def clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], gradient_clip_val)


def measure(method: str, batch: int, micro: int | None) -> dict:
    import torch

    from lit_attn.attention import fci_scores_batch
    from lit_attn.sampling import sample_continuations
    from lit_attn.experience import pack_sequences
    from lit_attn.models import build_tiny_model
    from lit_attn.settings import UpdateSettings
    from lit_attn.ppo import frozen_reference, ppo_update
    from lit_attn.exploration.host import row_chunks

    torch.set_num_threads(1)
    model = build_tiny_model("qwen2", seed=0, **SHAPE)
    model.config.use_cache = True
    ref = build_tiny_model("qwen2", seed=0, **SHAPE).requires_grad_(False)
    host = Host(model)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, SHAPE["vocab_size"], (PROMPT,), generator=g).tolist() for _ in range(batch)]
    responses = [torch.randint(2, SHAPE["vocab_size"], (RESPONSE,), generator=g).tolist() for _ in range(batch)]
    per_token = method == "attnrl"
    advantages = [torch.randn(RESPONSE if per_token else (), generator=g) for _ in range(batch)]
    experience = pack_sequences(prompts, responses, 0, advantages=advantages)
    # AdamW state exists after a first step: take it on a one-token batch so the baseline holds it
    tiny = pack_sequences([prompts[0][:4]], [responses[0][:4]], 0, advantages=[torch.tensor(1.0)])
    ppo_update(host, model, tiny, UpdateSettings(minibatch_size=1, kl_coef=0.0))
    baseline = peak_mib()

    start = time.perf_counter()
    phases = {}
    if method == "attnrl":
        spans = [[(0, PROMPT)] + [(PROMPT + s, PROMPT + s + 256) for s in range(0, RESPONSE, 256)]] * batch
        ids = experience.input_ids
        for chunk in row_chunks(batch, micro):
            rows = list(chunk)
            fci_scores_batch(model, ids[rows], experience.attention_mask[rows], [spans[r] for r in rows], min_gap=1)
        phases["fci"] = peak_mib() - baseline
        prefixes = [p + r[: RESPONSE // 2] for p, r in zip(prompts, responses)]
        sample_continuations(model, _Tokenizer(), prefixes, 2, max_new_tokens=4, generator_seed=0,
                             batch_size=2 * micro if micro else None)
        phases["prefill"] = peak_mib() - baseline
    settings = UpdateSettings(minibatch_size=batch, kl_coef=0.001, micro_batch_size=micro, logprob_chunk_size=256)
    ppo_update(host, model, experience, settings, reference=frozen_reference(ref), generator=torch.Generator().manual_seed(0))
    return {"method": method, "batch": batch, "micro": micro, "peak_mib": peak_mib() - baseline,
            "seconds": time.perf_counter() - start, "phases": phases}


NOTES = """
## Reading the numbers (written by hand)

- **Measured before `share_prompts` and `skip_zero_advantage` existed** (docs/scaling.md). Both
  only take work out of a micro-batch (a prompt run once for the rows that share it; rows
  with no gradient left out), so they can lower these peaks, not raise them; not re-run.
- **Flat at a fixed micro-batch.** With `micro_batch_size = rollout_batch_size = 2` the peak
  stays at 1.64-1.75 GiB above the baseline while the step's batch grows 8× (2 → 16
  sequences of 2.3K tokens), for GRPO and for AttnRL alike. Without micro-batches it doubles
  with every doubling of B (3.4 GiB at 4, 6.8 GiB at 8); B = 16 in one piece was not run.
- **What the 1.6-1.75 GiB is.** Almost all of it is one micro-batch's backward: CPU sdpa with
  a padding mask keeps each layer's (rows × heads × T × T) attention probabilities for the
  backward (2 × 6 × 2304² floats = 0.25 GB per layer, 8 layers). The FCI capture and the
  prefix prefill with continuations add ~40 MB at this micro-batch (the `phases` field in the
  .json). On a GPU, flash attention does not keep those probabilities, so the per-micro-batch
  cost is far smaller; the point here is that it does not grow with B.
- **The allocator.** Measured with glibc's default (dynamic) mmap threshold, the GRPO peak
  crept up with the number of micro-batches (2.0 GiB at B = 2, 2.8 GiB at B = 4) although no
  tensor outlived its micro-batch; fixing the threshold (`MALLOC_ENV`) makes the resident peak
  follow the tensors. Long CPU runs may want the same setting.
- **A bug this found.** The first AttnRL rows grew with B (2.5 GiB at B = 8): a refactor in
  this change had moved `sample_continuations`'s `@torch.no_grad()` onto a helper, so sampling
  inside `training_step` built autograd graphs over every prefill. Fixed, with a test
  (tests/test_sampling.py) that fails when sampling builds a graph; the rows above are
  after the fix.
"""


class _Tokenizer:
    """The three things the sampler asks of a tokenizer, for a model with no text."""

    pad_token_id = 0
    eos_token_id = 1

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["" for _ in rows]


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc's mmap threshold fixed at its initial 128 KiB: by default it grows after large frees, so
freed micro-batch buffers stay on the heap and the resident peak creeps up with the number of
micro-batches although the live tensors do not; fixed, buffers go back to the system when freed
and ru_maxrss follows live memory."""


def child(args: list[str]) -> dict:
    env = {**os.environ, **MALLOC_ENV}
    proc = subprocess.run([sys.executable, __file__, "--child", *args], cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"run {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "BATCH", "MICRO"))
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--whole-up-to", type=int, default=8, help="largest batch also run without micro-batches")
    parser.add_argument("--micro", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["grpo", "attnrl"], choices=["grpo", "attnrl"],
                        help="methods to run; the others' rows are kept from the .json beside --out")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_memory_scaling.md")
    args = parser.parse_args()
    if args.child:
        method, batch, micro = args.child
        print(json.dumps(measure(method, int(batch), None if micro == "none" else int(micro))))
        return

    saved = args.out.with_suffix(".json")
    kept = [r for r in (json.loads(saved.read_text()) if saved.exists() else []) if r["method"] not in args.methods]
    results = []
    for method in args.methods:
        for batch in args.batches:
            for micro in [args.micro] + (["none"] if batch <= args.whole_up_to else []):
                result = child([method, str(batch), str(micro)])
                results.append(result)
                print(json.dumps(result), flush=True)
    results = sorted(kept + results, key=lambda r: (r["method"] != "grpo", r["batch"], r["micro"] is None))
    saved.write_text(json.dumps(results, indent=1))
    import torch

    from lit_attn.models import build_tiny_model

    params = sum(p.numel() for p in build_tiny_model("qwen2", **SHAPE).parameters()) / 1e6
    lines = [
        "# Peak memory of an RL step as its batch grows, at a fixed micro-batch",
        "",
        f"Command: `python bench/memory_scaling.py --batches {' '.join(map(str, args.batches))} "
        f"--whole-up-to {args.whole_up_to} --micro {args.micro} --methods {' '.join(args.methods)}`"
        + (f" (the {', '.join(sorted({r['method'] for r in kept}))} rows kept from an earlier run of the same script, "
           "read from the .json beside this page)" if kept else ""),
        "",
        f"Machine: {platform.machine()}, CPU, torch {torch.__version__}, 1 thread. Model: random Qwen2, "
        f"{params:.1f}M parameters (hidden {SHAPE['hidden_size']}, {SHAPE['num_layers']} layers, vocab "
        f"{SHAPE['vocab_size']}); each sequence a {PROMPT}-token prompt and a {RESPONSE}-token response. Peak = the "
        "process's peak resident memory during the step minus what it held before (model, reference model, AdamW "
        "state). `grpo`: behaviour + reference log-probs and one PPO update over the B sequences; `attnrl`: FCI "
        "capture over the B responses, prefill of B branch prefixes (half a response each) with 2 continuations, and "
        "the update with per-token advantages. Each run is a fresh process with `MALLOC_MMAP_THRESHOLD_=131072` (see "
        "`MALLOC_ENV` in the script: without it glibc keeps freed buffers and the resident peak measures the allocator, "
        "not the tensors).",
        "",
        "| method | B (sequences per step) | micro-batch | peak MiB above baseline | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        micro = r["micro"] if r["micro"] is not None else "whole batch"
        lines.append(f"| {r['method']} | {r['batch']} | {micro} | {r['peak_mib']:.0f} | {r['seconds']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text + NOTES)


if __name__ == "__main__":
    main()
