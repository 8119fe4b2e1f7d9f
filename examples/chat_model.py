"""Build a small chat + thinking model folder, for the walk-through in docs/chat_models.md.

    python examples/chat_model.py runs/chat_model

writes, in a few seconds and with no download:

* ``tokenizer.json`` — a byte-level BPE tokenizer trained here with the ``tokenizers`` library
  on a small built-in corpus: prompts and reference solutions of the built-in task
  (lit_attn/tasks/) inside ChatML turns, the assistant's reasoning between ``<think>`` and
  ``</think>``. ``<|endoftext|>`` (padding), ``<|im_start|>`` and ``<|im_end|>`` (end of turn,
  the EOS) are special tokens; ``<think>`` and ``</think>`` are ordinary text, so the BPE
  splits ``</think>`` into several tokens (checked: the script fails otherwise).
* ``tokenizer_config.json`` / ``chat_template.jinja`` — the tokenizer's settings and a Jinja chat
  template: system, user and assistant turns (``<|im_start|>role\\n…<|im_end|>\\n``); the
  generation prompt opens the assistant turn with ``<think>\\n``, as thinking models do.
* ``config.json`` / ``model.safetensors`` — a tiny randomly initialised Qwen2
  (:func:`lit_attn.models.build_tiny_model`) sized to the tokenizer's vocabulary. It does not
  know the task: the folder is for trying the plumbing (chat prompts in ``fit``, AttnRL with a
  multi-token ``think_end_tag``, ``attribute --chat-template``), not for results.
* ``lit_attn_chat_model.json`` — what was built, with which settings; a folder holding it is
  the only non-empty folder this script writes into (it never replaces anything else).

``--examples DIR`` also writes the walk-through's data files (``chat_prompts.jsonl``: built-in
task questions as chat messages; ``chat_attribute.jsonl``: the same questions as ``attribute``
inputs); ``examples/`` ships the ones made with the defaults::

    python examples/chat_model.py runs/chat_model --examples examples
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lit_attn.attention.steps import STEP_DELIMITER
from lit_attn.models import build_tiny_model
from lit_attn.tasks import FactChainTask

PAD, START, END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
"""Special tokens: padding, start of a turn, end of a turn (the EOS)."""

THINK_END = "</think>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
"""ChatML turns; the generation prompt opens the assistant turn with ``<think>``."""

SYSTEM = "Work it out step by step inside <think> </think>, then give the final line as: answer N"
"""The system message of the corpus and of the example prompts."""

MARKER = "lit_attn_chat_model.json"

PIECES = r" ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
"""How text is cut before BPE merges (merges never cross a cut): words, single digits, a run of
punctuation together with the line breaks after it (so ``?\n\n`` or ``>\n\n`` can become one
token that ends a reasoning step), runs of line breaks, other whitespace."""


def task_examples(count: int, seed: int) -> list[dict]:
    """``count`` examples of the built-in task (3 operations, 3 distractor facts), seeded."""
    task, rng = FactChainTask(num_ops=3, num_distractors=3), random.Random(seed)
    return [task.example(rng) for _ in range(count)]


def assistant_text(example: dict) -> str:
    """A thinking model's answer to an example: the reference steps inside ``<think>``, then the answer."""
    steps = example["solution"].split(STEP_DELIMITER)
    return f"<think>\n{STEP_DELIMITER.join(steps[:-1])}\n{THINK_END}\n\n{steps[-1]}"


def corpus(seed: int, size: int = 400) -> list[str]:
    """Whole conversations (system, user, assistant) in the chat template's markup."""
    return [
        f"{START}system\n{SYSTEM}{END}\n{START}user\n{ex['prompt'].rstrip()}{END}\n{START}assistant\n{assistant_text(ex)}{END}\n"
        for ex in task_examples(size, seed)
    ]


def train_tokenizer(texts: list[str], vocab_size: int, max_positions: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``, with the special tokens and the chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PIECES), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, START, END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    ))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=PAD, eos_token=END, model_max_length=max_positions, padding_side="left",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [START]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def think_end_tokens(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """The tokens ``</think>`` becomes where the assistant closes its reasoning."""
    ids = tokenizer("\n" + THINK_END + "\n\n", add_special_tokens=False)["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids)


def check_target(path: Path) -> None:
    """Refuse a folder that holds anything but a previous build of this script."""
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / MARKER).is_file())):
        sys.exit(f"error: {path} exists and is not a folder this script made (no {MARKER}); pick a new or empty folder")


def build(path: Path, *, vocab_size: int = 600, max_positions: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    """Write the model folder (see the module docstring); returns its tokenizer."""
    check_target(path)
    tokenizer = train_tokenizer(corpus(seed), vocab_size, max_positions)
    split = think_end_tokens(tokenizer)
    bare = tokenizer(THINK_END, add_special_tokens=False)["input_ids"]
    assert len(bare) > 1, f"{THINK_END} is one token {bare}; the walk-through needs a tag split into several"
    model = build_tiny_model(
        "qwen2", vocab_size=len(tokenizer), hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=128, max_positions=max_positions, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, seed=seed,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    info = {
        "made_by": "examples/chat_model.py", "vocab_size": len(tokenizer), "max_positions": max_positions, "seed": seed,
        "think_end_tag": THINK_END, "think_end_tokens": tokenizer.convert_ids_to_tokens(bare),
        "think_end_tokens_in_context": split, "parameters": sum(p.numel() for p in model.parameters()),
    }
    (path / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return tokenizer


def write_examples(folder: Path, *, count: int = 12, seed: int = 1) -> list[Path]:
    """The walk-through's data: ``chat_prompts.jsonl`` (fit) and ``chat_attribute.jsonl`` (attribute)."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = task_examples(count, seed)
    prompts = [
        {
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ex["prompt"].rstrip()}],
            "answer": ex["answer"], "question": ex["question"],
        }
        for ex in examples
    ]
    inputs = [
        {"contexts": ex["contexts"], "question": ex["question"], "relevant": ex["relevant"], "reference": ex["answer"]}
        for ex in examples[:2]
    ]
    written = []
    for name, rows in (("chat_prompts.jsonl", prompts), ("chat_attribute.jsonl", inputs)):
        target = folder / name
        target.write_text("".join(json.dumps(row) + "\n" for row in rows))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default="runs/chat_model", help="where to write the model (new, empty, or a previous build)")
    parser.add_argument("--vocab-size", type=int, default=600, help="largest BPE vocabulary (special tokens included); the small corpus stops short of it")
    parser.add_argument("--max-positions", type=int, default=1024, help="the model's context length")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus and of the weights")
    parser.add_argument("--examples", default=None, help="also write chat_prompts.jsonl and chat_attribute.jsonl here")
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    path = Path(args.folder)
    tokenizer = build(path, vocab_size=args.vocab_size, max_positions=args.max_positions, seed=args.seed)
    info = json.loads((path / MARKER).read_text())
    print(f"wrote {path}: Qwen2, {info['parameters']:,} parameters, vocabulary {len(tokenizer)}, context {args.max_positions}")
    print(f"{THINK_END} is {len(info['think_end_tokens'])} tokens: {info['think_end_tokens']}")
    print(f"'\\n{THINK_END}\\n\\n' is {info['think_end_tokens_in_context']}")
    print("generation prompt: " + repr(tokenizer.apply_chat_template(
        [{"role": "user", "content": "m+y?"}], tokenize=False, add_generation_prompt=True)))
    if args.examples:
        for written in write_examples(Path(args.examples)):
            print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
