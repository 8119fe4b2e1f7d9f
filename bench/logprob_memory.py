"""Peak memory and time of per-token log-probs: chunked (lit_attn) vs full logits.

RL computes the log-prob of every sampled token, with gradients. The plain way builds the
whole batch × length × vocab logits (and its log-softmax, and their gradients);
``lit_attn.logprobs.token_logprobs`` applies the LM head to ``chunk_size`` positions at a time
and recomputes each chunk in the backward pass. Each variant runs in a fresh process so the
peak resident memory (ru_maxrss) is its own. Run::

    python bench/logprob_memory.py            # writes docs/bench_logprob_memory.md
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python bench/logprob_memory.py"


def measure(variant: str, vocab: int, batch: int, length: int, chunk: int) -> dict:
    import torch

    from lit_attn.logprobs import token_logprobs
    from lit_attn.models import build_tiny_model

    torch.set_num_threads(2)
    model = build_tiny_model("qwen2", vocab_size=vocab, hidden_size=64, num_layers=2, num_heads=4,
                             num_kv_heads=2, intermediate_size=128, max_positions=length)
    model.config.tie_word_embeddings = False
    ids = torch.randint(3, vocab, (batch, length))
    mask = torch.ones_like(ids)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if variant == "full":
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    else:
        lp, _ = token_logprobs(model, ids, mask, chunk_size=chunk)
    lp.sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "extra_peak_mib": (peak - base) / 1024, "seconds": seconds}


def main() -> None:
    cases = [(32000, 4, 512), (32000, 8, 1024), (152000, 4, 1024)]
    rows = []
    for vocab, batch, length in cases:
        for variant in ("full", "chunked"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", variant, str(vocab), str(batch), str(length), "256"],
                check=True, capture_output=True, text=True, cwd=ROOT,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            rows.append((vocab, batch, length, result))
    header = "| vocab | batch × length | variant | extra peak RSS (MiB) | seconds (fwd+bwd) |\n|---|---|---|---|---|"
    lines = [header] + [
        f"| {v} | {b} × {t} | {r['variant']} | {r['extra_peak_mib']:.0f} | {r['seconds']:.2f} |"
        for v, b, t, r in rows
    ]
    table = "\n".join(lines)
    print(table)
    doc = ROOT / "docs" / "bench_logprob_memory.md"
    doc.write_text(
        "# Per-token log-probs: chunked vs full logits\n\n"
        f"Command: `{COMMAND}` (2 CPU cores, fp32, tiny 2-layer Qwen2 body with an untied LM head; "
        "chunk_size 256; log-probs of every token with a backward pass). Peak memory is the rise of "
        "the process's maximum resident set over the measurement, each variant in a fresh process.\n\n"
        f"{table}\n"
    )
    print(f"wrote {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        variant, vocab, batch, length, chunk = sys.argv[2], *map(int, sys.argv[3:7])
        print(json.dumps(measure(variant, vocab, batch, length, chunk)))
    else:
        main()
