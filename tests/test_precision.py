"""bf16 autocast and gradient checkpointing, as options a user turns on from the CLI."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from lit_attn import PolicyModule
from lit_attn.cli import main
from lit_attn.experience import pack_sequences
from lit_attn.settings import UpdateSettings
from lit_attn.ppo import completion_logprobs
from lit_attn.settings import SamplingSettings


def test_gradient_checkpointing_gives_the_same_gradient(tiny_model_dir):
    exp = pack_sequences([[5, 6, 7], [8, 9]], [[10, 11, 12], [13, 14]], 0, advantages=[torch.tensor(1.0)] * 2)
    grads = []
    for checkpointing in (False, True):
        module = PolicyModule(name_or_path=str(tiny_model_dir), sampling=SamplingSettings(prompts_per_step=2, group_size=2),
                              update=UpdateSettings(minibatch_size=4),
                              gradient_checkpointing=checkpointing)
        assert module.model.is_gradient_checkpointing == checkpointing
        lp, _ = completion_logprobs(module.model, exp, UpdateSettings())
        lp.sum().backward()
        grads.append([p.grad.clone() for p in module.model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_fit_with_bf16_autocast_and_checkpointing_on_cpu(tiny_model_dir, reward_module, tmp_path):
    rc = main([
        "fit", f"--model.name_or_path={tiny_model_dir}", "--model.sampling.prompts_per_step=2", "--model.sampling.group_size=4",
        "--model.update.minibatch_size=8", "--model.update.micro_batch_size=3", "--model.sampling.max_new_tokens=12", "--model.evaluation.batch_size=4",
        "--model.optimizer.lr=0.01", f"--model.rewards.functions=[{reward_module}]", "--model.gradient_checkpointing=true",
        "--data.train_size=40", "--data.val_size=4", "--data.num_texts=0", "--data.num_ops=1", "--data.num_distractors=2",
        "--trainer.precision=bf16-mixed", "--trainer.accelerator=cpu", "--trainer.max_steps=3",
        "--trainer.val_check_interval=3", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ])
    assert rc == 0
    trained = AutoModelForCausalLM.from_pretrained(next(tmp_path.rglob("policy")))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert trained.dtype == torch.float32  # master weights stay fp32 under autocast
    moved = [not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters())]
    assert any(moved)
    assert all(torch.isfinite(p).all() for p in trained.parameters())
