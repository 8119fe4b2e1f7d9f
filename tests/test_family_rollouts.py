"""Rollouts, log-probs and training across every family of ``lit_attn.models.ARCHITECTURES``
(issue 21, docs/models.md "Rollouts, log-probs and training across families"):

* shared-prompt log-probs (``continuation_logprobs``: the prompt's KV cache computed once)
  give the values, entropies and gradients of the plain full forward, on sequences longer
  than the sliding window;
* the sampler's greedy decoding equals ``model.generate(do_sample=False)`` token for token on
  a left-padded batch of prompts of different lengths, past the sliding window;
* two ``fit`` steps (the first only samples under AttnRL's one-step off-policy schedule, the
  second trains) run with both callbacks, with full fine-tuning and with LoRA, whose
  ``all-linear`` targets include each family's attention projections (fused ones too).

Exactness is checked in float64 on tiny models (hidden 32, 2 layers, 128 positions, so the
sliding window of ``models.tiny_config`` is 8 positions).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from torch import nn
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as gemma2_eager_attention

import lit_attn.ppo
from lit_attn import EvaluationSettings, OptimizerSettings, PolicyModule, UpdateSettings, PromptDataModule, RewardsSettings, SamplingSettings
from lit_attn.callbacks import AttentionBranchCallback, AttributionCallback
from lit_attn.kv_cache import ReservedLayer, new_cache
from lit_attn.settings import LoraSettings
from lit_attn.logprobs import can_share_prefixes, continuation_logprobs, position_ids_from_mask, token_logprobs
from lit_attn.models import ARCHITECTURES, build_tiny_model
from lit_attn.rollout import left_pad
from lit_attn.sampling import sample_continuations
from lit_attn.tokenizer import build_char_tokenizer
from tests.conftest import save_tiny

TOKENIZER = build_char_tokenizer()
V = len(TOKENIZER)
MAX_POSITIONS = 128
WINDOW = max(4, MAX_POSITIONS // 16)  # models.tiny_config's sliding window
SLIDING = {"qwen2-sliding", "mistral", "gemma2", "gemma3"}
"""Families with sliding-window layers (the others attend to every earlier position)."""

ATTENTION_PROJECTIONS = {"gpt2": {"c_attn"}, "phi3": {"qkv_proj"}, "gpt-neox": {"query_key_value"}}
"""The attention input projections LoRA must adapt, where a family fuses them; q/k/v_proj elsewhere."""

EAGER_FLOAT64 = "eager_float32_mask"
"""transformers' eager attention takes its softmax in float32, where a float64 mask's minimum
(-1.8e308) becomes -inf: a fully masked row (a left-padding query) then gives NaN, which spreads
to the real tokens through 0 · NaN. This name runs Gemma 2's own eager attention function with
the mask built in float32 (a finite minimum), so float64 eager-only models can be compared on
padded batches. Float32 / bfloat16 models, what lit_attn trains, are not affected."""


def _mask_in_float32(*args, **kwargs) -> torch.Tensor:
    kwargs["dtype"] = torch.float32
    return eager_mask(*args, **kwargs)


AttentionInterface.register(EAGER_FLOAT64, gemma2_eager_attention)
AttentionMaskInterface.register(EAGER_FLOAT64, _mask_in_float32)

_MODELS: dict[str, nn.Module] = {}


def family_model(architecture: str) -> nn.Module:
    """The float64 tiny model of ``architecture``, built once per module: weights redrawn large
    (embeddings small where the family scales them up, Gemma) so greedy decoding varies."""
    if architecture not in _MODELS:
        model = build_tiny_model(
            architecture, vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
            max_positions=MAX_POSITIONS, pad_token_id=TOKENIZER.pad_token_id, eos_token_id=TOKENIZER.eos_token_id,
        )
        embedding = model.get_input_embeddings().weight
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() >= 2:
                    scale = 0.02 if parameter is embedding and architecture.startswith("gemma") else 0.4
                    parameter.copy_(torch.randn(parameter.shape, generator=gen) * scale)
        model = model.double().eval()
        if model.config._attn_implementation == "eager":
            model.config._attn_implementation = EAGER_FLOAT64
        _MODELS[architecture] = model
    return _MODELS[architecture]


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _MODELS.clear()


def _has_sliding_layers(model: nn.Module) -> bool:
    return any(isinstance(layer, DynamicSlidingWindowLayer) for layer in DynamicCache(config=model.config).layers)


# ---------------------------------------------------------------------------- shared prompts


def _shared_batch() -> tuple[torch.Tensor, ...]:
    """Two left-padded prefixes (14 and 5 tokens), five right-padded continuations of up to 13
    tokens: prefix + continuation spans 27 positions, more than three windows."""
    gen = torch.Generator().manual_seed(3)
    prefixes = [torch.randint(5, V, (n,), generator=gen).tolist() for n in (14, 5)]
    continuations = [torch.randint(5, V, (n,), generator=gen).tolist() for n in (12, 13, 1, 13, 4)]
    index = torch.tensor([0, 1, 0, 0, 1])
    P, C = 14, 13
    prefix_ids, prefix_mask, _ = left_pad(prefixes, TOKENIZER.pad_token_id)
    ids = torch.full((5, C), TOKENIZER.pad_token_id, dtype=torch.long)
    mask = torch.zeros(5, C, dtype=torch.long)
    for row, tokens in enumerate(continuations):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    assert prefix_ids.shape[1] == P and P + C > 3 * WINDOW
    return prefix_ids, prefix_mask, index, ids, mask


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_shared_prompts_give_the_values_and_gradients_of_the_full_forward(architecture: str) -> None:
    model = family_model(architecture)
    assert _has_sliding_layers(model) == (architecture in SLIDING)
    assert can_share_prefixes(model)  # every family shares (none falls back)
    prefix_ids, prefix_mask, index, ids, mask = _shared_batch()
    P = prefix_ids.shape[1]
    full_ids = torch.cat([prefix_ids[index], ids], 1)
    full_mask = torch.cat([prefix_mask[index], mask], 1)
    weights, valid = mask.double(), mask.bool()

    model.zero_grad()
    ref_lp, ref_ent = token_logprobs(model, full_ids, full_mask, temperature=0.7, with_entropy=True)
    ref_lp, ref_ent = ref_lp[:, P - 1 :], ref_ent[:, P - 1 :]
    ((ref_lp * weights).sum() + 0.3 * (ref_ent * weights).sum()).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    lp, ent = continuation_logprobs(
        model, prefix_ids, prefix_mask, index, ids, mask, chunk_size=4, temperature=0.7, with_entropy=True
    )
    assert lp.shape == ent.shape == (5, ids.shape[1])
    assert torch.isfinite(ref_lp[valid]).all()
    with torch.no_grad():  # the model's own logits (Gemma 2's final soft-capping included) agree
        logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask)).logits
        own = torch.log_softmax(logits[:, P - 1 : -1] / 0.7, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(own[valid], ref_lp.detach()[valid], atol=1e-10, rtol=0)
    # sdpa runs in float64 (exact to rounding); eager attention (Gemma 2) takes its softmax in
    # float32, whose rounding differs between the two call shapes
    atol = 1e-6 if model.config._attn_implementation == EAGER_FLOAT64 else 1e-10
    torch.testing.assert_close(lp[valid], ref_lp[valid], atol=atol, rtol=0)
    torch.testing.assert_close(ent[valid], ref_ent[valid], atol=atol, rtol=0)
    ((lp * weights).sum() + 0.3 * (ent * weights).sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        # RMSNorm and rotary tables run in float32 whatever the model's dtype (transformers), and
        # their last bit differs between the call shapes: 1e-5, not 1e-12 (a wrong window or a
        # dropped cache gradient is off by 1e-2 and more)
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)

    if architecture in SLIDING:  # the window shapes these numbers: without it they differ
        window, model.config.sliding_window = model.config.sliding_window, 10 * MAX_POSITIONS
        try:
            with torch.no_grad():
                unwindowed = token_logprobs(model, full_ids, full_mask, temperature=0.7)[0][:, P - 1 :]
        finally:
            model.config.sliding_window = window
        assert (unwindowed[valid] - ref_lp[valid].detach()).abs().max() > 1e-4


def test_chunked_attention_and_unknown_layer_kinds_fall_back_to_the_full_forward() -> None:
    """Llama 4's chunked attention uses the sliding cache layer but masks by chunk; any layer kind
    other than full or sliding attention is not shared either: continuation_logprobs then writes
    the rows out in full (the same numbers, no saving) instead of giving different ones."""
    model = family_model("qwen2")
    prefix_ids, prefix_mask, index, ids, mask = _shared_batch()
    with torch.no_grad():
        shared, _ = continuation_logprobs(model, prefix_ids, prefix_mask, index, ids, mask)
    layer_types = model.config.layer_types
    model.config.layer_types = ["chunked_attention", "full_attention"]
    try:
        assert not can_share_prefixes(model)
    finally:
        model.config.layer_types = layer_types
    model.config.attention_chunk_size = 4  # Qwen2 ignores it: the plain path must give the shared numbers
    try:
        assert not can_share_prefixes(model)
        with torch.no_grad():
            plain, _ = continuation_logprobs(model, prefix_ids, prefix_mask, index, ids, mask)
    finally:
        del model.config.attention_chunk_size
    torch.testing.assert_close(plain[mask.bool()], shared[mask.bool()], atol=1e-10, rtol=0)
    assert can_share_prefixes(model)


# ---------------------------------------------------------------------------- greedy sampling

PROMPTS = ["a", "x=7, y=3.\n\nx+y=", "What is 2*3? Step one, then two"]
NEW_TOKENS = 24


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_greedy_sampler_equals_generate_on_a_left_padded_batch(architecture: str) -> None:
    model = family_model(architecture)
    prompts = [TOKENIZER.encode(p) for p in PROMPTS]
    eos = TOKENIZER.eos_token_id
    result = sample_continuations(model, TOKENIZER, prompts, 2, max_new_tokens=NEW_TOKENS, do_sample=False)
    ids, mask, _ = left_pad(prompts, TOKENIZER.pad_token_id)
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos,
            pad_token_id=TOKENIZER.pad_token_id,
        )[:, ids.shape[1] :].tolist()
    expected = [row[: row.index(eos) + 1] if eos in row else row for row in out]
    got = [result.new_tokens(i) for i in range(len(result))]
    assert got == [expected[i] for i in result.prefix_index.tolist()]
    assert max(len(set(tokens)) for tokens in got) > 3  # the model does not just repeat a token
    assert max(len(p) + len(g) for p, g in zip(prompts, expected)) > 3 * WINDOW
    layers = new_cache(model, 8).layers  # sliding layers keep transformers' class, full ones reserve room
    assert [isinstance(layer, DynamicSlidingWindowLayer) for layer in layers] == [
        not isinstance(layer, ReservedLayer) for layer in layers
    ]
    assert any(isinstance(layer, DynamicSlidingWindowLayer) for layer in layers) == (architecture in SLIDING)


# ---------------------------------------------------------------------------- fit steps

_FOLDERS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def family_folder(tmp_path_factory):
    """``folder(architecture)``: a tiny model of the family with the character tokenizer, saved
    once per session as a user's model would be."""

    def folder(architecture: str) -> Path:
        if architecture not in _FOLDERS:
            _FOLDERS[architecture] = save_tiny(tmp_path_factory.mktemp(architecture), architecture, max_positions=MAX_POSITIONS)
        return _FOLDERS[architecture]

    return folder


