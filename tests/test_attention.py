"""Tests of lit_attn.attention: q/k capture, step splitting, Forward Context Influence.

FCI is checked against a naive reference written straight from docs/attnrl.md §2 on the full
T×T eager attention maps (``output_attentions=True``), for Qwen2 (grouped KV heads), Llama and
GPT-2, several block sizes and gaps; the batched, left-padded form against the single form.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2ForCausalLM

from lit_attn.attention import (
    CAPTURE_ATTN_IMPLEMENTATION,
    CapturedLayer,
    FCIAccumulator,
    capture_qk,
    delimiter_token_ids,
    fci_scores,
    fci_scores_batch,
    find_think_end_step,
    split_steps,
)
from lit_attn.attention import capture as capture_module
from lit_attn.attention import fci as fci_module
from lit_attn.errors import UserError
from lit_attn.models import build_tiny_model
from lit_attn.rollout import left_pad
from lit_attn.tokenizer import build_char_tokenizer

ARCHITECTURES = ["qwen2", "llama", "gpt2"]
VOCAB = 100


_MODELS: dict[str, PreTrainedModel] = {}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny tensors: one intra-op thread avoids thread-sync overhead on shared cores
    (conftest restores the thread count after each test)."""
    torch.set_num_threads(1)


def tiny(architecture: str) -> PreTrainedModel:
    """One tiny random model per architecture (eval mode, sdpa), built once per session."""
    if architecture not in _MODELS:
        model = build_tiny_model(
            architecture, vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
            intermediate_size=64, seed=3,
        )
        _MODELS[architecture] = model.eval()
    return _MODELS[architecture]


