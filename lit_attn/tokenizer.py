"""Character-level tokenizer of the embedded default model.

One token per character of printable ASCII plus ``"\\n"``, one token for the step delimiter
``"\\n\\n"`` so that a reasoning step ends with exactly one delimiter token (docs/attnrl.md),
and one token for each fact key ``a=`` … ``z=`` of the built-in task, so that looking a fact
up is a single match of one token against one token (a plain induction step) rather than a
two-token match; the text a person reads is unchanged (decoding is an exact round trip). Built with the ``tokenizers`` library and wrapped in a
``PreTrainedTokenizerFast`` so it saves, loads and batches like any Hugging Face tokenizer.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lit_attn.attention.steps import STEP_DELIMITER

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


FACT_KEYS = tuple(f"{c}=" for c in string.ascii_lowercase)
"""The built-in task's fact keys, one token each (``m=`` in ``m=2``)."""


def char_vocab() -> dict[str, int]:
    """Special tokens, the step delimiter, newline, printable ASCII without other whitespace,
    then the fact keys (appended last, so the single characters keep their ids)."""
    symbols = [PAD, EOS, UNK, STEP_DELIMITER, "\n"]
    symbols += [c for c in string.printable if c not in "\n\t\r\x0b\x0c"]
    symbols += list(FACT_KEYS)
    return {s: i for i, s in enumerate(symbols)}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer (exact round trip on printable ASCII text)."""
    vocab = char_vocab()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # "\n\n" and the fact keys "a=".."z=" are one piece each; every other character is its own.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n\n|[a-z]=|[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    fast.add_special_tokens({"pad_token": PAD, "eos_token": EOS, "unk_token": UNK})
    return fast


def unknown_characters(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> list[str]:
    """The characters of ``texts`` that ``tokenizer`` cannot spell (it turns them into its
    unknown token), in order of first appearance; always empty for a tokenizer without an
    unknown token (byte-level BPE spells everything). The shipped character tokenizer spells
    printable ASCII and newlines only: ``é``, ``→``, a tab or an emoji become ``<unk>``.
    Each distinct character is tokenised once, on its own (one batched call)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    texts = list(texts)
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    if not chars:
        return []
    distinct = sorted(chars)
    encoded = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    bad = {c for c, ids in zip(distinct, encoded) if unk in ids}
    ordered: dict[str, None] = {}
    for text in texts:
        if len(ordered) == len(bad):
            break
        ordered.update((c, None) for c in text if c in bad)
    return list(ordered)


def describe_characters(chars: Sequence[str], limit: int = 8) -> str:
    """``'é' (U+00E9), '→' (U+2192)``: characters for a one-line message."""
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")
