"""Character-level tokenizer of the embedded default model.

One token per character of printable ASCII plus ``"\\n"``, and one token for the step
delimiter ``"\\n\\n"`` so that a reasoning step ends with exactly one delimiter token
(spec/attnrl.md §1). Built with the ``tokenizers`` library and wrapped in a
``PreTrainedTokenizerFast`` so it saves, loads and batches like any Hugging Face tokenizer.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
STEP_DELIMITER = "\n\n"


def char_vocab() -> dict[str, int]:
    """Special tokens, the step delimiter, newline, then printable ASCII without other whitespace."""
    symbols = [PAD, EOS, UNK, STEP_DELIMITER, "\n"]
    symbols += [c for c in string.printable if c not in "\n\t\r\x0b\x0c"]
    return {s: i for i, s in enumerate(symbols)}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer (exact round trip on printable ASCII text)."""
    vocab = char_vocab()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # "\n\n" first so the delimiter is one token; every other character is its own piece.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n\n|[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    fast.add_special_tokens({"pad_token": PAD, "eos_token": EOS, "unk_token": UNK})
    return fast
