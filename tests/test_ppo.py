"""The PPO update with gradient accumulation: micro-batches give the one-piece gradient."""

from __future__ import annotations

import copy

import pytest
import torch

from lit_attn.experience import pack_sequences
from lit_attn.loss import AGGREGATIONS
from lit_attn.models import build_tiny_model
from lit_attn.ppo import frozen_reference, micro_batches, ppo_update
from lit_attn.settings import UpdateSettings


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
    reference = frozen_reference(ref) if ref is not None else None
    ppo_update(host, trained, exp, settings, reference=reference, generator=torch.Generator().manual_seed(0))
    return trained, host


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("limits", [{"micro_batch_size": 3}, {"micro_batch_tokens": 40}, {"micro_batch_size": 1}])
def test_micro_batches_give_the_whole_minibatch_update(aggregation, limits):
    torch.manual_seed(0)
    model = build_tiny_model("qwen2", seed=1)
    ref = build_tiny_model("qwen2", seed=2)
    exp = experience(per_token=aggregation == "token_mean")
    base = dict(minibatch_size=10, aggregation=aggregation, kl_coef=0.1, grad_clip=0.0)
    whole, whole_host = updated(model, exp, UpdateSettings(**base), ref)
    micro, micro_host = updated(model, exp, UpdateSettings(**base, **limits), ref)
    assert whole_host.backward_calls == 1 and micro_host.backward_calls > 2
    moved = max((a - b).abs().max().item() for a, b in zip(whole.parameters(), model.parameters()))
    assert moved > 1e-3  # the update did something
    for (name, a), b in zip(whole.named_parameters(), micro.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6, msg=name)


def test_micro_batch_token_budget_bounds_every_forward():
    exp = experience()
    rows = torch.arange(exp.num_sequences)
    lengths = exp.attention_mask.sum(-1)
    chunks = micro_batches(exp.attention_mask, rows, UpdateSettings(micro_batch_tokens=40))
    assert torch.equal(torch.cat(chunks), rows)
    for chunk in chunks:
        assert len(chunk) == 1 or len(chunk) * int(lengths[chunk].max()) <= 40


