"""lit_attn.families.check_scorable: the families whose attention lit_attn scores exactly pass,
the others are refused in one exact line (tiny models built from config, never downloaded)."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.models.qwen2 import modeling_qwen2

from lit_attn.attention import fci_scores
from lit_attn.errors import UserError
from lit_attn.families import check_scorable
from lit_attn.models import ARCHITECTURES, build_tiny_model, tiny_config

TAIL = (
    "which lit_attn's attention scores (FCI, AttnTrace) cannot reproduce exactly; use a model with plain softmax "
    "attention (Qwen2, Llama, Mistral, Gemma, Phi-3, ...) or a method that needs no attention scores "
    "(leave_one_out attribution, EntropyBranchCallback)"
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def from_config(config: transformers.PretrainedConfig) -> PreTrainedModel:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def gpt_oss() -> PreTrainedModel:
    return from_config(transformers.GptOssConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=32, num_local_experts=2, num_experts_per_tok=1,
    ))


def refusal(model: PreTrainedModel, **kwargs: bool) -> str:
    with pytest.raises(UserError) as caught:
        check_scorable(model, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_tiny_family_is_scorable(architecture: str) -> None:
    model = build_tiny_model(
        architecture, vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, max_positions=128,
    )
    check_scorable(model)
    check_scorable(model.to(torch.bfloat16))  # the probe's tolerance for half types
    assert model.config._attn_implementation in ("sdpa", "eager")  # restored after the probe


@pytest.mark.parametrize(
    ("config", "name"),
    [
        (transformers.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4), "BloomForCausalLM (bloom)"),
        (
            transformers.FalconConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True),
            "FalconForCausalLM (falcon)",
        ),
        (transformers.MptConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4), "MptForCausalLM (mpt)"),
    ],
)
def test_alibi_is_refused(config: transformers.PretrainedConfig, name: str) -> None:
    assert refusal(from_config(config)) == f"{name} adds ALiBi position biases inside its own attention code, {TAIL}"


def test_attention_outside_the_interface_is_refused() -> None:
    # GPT-Neo: outside the interface on every supported release (Falcon joined it in 5.25)
    gpt_neo = from_config(
        transformers.GPTNeoConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global"], 2]])
    )
    assert refusal(gpt_neo) == (
        "GPTNeoForCausalLM (gpt_neo) does not route its attention through transformers' AttentionInterface, so "
        "lit_attn cannot capture its queries and keys; use a model whose attention layers call ALL_ATTENTION_FUNCTIONS "
        "(Qwen2, Llama, GPT-2, Mistral, ...)"
    )


def test_attention_sinks_are_refused_at_setup_and_in_the_capture() -> None:
    model = gpt_oss()
    assert refusal(model) == f"GptOssForCausalLM (gpt_oss) adds learned attention-sink logits to every softmax, {TAIL}"
    # Without the setup check the capture itself refuses the layer's s_aux argument.
    ids = torch.arange(2, 40)
    with pytest.raises(UserError) as caught:
        fci_scores(model, ids, [(0, 5), (5, 10), (10, 20), (20, 30), (30, 38)], min_gap=1)
    assert str(caught.value) == f"GptOssForCausalLM (gpt_oss) attention uses learned attention-sink logits (s_aux=...), {TAIL}"
    assert model.config._attn_implementation == "eager"


def test_bidirectional_attention_is_refused() -> None:
    config = tiny_config("gemma3", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
    config.use_bidirectional_attention = True
    assert refusal(from_config(config), probe=False) == (
        "Gemma3ForCausalLM (gemma3_text) attends both ways (bidirectional attention), which lit_attn's attention "
        "scores (FCI, AttnTrace) cannot reproduce exactly; use a causal (decoder-only) model or a method that needs "
        "no attention scores (leave_one_out attribution, EntropyBranchCallback)"
    )


def test_the_probe_refuses_attention_the_capture_does_not_reproduce(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer whose own (eager) attention adds a score term the capture never sees."""
    model = build_tiny_model("qwen2", vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
    model.eval()
    check_scorable(model)
    original = modeling_qwen2.eager_attention_forward

    def biased(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        bias = torch.zeros(key.shape[2], dtype=query.dtype)
        bias[0] = 3.0  # a learned "sink" on the first token, outside the AttentionInterface arguments
        mask = bias if attention_mask is None else attention_mask + bias
        causal = torch.full((query.shape[2], key.shape[2]), float("-inf")).triu(1)
        return original(module, query, key, value, mask + causal, scaling, dropout, **kwargs)

    monkeypatch.setattr(modeling_qwen2, "eager_attention_forward", biased)
    message = refusal(model)
    assert message.startswith("Qwen2ForCausalLM (qwen2) changes its outputs under lit_attn's attention capture (relative difference ")
    assert message.endswith(f"), {TAIL}")

    def transposed_weights(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        output, weights = original(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
        return output, weights.transpose(-1, -2)  # same outputs, weights that are not the rows

    monkeypatch.setattr(modeling_qwen2, "eager_attention_forward", transposed_weights)
    message = refusal(model)
    assert message.startswith("Qwen2ForCausalLM (qwen2) has attention weights the captured rows do not reproduce")
    assert model.config._attn_implementation == "sdpa"


def test_not_a_transformers_model_is_refused() -> None:
    assert refusal(torch.nn.Linear(2, 2)) == (
        "attention scores need a Hugging Face PreTrainedModel (or a PEFT model around one), got Linear; hold the "
        "causal LM in the module's model attribute"
    )
