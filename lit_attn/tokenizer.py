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

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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