def test_an_empty_experience_still_steps_once_without_gradients():
    model = build_tiny_model("qwen2", seed=1)
    exp = pack_sequences([], [], 0, advantages=[])
    trained, host = updated(model, exp, UpdateSettings(minibatch_size=4))
    assert host.backward_calls == 0
    for a, b in zip(trained.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_bad_micro_batch_size_is_one_line_error():
    from lit_attn.errors import UserError

    with pytest.raises(UserError, match="micro_batch_size must be >= 1"):
        UpdateSettings(micro_batch_size=0)


def grpo_experience(seed: int = 0, uniform_groups: tuple[int, ...] = (1,)):
    """Three GRPO groups of four completions sharing their prompt; the groups in
    ``uniform_groups`` have advantage 0 on every row (all rewards equal)."""
    g = torch.Generator().manual_seed(seed)
    prompts, completions, advantages, old = [], [], [], []
    for group in range(3):
        prompt = torch.randint(3, 60, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(4):
            c = torch.randint(3, 60, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist()
            prompts.append(prompt)
            completions.append(c)
            advantages.append(torch.tensor(0.0) if group in uniform_groups else torch.randn((), generator=g))
            old.append((-torch.rand(len(c), generator=g) * 4).tolist())
    return pack_sequences(prompts, completions, 0, advantages=advantages, old_logprobs=old)


def _positions_run(model) -> list[int]:
    """Token positions (rows × columns) of every call of the model's transformer body."""
    seen: list[int] = []
    model.model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True)
    return seen


@pytest.mark.parametrize("minibatch_size", [12, 4])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_shared_prompts_and_skipped_rows_give_the_plain_update(aggregation, minibatch_size):
    """share_prompts and skip_zero_advantage change the work, not the update: the weights after
    the step equal those of the plain update, and the body runs on fewer positions. With three
    minibatches the behaviour log-probs are computed first, for the trained rows only."""
    model = build_tiny_model("qwen2", seed=1)
    exp = grpo_experience()
    base = dict(minibatch_size=minibatch_size, aggregation=aggregation, grad_clip=0.0, micro_batch_size=5)
    plain = copy.deepcopy(model)
    plain_seen = _positions_run(plain)
    ppo_update(SGDHost(plain), plain, exp, UpdateSettings(**base, share_prompts=False, skip_zero_advantage=False),
               generator=torch.Generator().manual_seed(0))
    fast = copy.deepcopy(model)
    fast_seen = _positions_run(fast)
    ppo_update(SGDHost(fast), fast, exp, UpdateSettings(**base), generator=torch.Generator().manual_seed(0))
    assert sum(fast_seen) < 0.75 * sum(plain_seen)  # a third of the rows skipped, prompts run once
    moved = max((a - b).abs().max().item() for a, b in zip(plain.parameters(), model.parameters()))
    assert moved > 1e-3
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6, msg=name)


def test_a_step_with_no_signal_still_moves_adams_moments():
    """Every advantage 0: the plain update's gradients are exact zeros, and AdamW still steps
    with its moments from earlier steps; skipping every row must do the same (zero gradients,
    not missing ones, which AdamW would skip)."""
    model = build_tiny_model("qwen2", seed=1)
    signal, silent = grpo_experience(uniform_groups=()), grpo_experience(seed=1, uniform_groups=(0, 1, 2))
    results = []
    for skip in (False, True):
        trained = copy.deepcopy(model)
        host = SGDHost(trained)
        host.optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-2)
        settings = UpdateSettings(minibatch_size=12, grad_clip=0.0, skip_zero_advantage=skip)
        for exp in (signal, silent):
            ppo_update(host, trained, exp, settings, generator=torch.Generator().manual_seed(0))
        results.append(trained)
    for (name, a), b in zip(results[0].named_parameters(), results[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_rows_with_a_kl_term_are_never_skipped():
    model = build_tiny_model("qwen2", seed=1)
    ref = build_tiny_model("qwen2", seed=2)
    exp = grpo_experience(uniform_groups=(0, 1, 2))
    base = dict(minibatch_size=12, grad_clip=0.0, kl_coef=0.1)
    a, _ = updated(model, exp, UpdateSettings(**base), ref)
    b, _ = updated(model, exp, UpdateSettings(**base, skip_zero_advantage=False), ref)
    moved = max((x - y).abs().max().item() for x, y in zip(a.parameters(), model.parameters()))
    assert moved > 1e-4  # the KL term alone trains every row
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=2e-6)


def test_the_update_takes_log_probs_at_the_experiences_sampling_temperature():
    """An experience sampled at temperature 0.5 is scored at 0.5 (PolicyModule and the tree
    step set it from the sampling settings): behaviour and training log-probs then agree."""
    from lit_attn.logprobs import token_logprobs
    from lit_attn.ppo import completion_logprobs

    model = build_tiny_model("qwen2", seed=1)
    exp = grpo_experience()
    exp.temperature = 0.5
    for share in (True, False):
        lp, _ = completion_logprobs(model, exp, UpdateSettings(share_prompts=share))
        ref, _ = token_logprobs(model, exp.input_ids, exp.attention_mask, temperature=0.5)
        ref = ref[:, exp.prompt_length - 1 : exp.prompt_length - 1 + lp.shape[1]]
        valid = exp.completion_mask[:, : lp.shape[1]].bool()
        torch.testing.assert_close(lp[valid], ref[valid], rtol=1e-5, atol=1e-5)
        plain, _ = token_logprobs(model, exp.input_ids, exp.attention_mask)
        plain = plain[:, exp.prompt_length - 1 : exp.prompt_length - 1 + lp.shape[1]]
        assert (lp[valid] - plain[valid]).abs().max() > 1e-3  # temperature 1 would give other numbers


def test_the_reference_policy_is_one_parameter(tiny_model_dir):
    """The update receives the KL reference as one callable (issue 22: it was ``ref_model`` and
    ``ref_context``); the policy hands it the frozen copy with a KL term, nothing without."""
    import inspect

    from lit_attn.policy import PolicyModule

    parameters = inspect.signature(ppo_update).parameters
    assert "reference" in parameters and not {"ref_model", "ref_context"} & set(parameters)
    without = PolicyModule(name_or_path=str(tiny_model_dir), update=UpdateSettings(minibatch_size=4))
    assert without.reference() is None
    with_kl = PolicyModule(name_or_path=str(tiny_model_dir), update=UpdateSettings(minibatch_size=4, kl_coef=0.01))
    with with_kl.reference()() as ref_model:
        assert ref_model is with_kl.ref_model and not ref_model.training  # run in eval mode
    assert with_kl.ref_model.training  # and back in train mode, as a module of the LightningModule
