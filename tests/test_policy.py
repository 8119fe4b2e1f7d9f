"""PolicyModule pieces: group advantages, batch arithmetic, rollout packing, resume state."""

from __future__ import annotations


import pytest
import torch

from lit_attn.errors import UserError
from lit_attn.policy import PolicyModule, check_batch_arithmetic, group_advantages
from lit_attn.settings import EvaluationSettings, OptimizerSettings, RewardsSettings, SamplingSettings, UpdateSettings
from lit_attn.sampling import generate
from lit_attn.tokenizer import build_char_tokenizer

SMALL = SamplingSettings(prompts_per_step=2, group_size=2)


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, 4)
    # group 1: mean 0.25, sample std sqrt(((0.75)^2 + 3·(0.25)^2)/3) = 0.5
    assert torch.allclose(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    # group 2: all equal → zero advantage (not NaN)
    assert torch.equal(adv[4:], torch.zeros(4))
    unscaled = group_advantages(rewards, 4, scale=False)
    assert torch.allclose(unscaled[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_group_advantages_skip_nan_rewards():
    rewards = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    adv = group_advantages(rewards, 4, scale=False)
    # mean over the three scored samples = 1/3; the skipped one gets 0
    assert torch.allclose(adv, torch.tensor([2 / 3, 0.0, -1 / 3, -1 / 3]))


def test_batch_arithmetic_is_checked_with_the_fix():
    check_batch_arithmetic(SamplingSettings(group_size=8, prompts_per_step=16), minibatch_size=32)
    with pytest.raises(UserError, match=r"16 × 8 = 128 .* use 32 or 64"):
        check_batch_arithmetic(SamplingSettings(group_size=8, prompts_per_step=16), minibatch_size=48)
    with pytest.raises(UserError, match="group_size"):
        SamplingSettings(group_size=1, prompts_per_step=16)


def test_generate_groups_rows_by_prompt_and_is_seeded(tiny_model_dir):
    from lit_attn.models import load_policy

    model, tok = load_policy(tiny_model_dir)
    first = generate(model, tok, ["a=1\n", "b=22\n"], num_samples=3, max_new_tokens=5, generator_seed=7)
    second = generate(model, tok, ["a=1\n", "b=22\n"], num_samples=3, max_new_tokens=5, generator_seed=7)
    assert first.completions == second.completions
    assert first.input_ids.shape[0] == 6
    prompts = tok.batch_decode(first.input_ids[:, : first.prompt_length], skip_special_tokens=True)
    assert prompts == ["a=1\n"] * 3 + ["b=22\n"] * 3


def test_checkpoint_state_round_trip(tiny_model_dir):
    module = PolicyModule(name_or_path=str(tiny_model_dir), sampling=SMALL, update=UpdateSettings(minibatch_size=4))
    module.tokens_generated = 1234
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)

    restored = PolicyModule(name_or_path=str(tiny_model_dir), sampling=SMALL, update=UpdateSettings(minibatch_size=4))
    restored.on_load_checkpoint(checkpoint)
    assert restored.tokens_generated == 1234


def test_kl_reference_model_only_loaded_when_needed(tiny_model_dir):
    without = PolicyModule(name_or_path=str(tiny_model_dir), sampling=SMALL, update=UpdateSettings(minibatch_size=4))
    assert without.ref_model is None
    with_kl = PolicyModule(
        name_or_path=str(tiny_model_dir), sampling=SMALL, update=UpdateSettings(minibatch_size=4, kl_coef=0.01)
    )
    assert with_kl.ref_model is not None
    assert not any(p.requires_grad for p in with_kl.ref_model.parameters())


def test_saved_char_tokenizer_round_trips_through_load_policy(tiny_model_dir):
    from lit_attn.models import load_policy

    _, loaded = load_policy(tiny_model_dir)
    fresh = build_char_tokenizer()
    for text in ["a=1\n", "k=7\nq+k=?\n\n", "  spaced  \n\nanswer 3"]:
        assert loaded(text)["input_ids"] == fresh(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text


def test_grpo_kill_and_resume_continues_exactly(tiny_model_dir, reward_module, tmp_path):
    from lightning import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_attn import PolicyModule, PromptDataModule

    def run(steps, ckpt_dir=None, ckpt_in=None):
        torch.manual_seed(123 if ckpt_in is None else 456)  # the global RNG must not matter
        module = PolicyModule(
            name_or_path=str(tiny_model_dir), sampling=SamplingSettings(group_size=4, prompts_per_step=2, max_new_tokens=10),
            update=UpdateSettings(minibatch_size=4), optimizer=OptimizerSettings(lr=0.01),
            evaluation=EvaluationSettings(validate_at_start=False), rewards=RewardsSettings([reward_module]),
        )
        data = PromptDataModule(train_size=40, val_size=4, num_distractors=0, num_ops=1)
        callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=4, save_top_k=-1)] if ckpt_dir else []
        trainer = Trainer(
            max_steps=steps, callbacks=callbacks, logger=False, limit_val_batches=0, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", devices=1, enable_checkpointing=bool(ckpt_dir),
        )
        trainer.fit(module, data, ckpt_path=ckpt_in)
        return module

    straight = run(8, ckpt_dir=tmp_path)  # two minibatches per step: 4 RL steps
    resumed = run(8, ckpt_in=next(tmp_path.glob("*step=4*.ckpt")))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resume")


def test_the_grpo_config_trains_with_several_minibatches_and_a_kl_term(tiny_model_dir, reward_module):
    """lit_attn/configs/grpo.yaml's update (several minibatches per RL step, k3 KL to a frozen reference
    model), shrunk to the tiny model: every minibatch is an optimiser step, the second one of a
    step sees a moved policy (ratio ≠ 1, so the clip statistics are live), and the KL grows
    from 0 as the policy leaves the reference."""
    from pathlib import Path

    from lightning import Callback, Trainer

    from lit_attn import PromptDataModule
    from lit_attn.config_files import load_config

    shipped = load_config(Path(__file__).resolve().parents[1] / "lit_attn" / "configs" / "grpo.yaml")["model"]
    update = UpdateSettings(**{**shipped["update"], "minibatch_size": 4})
    sampling = SamplingSettings(**{**shipped["sampling"], "prompts_per_step": 2, "max_new_tokens": 10})
    assert update.kl_coef > 0 and sampling.completions_per_step // update.minibatch_size > 1
    module = PolicyModule(
        name_or_path=str(tiny_model_dir), sampling=sampling, update=update, optimizer=OptimizerSettings(lr=0.05),
        evaluation=EvaluationSettings(validate_at_start=False), rewards=RewardsSettings([reward_module]),
    )
    assert module.ref_model is not None
    reference = {k: v.clone() for k, v in module.ref_model.state_dict().items()}

    class Record(Callback):
        def __init__(self) -> None:
            self.steps: list[tuple[int, dict[str, float]]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.steps.append((trainer.global_step, {k: float(v) for k, v in trainer.callback_metrics.items()}))

    record = Record()
    updates_per_step = sampling.completions_per_step // update.minibatch_size
    trainer = Trainer(
        max_steps=3 * updates_per_step, callbacks=[record], logger=False, limit_val_batches=0, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1, enable_checkpointing=False,
    )
    data = PromptDataModule(train_size=40, val_size=4, num_distractors=0, num_ops=1)
    trainer.fit(module, data)
    assert [step for step, _ in record.steps] == [updates_per_step * (i + 1) for i in range(3)]
    metrics = [m for _, m in record.steps]
    assert all("kl" in m and "ratio_mean" in m for m in metrics)
    assert metrics[-1]["kl"] > 0.0 and metrics[-1]["kl"] > metrics[0]["kl"]
    assert any(abs(m["ratio_mean"] - 1.0) > 1e-6 for m in metrics)  # later minibatches see a moved policy
    for name, value in module.ref_model.state_dict().items():  # the reference stays frozen
        torch.testing.assert_close(value, reference[name], msg=name)
