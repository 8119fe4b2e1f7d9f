"""lit_attn.logprobs.token_logprobs must equal a plain full-logits computation, without the full logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_attn.logprobs import position_ids_from_mask, selective_log_softmax, token_logprobs
from lit_attn.models import build_tiny_model

ARCHITECTURES = ["qwen2", "llama", "gpt2"]
B, T, V = 3, 11, 100


def _model(architecture: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    model = build_tiny_model(
        architecture, vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64
    )
    return model.to(dtype).eval()  # eval: no dropout (gpt2 has some); float64: tight comparisons


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, V, (B, T), generator=gen)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    for row, pad in enumerate([4, 0, 2]):  # left padding of different lengths
        attention_mask[row, :pad] = 0
        input_ids[row, :pad] = 0
    return input_ids, attention_mask


def _naive(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float):
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).logits[:, :-1] / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return picked, entropy


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_matches_full_logits_values_and_gradients(architecture: str) -> None:
    input_ids, attention_mask = _batch()
    target_mask = attention_mask[:, 1:].double()

    model = _model(architecture)
    ref_lp, ref_ent = _naive(model, input_ids, attention_mask, temperature=0.7)
    ((ref_lp * target_mask).sum() + 0.3 * (ref_ent * target_mask).sum()).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    lp, ent = token_logprobs(model, input_ids, attention_mask, chunk_size=3, temperature=0.7, with_entropy=True)
    assert lp.shape == ent.shape == (B, T - 1)
    assert torch.allclose(lp, ref_lp, atol=1e-5, rtol=0)
    assert torch.allclose(ent, ref_ent, atol=1e-5, rtol=0)
    ((lp * target_mask).sum() + 0.3 * (ent * target_mask).sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], atol=1e-5, rtol=1e-5), name


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_left_padding_gives_the_unpadded_numbers(architecture: str) -> None:
    model = _model(architecture)
    input_ids, attention_mask = _batch()
    with torch.no_grad():
        lp, ent = token_logprobs(model, input_ids, attention_mask, chunk_size=4, with_entropy=True)
        alone, alone_ent = token_logprobs(model, input_ids[:1, 4:], attention_mask[:1, 4:], with_entropy=True)
    assert torch.allclose(lp[0, 4:], alone[0], atol=1e-5, rtol=0)
    assert torch.allclose(ent[0, 4:], alone_ent[0], atol=1e-5, rtol=0)


def test_full_logits_are_never_built_forward_or_backward() -> None:
    model = _model("qwen2")
    input_ids, attention_mask = _batch()
    head = model.get_output_embeddings()
    seen: list[int] = []
    handle = head.register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    try:
        lp, _ = token_logprobs(model, input_ids, attention_mask, chunk_size=4)
        forward_calls = len(seen)
        lp.sum().backward()
    finally:
        handle.remove()
    assert forward_calls == 3  # T - 1 = 10 positions in chunks of 4, 4, 2
    assert max(seen) <= 4
    assert len(seen) > forward_calls  # backward re-ran the head chunk by chunk (checkpointing)
    assert model.get_input_embeddings().weight.grad is not None


def test_no_grad_and_defaults() -> None:
    model = _model("llama", torch.float32)
    input_ids, attention_mask = _batch()
    with torch.no_grad():
        lp, ent = token_logprobs(model, input_ids, attention_mask)
        ref_lp, _ = _naive(model, input_ids, attention_mask, temperature=1.0)
        half_lp, _ = token_logprobs(model.to(torch.bfloat16), input_ids, attention_mask)
    assert ent is None
    assert not lp.requires_grad
    assert lp.dtype == torch.float32
    assert torch.allclose(lp, ref_lp, atol=1e-5, rtol=0)
    assert (lp <= 0).all()
    assert half_lp.dtype == torch.float32  # bf16 logits are upcast before the log-softmax
    assert torch.allclose(half_lp, ref_lp, atol=0.1, rtol=0)


def test_selective_log_softmax() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    index = torch.tensor([2, 3])
    # uniform over 4: log(1/4); second: 4 - log(e + e^2 + e^3 + e^4)
    expected = torch.log_softmax(logits, -1)[[0, 1], [2, 3]]
    assert torch.allclose(selective_log_softmax(logits, index), expected)
    assert selective_log_softmax(logits, index)[0].item() == pytest.approx(-1.3862943611198906)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    model = _model("qwen2")
    input_ids, attention_mask = _batch()
    with pytest.raises(ValueError, match=match):
        token_logprobs(model, input_ids, attention_mask, **kwargs)
    with pytest.raises(ValueError, match="attention_mask shape"):
        token_logprobs(model, input_ids, attention_mask[:, 1:])
    with pytest.raises(ValueError, match="at least 2 positions"):
        token_logprobs(model, input_ids[:, :1], attention_mask[:, :1])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_shared_prefixes_give_the_concatenated_values_and_gradients(architecture: str) -> None:
    """Two left-padded prefixes of different lengths, five continuations of them (right-padded):
    continuation_logprobs encodes each prefix once and must equal token_logprobs on the rows
    written out in full, values, entropies and gradients."""
    from lit_attn.logprobs import can_share_prefixes, continuation_logprobs

    gen = torch.Generator().manual_seed(3)
    prefixes = [torch.randint(2, V, (n,), generator=gen).tolist() for n in (6, 3)]
    index = torch.tensor([0, 1, 0, 0, 1])
    conts = [torch.randint(2, V, (n,), generator=gen).tolist() for n in (4, 5, 1, 5, 2)]
    P, C = 6, 5
    prefix_ids = torch.zeros(2, P, dtype=torch.long)
    prefix_mask = torch.zeros(2, P, dtype=torch.long)
    for i, p in enumerate(prefixes):
        prefix_ids[i, P - len(p):] = torch.tensor(p)
        prefix_mask[i, P - len(p):] = 1
    ids = torch.zeros(5, C, dtype=torch.long)
    mask = torch.zeros(5, C, dtype=torch.long)
    for r, c in enumerate(conts):
        ids[r, : len(c)] = torch.tensor(c)
        mask[r, : len(c)] = 1
    full_ids = torch.cat([prefix_ids[index], ids], 1)
    full_mask = torch.cat([prefix_mask[index], mask], 1)

    model = _model(architecture)
    assert can_share_prefixes(model)
    ref_lp, ref_ent = token_logprobs(model, full_ids, full_mask, temperature=0.7, with_entropy=True)
    ref_lp, ref_ent = ref_lp[:, P - 1:], ref_ent[:, P - 1:]
    weights = mask.double()
    ((ref_lp * weights).sum() + 0.3 * (ref_ent * weights).sum()).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    lp, ent = continuation_logprobs(
        model, prefix_ids, prefix_mask, index, ids, mask, chunk_size=2, temperature=0.7, with_entropy=True
    )
    assert lp.shape == ent.shape == (5, C)
    valid = mask.bool()
    assert torch.allclose(lp[valid], ref_lp[valid], atol=1e-9, rtol=0)
    assert torch.allclose(ent[valid], ref_ent[valid], atol=1e-9, rtol=0)
    ((lp * weights).sum() + 0.3 * (ent * weights).sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        # Qwen2/Llama build their rotary tables in float32 whatever the model's dtype, and the
        # values differ in the last float32 bit between the two call shapes: hence 1e-6, not 1e-12.
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-6, rtol=1e-6, msg=name)


def test_prefixes_are_not_shared_under_gradient_checkpointing() -> None:
    """transformers drops the KV cache of checkpointed layers, so sharing must turn itself off."""
    from lit_attn.logprobs import can_share_prefixes

    model = _model("qwen2")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not can_share_prefixes(model)
