"""Attention scores across model families (issue 21): for every family of
``lit_attn.models.ARCHITECTURES`` the captured attention rows, FCI (docs/attnrl.md §2) and
AttnTrace's ``text_scores`` (docs/attribution.md §2) equal naive references computed from the
model's own eager attention maps (``output_attentions=True``), in float64, on sequences longer
than the sliding window (``max_positions=128`` → a window of 8), with grouped KV heads,
soft-capped layers (Gemma 2), QK-norm, partial rotary and fused QKV included. Padded batches are
compared with per-row unpadded references (eager maps of padded rows hold NaN in later layers).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import PreTrainedModel

from lit_attn.attention import CapturedLayer, capture_qk, fci_scores, fci_scores_batch
from lit_attn.attribution import text_scores
from lit_attn.models import ARCHITECTURES, build_tiny_model
from lit_attn.rollout import left_pad
from tests.test_attention import naive_fci, random_case
from tests.test_attribution import naive_text_scores

VOCAB = 100
WINDOW = 8
"""The sliding window of ``tiny_config(max_positions=128)``: every test sequence crosses it."""

GEMMA2_QK_GAIN = 16.0
"""Gain on Gemma 2's q/k projections: the largest scaled score of every layer passes the soft-cap of 5."""

_MODELS: dict[tuple[str, torch.dtype], tuple[PreTrainedModel, PreTrainedModel]] = {}


def padded_dtype(architecture: str) -> torch.dtype:
    """float64, except Gemma 2 with padding: its eager attention adds float64's minimum to the
    masked scores and then takes the softmax in float32, where that minimum is -inf: fully masked
    padding rows give NaN, which flows into every later position (transformers' own outputs,
    which the capture reproduces). In float32 the mask minimum stays finite."""
    return torch.float32 if architecture == "gemma2" else torch.float64


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny tensors: one intra-op thread (conftest restores the thread count)."""
    torch.set_num_threads(1)


def models(architecture: str, dtype: torch.dtype = torch.float64) -> tuple[PreTrainedModel, PreTrainedModel]:
    """The tiny model of a family in ``dtype`` (its default implementation: sdpa, eager for
    Gemma 2) and an eager twin with the same weights, built once per module."""
    if (architecture, dtype) not in _MODELS:
        model = build_tiny_model(
            architecture, vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2,
            intermediate_size=64, max_positions=128, seed=7,
        ).to(dtype).eval()
        if architecture == "gemma2":  # random init gives scores far below the cap: scale q and k so it bites
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.self_attn.q_proj.weight.mul_(GEMMA2_QK_GAIN)
                    layer.self_attn.k_proj.weight.mul_(GEMMA2_QK_GAIN)
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")
        _MODELS[architecture, dtype] = (model, eager.eval())
    return _MODELS[architecture, dtype]


def eager_maps(eager: PreTrainedModel, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every layer's ``(1, heads, T, T)`` eager attention weights of one unpadded row."""
    with torch.no_grad():
        return eager(ids[None], output_attentions=True, use_cache=False).attentions


def sliding_layer(model: PreTrainedModel) -> int | None:
    """Index of a layer with a sliding window (Mistral: every layer; no ``layer_types``), or None."""
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types is not None:
        return layer_types.index("sliding_attention") if "sliding_attention" in layer_types else None
    return 0 if getattr(model.config, "sliding_window", None) else None