def spread_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """A reward that differs between any two different completions (almost surely), so a random
    policy's groups have advantages and the second step trains."""
    return [sum((i + 1) * ord(ch) for i, ch in enumerate(c)) % 97 / 97 for c in completions]


PROBES = [{"contexts": ["a=1", "b=2"], "question": "a+b", "relevant": [0, 1]}]

FIT_CASES = [
    pytest.param(architecture, lora, id=f"{architecture}-{'lora' if lora else 'full'}")
    for architecture in ARCHITECTURES for lora in (False, True)
]


@pytest.mark.parametrize(("architecture", "lora"), FIT_CASES)
def test_fit_steps_with_both_callbacks(architecture: str, lora: bool, family_folder, monkeypatch) -> None:
    shared_calls = []
    real = lit_attn.ppo.continuation_logprobs

    def spy(*args, **kwargs):
        shared_calls.append(args[1].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(lit_attn.ppo, "continuation_logprobs", spy)
    module = PolicyModule(
        name_or_path=str(family_folder(architecture)),
        sampling=SamplingSettings(group_size=2, prompts_per_step=2, max_new_tokens=6),
        update=UpdateSettings(minibatch_size=4), optimizer=OptimizerSettings(lr=0.01),
        lora=LoraSettings(rank=2) if lora else None, evaluation=EvaluationSettings(validate_at_start=False),
        rewards=RewardsSettings([f"{__name__}.spread_reward"]),
    )
    before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    branching = AttentionBranchCallback(min_gap=1)
    attribution = AttributionCallback(PROBES, every_n_train_steps=1, k=1, num_subsamples=2, max_new_tokens=2, html=False)
    trainer = Trainer(
        max_steps=2, callbacks=[branching, attribution], logger=False, limit_val_batches=0, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu", devices=1,
    )
    trainer.fit(module, PromptDataModule(train_size=8, val_size=2, num_distractors=0, num_ops=1))

    assert branching.rl_step == 2 and trainer.global_step >= 1
    assert "branching/points_per_expanded_response" in trainer.callback_metrics
    assert math.isfinite(float(trainer.callback_metrics["loss"]))
    assert shared_calls, "the update did not share the prompts (can_share_prefixes refused the family)"
    assert {"attribution/precision_at_k", "attribution/relevant_share"} <= attribution.last_metrics.keys()
    assert all(math.isfinite(v) for v in attribution.last_metrics.values())
    changed = {name for name, p in module.model.named_parameters() if not torch.equal(p, before[name])}
    attention = ATTENTION_PROJECTIONS.get(architecture, {"q_proj", "k_proj", "v_proj"})
    if lora:
        assert changed and all("lora_" in name for name in changed)
        adapted = {name.split(".")[-4] for name in changed if "lora_B" in name}  # ...<proj>.lora_B.default.weight
        assert attention <= adapted, f"LoRA left {sorted(attention - adapted)} unadapted; adapted {sorted(adapted)}"
    else:
        assert any(name.split(".")[-2] in attention for name in changed), sorted(changed)
