"""lit_attn.sampling.sample_continuations: prefix encoded once, same tokens and log-probs as
full re-encoding, reproducible seeded sampling, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_attn.sampling import Continuations, sample_continuations
from lit_attn.errors import UserError
from lit_attn.logprobs import token_logprobs
from lit_attn.models import build_tiny_model
from lit_attn.tokenizer import build_char_tokenizer

TOKENIZER = build_char_tokenizer()
MAX_POSITIONS = 64


def _model(architecture: str = "qwen2") -> nn.Module:
    """A tiny random model with large weights, so greedy decoding does not just repeat one token."""
    model = build_tiny_model(
        architecture, vocab_size=len(TOKENIZER), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, max_positions=MAX_POSITIONS, pad_token_id=TOKENIZER.pad_token_id,
        eos_token_id=TOKENIZER.eos_token_id,
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=gen) * 0.4)
    return model.eval()


PREFIXES = [
    TOKENIZER.encode("x=7, y=3.\n\nx+y="),
    TOKENIZER.encode("a"),
    TOKENIZER.encode("What is 2*3? Step one"),
]


def _greedy_generate(model: nn.Module, prefix: list[int], max_new_tokens: int, stop: list[int]) -> list[int]:
    """Reference: model.generate from the whole unpadded prefix, cut after the first stop token."""
    out = model.generate(
        torch.tensor([prefix]), attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=TOKENIZER.pad_token_id,
    )[0, len(prefix):].tolist()
    for i, token in enumerate(out):
        if token in stop:
            return out[: i + 1]
    return out


def test_greedy_equals_generate_from_each_full_prefix() -> None:
    model = _model()
    result = sample_continuations(model, TOKENIZER, PREFIXES, 1, max_new_tokens=16, do_sample=False)
    continuations = [result.new_tokens(i) for i in range(len(PREFIXES))]
    assert any(len(set(c)) > 3 for c in continuations)  # the model is not degenerate
    for prefix, got in zip(PREFIXES, continuations):
        assert got == _greedy_generate(model, prefix, 16, [TOKENIZER.eos_token_id])

    # Make a token from the middle of a continuation a stop token: continuations end there.
    extra_stop = continuations[0][5]
    model.generation_config.eos_token_id = [TOKENIZER.eos_token_id, extra_stop]
    result = sample_continuations(model, TOKENIZER, PREFIXES, 2, max_new_tokens=16, do_sample=False)
    stop = [TOKENIZER.eos_token_id, extra_stop]
    for i in range(len(result)):
        prefix_index = int(result.prefix_index[i])
        expected = _greedy_generate(model, PREFIXES[prefix_index], 16, stop)
        assert result.new_tokens(i) == expected
        assert result.sequence(i) == PREFIXES[prefix_index] + expected
        assert bool(result.clipped[i]) == (len(expected) == 16 and expected[-1] not in stop)
    assert result.new_tokens(0)[-1] == extra_stop and not result.clipped[0]
    assert int(result.lengths[0]) <= 6
    # Padding after the stop token: pad id, mask 0, log-prob 0.
    assert result.tokens.shape[1] == int(result.lengths.max())
    short = int(result.lengths.argmin())
    tail = slice(int(result.lengths[short]), None)
    assert (result.tokens[short, tail] == TOKENIZER.pad_token_id).all()
    assert (result.mask[short, tail] == 0).all() and (result.logprobs[short, tail] == 0).all()


@pytest.mark.parametrize("architecture", ["qwen2", "gpt2", "llama"])
def test_behaviour_logprobs_equal_full_forward(architecture: str) -> None:
    model = _model(architecture)
    temperature = 0.7
    result = sample_continuations(
        model, TOKENIZER, PREFIXES, [2, 1, 2], max_new_tokens=12, temperature=temperature, generator_seed=1
    )
    assert result.logprobs.dtype == torch.float32
    for i in range(len(result)):
        sequence = torch.tensor([result.sequence(i)])
        reference, _ = token_logprobs(model, sequence, torch.ones_like(sequence), temperature=temperature)
        start = len(result.prefixes[int(result.prefix_index[i])]) - 1
        length = int(result.lengths[i])
        torch.testing.assert_close(result.logprobs[i, :length], reference[0, start : start + length], atol=1e-4, rtol=0)
        assert (result.logprobs[i, :length] < 0).all()


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone() -> None:
    model = _model()
    before = torch.random.get_rng_state()
    first = sample_continuations(model, TOKENIZER, PREFIXES, 3, max_new_tokens=10, generator_seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    second = sample_continuations(model, TOKENIZER, PREFIXES, 3, max_new_tokens=10, generator_seed=7)
    other = sample_continuations(model, TOKENIZER, PREFIXES, 3, max_new_tokens=10, generator_seed=8)
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.logprobs, second.logprobs)
    assert first.texts == second.texts
    assert not torch.equal(first.tokens, other.tokens)
    # Continuations of one prefix differ from each other (sampled, not copied).
    assert len({tuple(first.new_tokens(i)) for i in range(3)}) > 1

    # Without a seed the global RNG drives sampling (and advances).
    torch.manual_seed(3)
    a = sample_continuations(model, TOKENIZER, PREFIXES, 2, max_new_tokens=10)
    torch.manual_seed(3)
    b = sample_continuations(model, TOKENIZER, PREFIXES, 2, max_new_tokens=10)
    assert torch.equal(a.tokens, b.tokens)


def test_each_distinct_prefix_is_encoded_once() -> None:
    model = _model()
    shapes: list[tuple[int, int]] = []

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        shapes.append(tuple(kwargs["input_ids"].shape))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        # Prefix 0 appears twice (merged), prefix 1 has count 0 (never encoded).
        prefixes = [PREFIXES[0], PREFIXES[1], PREFIXES[2], PREFIXES[0]]
        result = sample_continuations(model, TOKENIZER, prefixes, [3, 0, 4, 2], max_new_tokens=8, generator_seed=0)
    finally:
        handle.remove()
    longest = max(len(PREFIXES[0]), len(PREFIXES[2]))
    assert shapes[0] == (2, longest)  # one prefill: two distinct prefixes, each once
    assert all(length == 1 for _, length in shapes[1:])  # then one new token per row per step
    assert all(rows <= 9 for rows, _ in shapes[1:])
    prefill_tokens = shapes[0][0] * shapes[0][1]
    naive_tokens = 5 * len(PREFIXES[0]) + 4 * len(PREFIXES[2])
    assert prefill_tokens < naive_tokens / 3
    assert result.prefix_index.tolist() == [0, 0, 0, 2, 2, 2, 2, 3, 3]


def test_counts_with_zeros_and_mixed_values() -> None:
    model = _model()
    result = sample_continuations(model, TOKENIZER, PREFIXES, [0, 3, 1], max_new_tokens=5, generator_seed=0)
    assert isinstance(result, Continuations)
    assert len(result) == 4 and result.prefix_index.tolist() == [1, 1, 1, 2]
    assert result.tokens.shape == result.logprobs.shape == result.mask.shape == (4, int(result.lengths.max()))
    assert result.clipped.shape == (4,) and len(result.texts) == 4
    assert result.sequence(3)[: len(PREFIXES[2])] == PREFIXES[2]
    assert result.texts[0] == TOKENIZER.decode(result.new_tokens(0), skip_special_tokens=True)

    none = sample_continuations(model, TOKENIZER, PREFIXES, 0, max_new_tokens=5)
    assert len(none) == 0 and none.tokens.shape == (0, 0) and none.texts == []


def test_per_prefix_token_budgets() -> None:
    # a branch continuation gets only what is left of its response's length budget
    model = _model()
    eos = TOKENIZER.eos_token_id
    # no stop token ever, so every continuation runs to its own budget
    model.lm_head.register_forward_hook(lambda module, args, out: out.index_fill(-1, torch.tensor([eos]), -1e9))
    result = sample_continuations(model, TOKENIZER, PREFIXES, [2, 1, 2], max_new_tokens=[3, 9, 5], generator_seed=1)
    assert result.lengths.tolist() == [3, 3, 9, 5, 5]
    assert result.clipped.all()
    greedy = sample_continuations(model, TOKENIZER, PREFIXES, 1, max_new_tokens=[3, 9, 5], do_sample=False)
    longest = sample_continuations(model, TOKENIZER, PREFIXES, 1, max_new_tokens=9, do_sample=False)
    for i, n in enumerate([3, 9, 5]):  # a shorter budget is a prefix of the longer run, not another sample
        assert greedy.new_tokens(i) == longest.new_tokens(i)[:n]
    with pytest.raises(UserError, match="one per prefix"):
        sample_continuations(model, TOKENIZER, PREFIXES, 1, max_new_tokens=[3, 4])


def test_model_modes_are_restored() -> None:
    model = _model("gpt2").train()
    sample_continuations(model, TOKENIZER, PREFIXES[:1], 1, max_new_tokens=3, generator_seed=0)
    assert all(module.training for module in model.modules())


@pytest.mark.parametrize(
    ("prefixes", "counts", "kwargs", "needle"),
    [
        ([[5, 6], []], 1, {}, "prefix 1 is empty"),
        ([[5, 6]], [-1], {}, "must be >= 0"),
        ([[5, 6]], [1, 2], {}, "one count per prefix"),
        ([[5] * 60], 1, {"max_new_tokens": 10}, "lower max_new_tokens to 4"),
        ([[5, 6]], 1, {"max_new_tokens": 0}, "max_new_tokens is 0"),
        ([[5, 6]], 1, {"temperature": 0.0}, "temperature is 0.0"),
    ],
)
def test_bad_input_is_a_one_line_user_error(prefixes, counts, kwargs, needle) -> None:
    model = _model()
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(UserError, match=needle) as info:
        sample_continuations(model, TOKENIZER, prefixes, counts, **kwargs)
    assert "\n" not in str(info.value)


def test_reserved_cache_layer_matches_concatenation() -> None:
    from transformers.cache_utils import DynamicLayer

    from lit_attn.kv_cache import ReservedLayer

    gen = torch.Generator().manual_seed(0)
    reserved, plain = ReservedLayer(capacity=3), DynamicLayer()
    for length in (2, 1, 1, 3):  # overflows the capacity twice
        keys, values = torch.randn(2, 2, length, 4, generator=gen), torch.randn(2, 2, length, 4, generator=gen)
        got, want = reserved.update(keys, values), plain.update(keys, values)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert reserved.get_seq_length() == 7 and reserved.capacity >= 7
    rows = torch.tensor([1, 1, 0])
    reserved.batch_select_indices(rows)
    plain.batch_select_indices(rows)
    assert torch.equal(reserved.keys, plain.keys) and torch.equal(reserved.values, plain.values)
    reserved.crop(-2)
    assert torch.equal(reserved.keys, plain.keys[:, :, :5]) and reserved.get_seq_length() == 5
    keys = torch.randn(3, 2, 1, 4, generator=gen)
    assert torch.equal(reserved.update(keys, keys)[0][:, :, 5:], keys)


def test_sampling_never_builds_an_autograd_graph():
    # sampling runs inside training_step, where autograd is on: a graph here would keep every
    # prefill activation alive until the call returns (and slow the loop)
    from lit_attn.sampling import sample_continuations as sample
    from lit_attn.models import build_tiny_model

    model = build_tiny_model("qwen2", vocab_size=50, max_positions=128)
    assert torch.is_grad_enabled() and all(p.requires_grad for p in model.parameters())

    class Tok:
        pad_token_id, eos_token_id = 0, 1

        def batch_decode(self, rows, skip_special_tokens=True):
            return ["" for _ in rows]

    for batch_size in (None, 2):
        out = sample(model, Tok(), [[5, 6, 7], [8, 9]], 2, max_new_tokens=3, generator_seed=0, batch_size=batch_size)
        assert not out.logprobs.requires_grad and out.logprobs.grad_fn is None
