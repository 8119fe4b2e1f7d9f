"""The PPO update with gradient accumulation: micro-batches give the one-piece gradient."""

from __future__ import annotations

import copy

import pytest
import torch

from lit_attn.experience import pack_sequences
from lit_attn.loss import AGGREGATIONS
from lit_attn.models import build_tiny_model
from lit_attn.ppo import PPOSettings, micro_batches, ppo_update


class SGDHost:
    """The three things ppo_update asks of its host, around plain SGD (whose step is linear in
    the gradient, so a wrong normaliser shows; Adam's first step would hide it)."""

    _trainer = None

    def __init__(self, model: torch.nn.Module) -> None:
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        self.backward_calls = 0

    def optimizers(self):
        return self.optimizer

    def manual_backward(self, loss: torch.Tensor) -> None:
        self.backward_calls += 1
        loss.backward()

    def clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm) -> None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], gradient_clip_val)


def experience(per_token: bool = False, seed: int = 0):
    """Ten sequences with prompts of 3-9 tokens and completions of 1-12 (one all masked out)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 60, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g).tolist() for _ in range(10)]
    completions = [torch.randint(3, 60, (int(torch.randint(1, 13, (1,), generator=g)),), generator=g).tolist() for _ in range(10)]
    advantages = [torch.randn(len(c) if per_token else (), generator=g) for c in completions]
    old = [(-torch.rand(len(c), generator=g) * 4).tolist() for c in completions]
    exp = pack_sequences(prompts, completions, 0, advantages=advantages, old_logprobs=old)
    exp.completion_mask[4] = 0  # a skipped completion: no tokens train
    return exp


def updated(model, exp, settings, ref=None):
    trained = copy.deepcopy(model)
    host = SGDHost(trained)
    ppo_update(host, trained, exp, settings, ref_model=ref, generator=torch.Generator().manual_seed(0))
    return trained, host


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("limits", [{"micro_batch_size": 3}, {"micro_batch_tokens": 40}, {"micro_batch_size": 1}])
def test_micro_batches_give_the_whole_minibatch_update(aggregation, limits):
    torch.manual_seed(0)
    model = build_tiny_model("qwen2", seed=1)
    ref = build_tiny_model("qwen2", seed=2)
    exp = experience(per_token=aggregation == "token_mean")
    base = dict(minibatch_size=10, aggregation=aggregation, kl_coef=0.1, grad_clip=0.0)
    whole, whole_host = updated(model, exp, PPOSettings(**base), ref)
    micro, micro_host = updated(model, exp, PPOSettings(**base, **limits), ref)
    assert whole_host.backward_calls == 1 and micro_host.backward_calls > 2
    moved = max((a - b).abs().max().item() for a, b in zip(whole.parameters(), model.parameters()))
    assert moved > 1e-3  # the update did something
    for (name, a), b in zip(whole.named_parameters(), micro.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6, msg=name)


def test_micro_batch_token_budget_bounds_every_forward():
    exp = experience()
    rows = torch.arange(exp.num_sequences)
    lengths = exp.attention_mask.sum(-1)
    chunks = micro_batches(exp.attention_mask, rows, PPOSettings(micro_batch_tokens=40))
    assert torch.equal(torch.cat(chunks), rows)
    for chunk in chunks:
        assert len(chunk) == 1 or len(chunk) * int(lengths[chunk].max()) <= 40


def test_an_empty_experience_still_steps_once_without_gradients():
    model = build_tiny_model("qwen2", seed=1)
    exp = pack_sequences([], [], 0, advantages=[])
    trained, host = updated(model, exp, PPOSettings(minibatch_size=4))
    assert host.backward_calls == 0
    for a, b in zip(trained.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_bad_micro_batch_size_is_one_line_error():
    from lit_attn.errors import UserError

    with pytest.raises(UserError, match="micro_batch_size must be >= 1"):
        PPOSettings(micro_batch_size=0)