def test_the_families_exercise_what_they_should() -> None:
    """Sliding layers and soft-capping are really present in the tiny configs."""
    sliding = {a for a in ARCHITECTURES if sliding_layer(models(a)[0]) is not None}
    assert {"qwen2-sliding", "mistral", "gemma2", "gemma3"} <= sliding
    assert all(models(a)[0].config.sliding_window == WINDOW for a in sliding)
    gemma2 = models("gemma2")[0]
    assert gemma2.config.attn_logit_softcapping == 5.0
    largest: list[float] = []

    def consumer(layer: CapturedLayer) -> None:  # the scaled scores before the cap
        keys = layer.key.repeat_interleave(layer.group_size, dim=1)
        largest.append(float((layer.query @ keys.transpose(-1, -2) * layer.scaling).abs().max()))

    with capture_qk(gemma2, consumer), torch.no_grad():
        gemma2(torch.arange(2, 40)[None], use_cache=False)
    assert min(largest) > gemma2.config.attn_logit_softcapping  # the cap changes the weights


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_captured_rows_equal_eager_attention(architecture: str) -> None:
    """(a) Per layer, the captured rows are the eager weights: unpadded row 0 directly, the
    left-padded row 1 on its real positions against its own unpadded eager maps."""
    model, eager = models(architecture, padded_dtype(architecture))
    gen = torch.Generator().manual_seed(11)
    length, pad = 36, 7
    ids = torch.randint(2, VOCAB, (2, length), generator=gen)
    ids[1, :pad] = 0
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    references = [eager_maps(eager, ids[0]), eager_maps(eager, ids[1, pad:])]
    rows: dict[int, torch.Tensor] = {}
    softcaps: dict[int, float | None] = {}

    def consumer(layer: CapturedLayer) -> None:
        rows[layer.layer_idx] = torch.cat([layer.attention_rows(slice(0, 20)), layer.attention_rows(slice(20, length))], 2)
        softcaps[layer.layer_idx] = layer.softcap

    with capture_qk(model, consumer) as session, torch.no_grad():
        model(ids, attention_mask=mask, position_ids=positions, use_cache=False)
    layers = model.config.num_hidden_layers
    assert session.layers_seen == list(range(layers))
    for index in range(layers):
        torch.testing.assert_close(rows[index][0], references[0][index][0].float(), atol=2e-6, rtol=0)
        torch.testing.assert_close(rows[index][1, :, pad:, pad:], references[1][index][0].float(), atol=2e-6, rtol=0)
        assert torch.all(rows[index][1, :, pad:, :pad] == 0)  # padding keys
    expected_cap = 5.0 if architecture == "gemma2" else None
    assert set(softcaps.values()) == {expected_cap}
    sliding = sliding_layer(model)
    if sliding is not None:
        assert torch.all(rows[sliding][0, :, length - 1, : length - WINDOW] == 0)  # the window bites


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_capture_keeps_the_model_outputs(architecture: str) -> None:
    """The capture forward gives the model's own outputs (Gemma 2: its eager attention, soft-cap
    included; the others: sdpa), padded batch included."""
    model, _ = models(architecture, padded_dtype(architecture))
    ids = torch.randint(2, VOCAB, (2, 30), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    kwargs = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0), "use_cache": False}
    with torch.no_grad():
        plain = model(ids, **kwargs).logits
        with capture_qk(model, lambda layer: None):
            captured = model(ids, **kwargs).logits
    torch.testing.assert_close(captured[0, 5:], plain[0, 5:], atol=1e-12, rtol=0)
    torch.testing.assert_close(captured[1], plain[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fci_equals_naive_eager_fci(architecture: str) -> None:
    """(b) FCI of one sequence, two gaps and block sizes, against the definition on eager maps."""
    model, eager = models(architecture)
    ids, spans = random_case(21, length=64)
    for min_gap, block_size in ((1, None), (3, 5)):
        expected = naive_fci(eager, ids, spans, min_gap)
        got = fci_scores(model, ids, spans, min_gap=min_gap, block_size=block_size)
        assert expected[2:].abs().sum() > 0
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fci_batch_left_padded_equals_naive_eager_fci(architecture: str) -> None:
    """(b) The batched, left-padded form against per-row unpadded eager references."""
    model, eager = models(architecture, padded_dtype(architecture))
    cases = [random_case(40 + r, length=n) for r, n in enumerate([50, 37, 61])]
    input_ids, mask, _ = left_pad([ids.tolist() for ids, _ in cases], 0)
    got = fci_scores_batch(model, input_ids, mask, [spans for _, spans in cases], min_gap=2, block_size=7)
    for row, (ids, spans) in enumerate(cases):
        torch.testing.assert_close(got[row], naive_fci(eager, ids, spans, 2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_text_scores_equal_naive_eager_scores(architecture: str) -> None:
    """(c) AttnTrace's text scores against the mean eager rows of R, top-K and plain mean."""
    model, _ = models(architecture)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(2, VOCAB, (48,), generator=gen)
    spans, answer_start = [(0, 6), (6, 13), (15, 22), (22, 30), (31, 38)], 40
    for top_k in (3, None):
        got = text_scores(model, ids, spans, answer_start, top_k=top_k)
        expected = naive_text_scores(model, ids, spans, answer_start, top_k)
        assert got.shape == (len(spans),) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