def eager_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights with the eager attention implementation (full attention maps)."""
    twin = copy.deepcopy(model)
    twin.set_attn_implementation("eager")
    return twin.eval()


def random_case(seed: int, length: int | None = None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """A random token sequence (40-80 tokens) and a random contiguous step split of it."""
    gen = torch.Generator().manual_seed(seed)
    if length is None:
        length = int(torch.randint(40, 81, (1,), generator=gen))
    ids = torch.randint(2, VOCAB, (length,), generator=gen)
    prompt = int(torch.randint(3, 12, (1,), generator=gen))
    spans = [(0, prompt)]
    start = prompt
    while start < length:
        end = min(length, start + int(torch.randint(1, 9, (1,), generator=gen)))
        spans.append((start, end))
        start = end
    return ids, spans


def naive_fci(
    eager_model: PreTrainedModel,
    ids: torch.Tensor,
    spans: list[tuple[int, int]],
    min_gap: int,
    think_end_step: int | None = None,
) -> torch.Tensor:
    """FCI straight from the definition, on the full T×T attention of every layer and head."""
    with torch.no_grad():
        attentions = eager_model(ids[None], output_attentions=True, use_cache=False).attentions
    num_steps = len(spans)
    last_target = num_steps if think_end_step is None else min(num_steps, think_end_step)
    fci = torch.zeros(num_steps, dtype=torch.float64)
    for layer_attention in attentions:
        attention = layer_attention[0].double()  # (heads, T, T)
        for head in range(attention.shape[0]):
            alpha = torch.zeros(num_steps, num_steps, dtype=torch.float64)
            for j, (qs, qe) in enumerate(spans):
                for k, (ks, ke) in enumerate(spans):
                    alpha[j, k] = attention[head, qs:qe, ks:ke].mean()
            for k in range(2, last_target):
                influence = sum(alpha[j, k] for j in range(k + min_gap, num_steps))
                fci[k] = max(fci[k], float(influence))
    return fci.float()


# ---------------------------------------------------------------------------------------- FCI


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize(("block_size", "min_gap", "seed"), [(7, 4, 0), (16, 1, 1), (1000, 0, 2), (1, 2, 3)])
def test_fci_matches_naive_reference(architecture: str, block_size: int, min_gap: int, seed: int) -> None:
    model = tiny(architecture)
    ids, spans = random_case(seed)
    expected = naive_fci(eager_copy(model), ids, spans, min_gap)
    got = fci_scores(model, ids, spans, min_gap=min_gap, block_size=block_size)
    assert got.shape == (len(spans),) and got.dtype == torch.float32
    assert expected[2:].abs().sum() > 0  # the case is not trivially zero
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.all(got[:2] == 0)


def test_fci_think_end_step_and_list_input() -> None:
    model = tiny("qwen2")
    ids, spans = random_case(5)
    think_end = len(spans) - 3
    expected = naive_fci(eager_copy(model), ids, spans, 2, think_end_step=think_end)
    got = fci_scores(model, ids.tolist(), spans, min_gap=2, block_size=9, think_end_step=think_end)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert torch.all(got[think_end:] == 0) and got[2:think_end].abs().sum() > 0


def test_fci_too_few_steps_is_all_zero() -> None:
    ids = torch.randint(2, VOCAB, (20,))
    spans = [(0, 5), (5, 9), (9, 14), (14, 20)]  # no step is followed by a step 4 later
    assert torch.equal(fci_scores(tiny("llama"), ids, spans), torch.zeros(4))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fci_batch_left_padded_equals_single(architecture: str) -> None:
    model = tiny(architecture)
    cases = [random_case(10 + r, length=n) for r, n in enumerate([52, 70, 41])]
    input_ids, mask, _ = left_pad([ids.tolist() for ids, _ in cases], 0)
    batched = fci_scores_batch(model, input_ids, mask, [spans for _, spans in cases], min_gap=3, block_size=11)
    for row, (ids, spans) in enumerate(cases):
        single = fci_scores(model, ids, spans, min_gap=3, block_size=11)
        assert batched[row].shape == (len(spans),)
        torch.testing.assert_close(batched[row], single, atol=1e-5, rtol=0)


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of a few keys, so that short test sequences cross many key chunks."""
    monkeypatch.setattr(fci_module, "CPU_TILE_ELEMENTS", 4 * 8 * 5)
    monkeypatch.setattr(fci_module, "MIN_KEY_CHUNK", 5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize(("block_size", "min_gap"), [(8, 4), (3, 0), (None, 2)])
def test_fci_key_chunks_match_naive_reference(architecture: str, block_size: int | None, min_gap: int, small_tiles) -> None:
    model = tiny(architecture)
    ids, spans = random_case(20, length=77)
    assert fci_module.fci_block_shape(block_size, batch=1, heads=4, length=77)[1] <= 13  # several key chunks
    expected = naive_fci(eager_copy(model), ids, spans, min_gap)
    got = fci_scores(model, ids, spans, min_gap=min_gap, block_size=block_size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_fci_key_chunks_batch_left_padded_equals_single(small_tiles) -> None:
    model = tiny("qwen2")
    cases = [random_case(30 + r, length=n) for r, n in enumerate([60, 45, 72])]
    input_ids, mask, _ = left_pad([ids.tolist() for ids, _ in cases], 0)
    batched = fci_scores_batch(model, input_ids, mask, [spans for _, spans in cases], min_gap=2, block_size=6)
    for row, (ids, spans) in enumerate(cases):
        expected = naive_fci(eager_copy(model), ids, spans, 2)
        torch.testing.assert_close(batched[row], expected, atol=1e-5, rtol=0)


def test_fci_sliding_window_layers_match_naive_reference() -> None:
    """The layer's own mask (here a sliding window) also holds inside the target columns."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(3)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, use_sliding_window=True, sliding_window=12, max_window_layers=0,
    )
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.config.layer_types == ["sliding_attention"] * 2
    ids, spans = random_case(3, length=70)
    expected = naive_fci(eager_copy(model), ids, spans, 1)
    for block_size in (None, 4):
        torch.testing.assert_close(fci_scores(model, ids, spans, min_gap=1, block_size=block_size), expected, atol=1e-5, rtol=0)


def test_fci_block_shape_auto() -> None:
    shape = fci_module.fci_block_shape
    # CPU: a 2 MiB tile; rows from the heads and batch, keys fill the rest.
    assert shape(None, batch=1, heads=4, length=32768) == (128, 1024)
    assert shape(None, batch=1, heads=4, length=300) == (256, 512)  # short rows: taller blocks
    assert shape(None, batch=1, heads=28, length=8192) == (16, 1170)
    assert shape(None, batch=8, heads=28, length=8192) == (16, 256)  # at least MIN_KEY_CHUNK keys
    assert shape(256, batch=1, heads=4, length=32768) == (256, 512)  # a given block size is kept
    assert shape(1, batch=1, heads=4, length=64) == (1, 1 << 17)
    # Other devices: whole rows, 256 MiB.
    assert shape(None, batch=1, heads=4, length=32768, device="cuda") == (512, 32768)
    with pytest.raises(UserError, match="block_size"):
        shape(0, batch=1, heads=4, length=10)


def test_fci_auto_block_size_equals_fixed_block_sizes() -> None:
    model = tiny("llama")
    ids, spans = random_case(40, length=300)
    auto = fci_scores(model, ids, spans, min_gap=1)
    assert fci_module.DEFAULT_BLOCK_SIZE is None
    for block_size in (1, 32, 256, 1000):
        torch.testing.assert_close(fci_scores(model, ids, spans, min_gap=1, block_size=block_size), auto, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fci_without_the_forward_logsumexp(architecture: str) -> None:
    """With sdpa on its math kernel there is no log-sum-exp to capture: FCI computes it."""
    model = tiny(architecture)
    ids, spans = random_case(2)
    seen: list[torch.Tensor | None] = []
    accumulator = FCIAccumulator([spans], seq_len=len(ids), min_gap=1, block_size=5)
    original = accumulator._accumulate
    accumulator._accumulate = lambda layer: (seen.append(layer.logsumexp), original(layer))  # type: ignore[method-assign]
    with sdpa_kernel([SDPBackend.MATH]), capture_qk(model, accumulator), torch.no_grad():
        model(ids[None], use_cache=False)
    assert seen and all(lse is None for lse in seen)
    expected = naive_fci(eager_copy(model), ids, spans, 1)
    torch.testing.assert_close(accumulator.scores()[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("padded", [False, True])
def test_capture_with_logsumexp_keeps_the_sdpa_outputs(architecture: str, padded: bool) -> None:
    """Asking for the log-sum-exp runs torch's CPU flash kernel directly: same outputs, bit for bit."""
    model = tiny(architecture)
    ids = torch.randint(2, VOCAB, (2, 37), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :9] = 0
    kwargs = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if padded else {}
    layers: list[CapturedLayer] = []

    class Consumer:
        wants_logsumexp = True

        def __call__(self, layer: CapturedLayer) -> None:
            computed = CapturedLayer(
                layer_idx=layer.layer_idx, query=layer.query, key=layer.key, scaling=layer.scaling,
                attention_mask=layer.attention_mask, module=layer.module,
            )
            real = slice(9 if padded else 0, None)
            torch.testing.assert_close(
                layer.row_logsumexp(slice(0, 37))[..., real], computed.row_logsumexp(slice(0, 37))[..., real],
                atol=1e-5, rtol=0,
            )
            layers.append(layer)

    with torch.no_grad():
        plain = model(ids, use_cache=False, **kwargs).logits
        with capture_qk(model, Consumer()):
            captured = model(ids, use_cache=False, **kwargs).logits
    assert torch.equal(plain, captured)
    assert len(layers) == 2 and all(layer.logsumexp is not None for layer in layers)
    assert layers[0].logsumexp.shape == (2, 4, 37)


def test_fci_rejects_bad_input() -> None:
    model = tiny("qwen2")
    ids, spans = random_case(7)
    with pytest.raises(UserError, match="span"):
        fci_scores(model, ids, [(0, 5), (4, 9)])  # overlapping
    with pytest.raises(UserError, match="span"):
        fci_scores(model, ids, [(0, 5), (5, len(ids) + 1)])  # outside the sequence
    with pytest.raises(UserError, match="min_gap"):
        fci_scores(model, ids, spans, min_gap=-1)
    with pytest.raises(UserError, match="block_size"):
        fci_scores(model, ids, spans, block_size=0)
    right_padded = torch.ones(2, len(ids), dtype=torch.long)
    right_padded[0, -3:] = 0
    with pytest.raises(UserError, match="left"):
        fci_scores_batch(model, torch.stack([ids, ids]), right_padded, [spans, spans])


def test_fci_restores_model_state() -> None:
    model = tiny("gpt2")
    model.train()
    model.transformer.h[0].eval()  # a mixed mode must survive too
    try:
        ids, spans = random_case(8)
        fci_scores(model, ids, spans)
        assert model.config._attn_implementation == "sdpa"
        assert model.training and model.transformer.h[1].training and not model.transformer.h[0].training
    finally:
        model.eval()
    assert not capture_module._SESSIONS


# ------------------------------------------------------------------------------------ capture


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_capture_leaves_outputs_unchanged_and_sees_every_layer(architecture: str) -> None:
    model = tiny(architecture)
    ids = torch.randint(2, VOCAB, (2, 30))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        reference = model(ids, attention_mask=mask, position_ids=positions).logits
    shapes: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []

    def consumer(layer: CapturedLayer) -> None:
        shapes.append((layer.layer_idx, tuple(layer.query.shape), tuple(layer.key.shape)))

    with capture_qk(model, consumer) as session, torch.no_grad():
        assert model.config._attn_implementation == CAPTURE_ATTN_IMPLEMENTATION
        captured = model(ids, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(captured, reference, atol=1e-6, rtol=0)
    assert session.layers_seen == [0, 1]
    kv_heads = getattr(model.config, "num_key_value_heads", None) or 4  # GPT-2: no grouped KV heads
    assert shapes == [(i, (2, 4, 30, 8), (2, kv_heads, 30, 8)) for i in range(2)]
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("architecture", ["qwen2", "gpt2"])
def test_captured_attention_rows_equal_eager_attention(architecture: str) -> None:
    """The shared mechanism: exact rows of the softmax attention, padding handled."""
    model = tiny(architecture)
    ids = torch.randint(2, VOCAB, (2, 25))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        eager = eager_copy(model)(ids, attention_mask=mask, position_ids=positions, output_attentions=True).attentions
    rows: dict[int, torch.Tensor] = {}
    picked: dict[int, torch.Tensor] = {}
    index = torch.tensor([24, 10, 7])

    def consumer(layer: CapturedLayer) -> None:
        rows[layer.layer_idx] = torch.cat(
            [layer.attention_rows(slice(0, 13)), layer.attention_rows(slice(13, 25))], dim=2
        )
        picked[layer.layer_idx] = layer.attention_rows(index, heads=slice(1, 3))

    with capture_qk(model, consumer), torch.no_grad():
        model(ids, attention_mask=mask, position_ids=positions, use_cache=False)
    for layer_idx, full in enumerate(eager):
        torch.testing.assert_close(rows[layer_idx][0], full[0].float(), atol=1e-6, rtol=0)
        torch.testing.assert_close(rows[layer_idx][1, :, 6:], full[1, :, 6:].float(), atol=1e-6, rtol=0)
        assert torch.all(rows[layer_idx][1, :, :6] == 0)  # padding queries: all-zero rows
        torch.testing.assert_close(picked[layer_idx], full[:, 1:3][:, :, index].float(), atol=1e-6, rtol=0)


def test_capture_restores_implementation_after_errors() -> None:
    model = eager_copy(tiny("llama"))
    with pytest.raises(RuntimeError, match="boom"):
        with capture_qk(model, lambda layer: None):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "eager"

    def failing(layer: CapturedLayer) -> None:
        raise ValueError("consumer failed")

    with pytest.raises(ValueError, match="consumer failed"):
        with capture_qk(model, failing), torch.no_grad():
            model(torch.randint(2, VOCAB, (1, 10)))
    assert model.config._attn_implementation == "eager"
    assert model.model.config._attn_implementation == "eager"
    assert not capture_module._SESSIONS
    with torch.no_grad():
        assert model(torch.randint(2, VOCAB, (1, 10)), output_attentions=True).attentions is not None


def test_capture_cannot_nest_on_one_model() -> None:
    model = tiny("qwen2")
    with capture_qk(model, lambda layer: None):
        with pytest.raises(UserError, match="already"):
            with capture_qk(model, lambda layer: None):
                pass
        assert model.config._attn_implementation == CAPTURE_ATTN_IMPLEMENTATION
    assert model.config._attn_implementation == "sdpa"


def test_unsupported_architecture_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny("qwen2")
    ids, spans = random_case(4)
    monkeypatch.setattr(Qwen2ForCausalLM, "_can_set_attn_implementation", classmethod(lambda cls: False))
    with pytest.raises(UserError, match="Qwen2ForCausalLM.*AttentionInterface"):
        fci_scores(model, ids, spans)
    monkeypatch.undo()

    def no_interface(self: Qwen2Attention, hidden_states: torch.Tensor, *args: object, **kwargs: object):
        return torch.zeros_like(hidden_states), None

    monkeypatch.setattr(Qwen2Attention, "forward", no_interface)
    with pytest.raises(UserError, match="qwen2.*AttentionInterface"):
        fci_scores(model, ids, spans)
    assert model.config._attn_implementation == "sdpa"


def test_accumulator_used_around_a_callers_forward() -> None:
    """FCI can ride on a forward the caller runs anyway (e.g. the log-prob forward)."""
    model = tiny("qwen2")
    ids, spans = random_case(9)
    accumulator = FCIAccumulator([spans], seq_len=len(ids), block_size=13)
    with capture_qk(model, accumulator):  # gradients on: the accumulator must not build a graph
        logits = model(ids[None], use_cache=False).logits
    assert logits.shape == (1, len(ids), VOCAB) and logits.requires_grad
    scores = accumulator.scores()[0]
    assert not scores.requires_grad
    torch.testing.assert_close(scores, fci_scores(model, ids, spans), atol=1e-6, rtol=0)
    assert accumulator.layers_done == [0, 1]


# -------------------------------------------------------------------------------------- steps


def test_split_steps_char_tokenizer() -> None:
    tok = build_char_tokenizer()
    assert delimiter_token_ids(tok) == frozenset({tok.convert_tokens_to_ids("\n\n")})
    prompt = tok("Q: 1+1?")["input_ids"]
    response = tok("a b\n\nc\n\n\n\nd\n\n\ne")["input_ids"]
    ids = prompt + response
    spans = split_steps(ids, tok, prompt_length=len(prompt))
    texts = [tok.decode(ids[s:e]) for s, e in spans]
    assert texts == ["Q: 1+1?", "a b\n\n", "c\n\n", "\n\n", "d\n\n", "\ne"]  # each delimiter token ends a step
    assert spans[0] == (0, len(prompt)) and spans[-1][1] == len(ids)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # A response ending with its delimiter has no empty trailing step; tensors are accepted.
    ids2 = torch.tensor(prompt + tok("x\n\ny\n\n")["input_ids"])
    assert [tok.decode(ids2[s:e]) for s, e in split_steps(ids2, tok, prompt_length=len(prompt))] == [
        "Q: 1+1?", "x\n\n", "y\n\n",
    ]
    # No delimiter: the whole response is one step; empty response: the prompt alone.
    assert split_steps(prompt + tok("abc")["input_ids"], tok, prompt_length=len(prompt)) == [
        (0, len(prompt)), (len(prompt), len(prompt) + 3),
    ]
    assert split_steps(prompt, tok, prompt_length=len(prompt)) == [(0, len(prompt))]


def test_split_steps_other_delimiters_and_errors() -> None:
    tok = build_char_tokenizer()
    newline_ids = delimiter_token_ids(tok, "\n")
    assert newline_ids == frozenset({tok.convert_tokens_to_ids("\n"), tok.convert_tokens_to_ids("\n\n")})
    ids = tok("P|a\nb\n\nc")["input_ids"]
    assert [tok.decode(ids[s:e]) for s, e in split_steps(ids, tok, "\n", prompt_length=2)] == ["P|", "a\n", "b\n\n", "c"]
    assert [tok.decode(ids[s:e]) for s, e in split_steps(ids, tok, "|", prompt_length=1)] == ["P", "|", "a\nb\n\nc"]
    with pytest.raises(UserError, match="delimiter"):
        split_steps(ids, tok, "~~", prompt_length=2)
    with pytest.raises(UserError, match="prompt_length"):
        split_steps(ids, tok, prompt_length=0)
    with pytest.raises(UserError, match="prompt_length"):
        split_steps(ids, tok, prompt_length=len(ids) + 1)


def test_find_think_end_step() -> None:
    tok = build_char_tokenizer()
    prompt = tok("Q?")["input_ids"]
    ids = prompt + tok("think a\n\nthink b</think>\n\nanswer\n\nmore")["input_ids"]
    spans = split_steps(ids, tok, prompt_length=len(prompt))
    assert len(spans) == 5
    assert find_think_end_step(ids, spans, tok) == 2
    twice = prompt + tok("a</think>\n\nb\n\nc</think>\n\nd")["input_ids"]
    assert find_think_end_step(twice, split_steps(twice, tok, prompt_length=len(prompt)), tok) == 3  # the last tag
    assert find_think_end_step(ids, spans, tok, tag="more") == 4
    assert find_think_end_step(ids, spans, tok, tag="think a") == 1
    assert find_think_end_step(ids, spans, tok, tag="</answer>") is None
    assert find_think_end_step(prompt, [(0, len(prompt))], tok) is None
