"""One padding rule (issue 22): the id is :func:`lit_attn.rollout.pad_id` and the layouts are
:func:`~lit_attn.rollout.left_pad` and :func:`~lit_attn.rollout.pad_prompts_and_completions`;
the policy and the exploration no longer read ``tokenizer.pad_token_id`` or pad by hand."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from lit_attn.experience import pack_sequences
from lit_attn.rollout import pad_id, pad_prompts_and_completions

PACKAGE = Path(__file__).resolve().parents[1] / "lit_attn"
# where the rule itself lives, and the warm start / tiny-model builder, which set the tokenizer's own pad token
OWNERS = {"rollout.py", "sft.py", "models.py"}


def test_only_the_rule_reads_the_tokenizers_pad_token_id():
    readers = sorted(
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
        if path.name not in OWNERS and "tokenizer.pad_token_id" in path.read_text()
    )
    assert not readers, f"read tokenizer.pad_token_id instead of lit_attn.rollout.pad_id: {readers}"


def test_pad_id_falls_back_to_eos_then_zero():
    assert pad_id(SimpleNamespace(pad_token_id=3, eos_token_id=2)) == 3
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0


def test_prompt_and_completion_layout_is_the_experiences():
    prompts, completions = [[1, 2, 3], [4]], [[5], [6, 7, 8]]
    ids, mask, P = pad_prompts_and_completions(prompts, completions, 0)
    assert P == 3
    assert ids.tolist() == [[1, 2, 3, 5, 0, 0], [0, 0, 4, 6, 7, 8]]
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    packed = pack_sequences(prompts, completions, 0, advantages=[torch.tensor(1.0), torch.tensor(-1.0)])
    assert torch.equal(packed.input_ids, ids) and torch.equal(packed.attention_mask, mask) and packed.prompt_length == P
