"""AttentionBranchCallback hosted by a LightningModule lit_attn did not write: only the
documented contract (docs/attnrl.md, "Hosting the callback in your own RL module") and the
public update functions (the PPO update, or token log-probs and the policy loss)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_attn.callbacks import AttentionBranchCallback
from lit_attn.errors import UserError
from lit_attn.logprobs import token_logprobs
from lit_attn.loss import policy_loss
from lit_attn.ppo import ppo_update
from lit_attn.settings import UpdateSettings

PROMPTS = [{"prompt": "a=3\nb=4\na+b?\n\n", "answer": "7"}, {"prompt": "k=1\nm=5\nk+m?\n\n", "answer": "6"}]


class DigitRL(LightningModule):
    """A user's own RL module: rewards the share of digits in a completion."""

    def __init__(self, model_dir: Path, own_loss: bool = True) -> None:
        super().__init__()
        self.own_loss = own_loss
        self.automatic_optimization = False
        self.model = AutoModelForCausalLM.from_pretrained(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.group_size, self.max_new_tokens, self.temperature = 4, 12, 1.0
        self.experience_source = None

    def score(self, records: list[dict], completions: list[str]) -> torch.Tensor:
        return torch.tensor([sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions])

    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        experience = self.experience_source.make_experience(self, batch)
        if not self.own_loss:
            if experience.num_sequences:
                ppo_update(self, self.model, experience, UpdateSettings(minibatch_size=64, kl_coef=0.0))
            else:
                self.optimizers().step()
            return
        optimizer = self.optimizers()
        optimizer.zero_grad()
        if experience.num_sequences:
            lp, _ = token_logprobs(self.model, experience.input_ids, experience.attention_mask)
            lp = lp[:, experience.prompt_length - 1 :]
            loss, _ = policy_loss(lp, experience.old_logprobs, experience.advantages, experience.completion_mask.float())
            self.manual_backward(loss)
        optimizer.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=1e-2)


def loader() -> DataLoader:
    # every batch holds the same two prompts, so a resumed run sees what the uninterrupted one saw
    return DataLoader([PROMPTS] * 50, batch_size=None, collate_fn=lambda batch: batch)


def fit(model_dir: Path, steps: int, ckpt_dir: Path | None = None, ckpt_in: Path | None = None, own_loss: bool = True):
    torch.manual_seed(0)
    module = DigitRL(model_dir, own_loss)
    callback = AttentionBranchCallback(min_gap=1, seed=1, correct_threshold=0.1)
    callbacks: list = [callback]
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1))
    trainer = Trainer(
        max_steps=steps, callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", devices=1, enable_checkpointing=ckpt_dir is not None,
    )
    trainer.fit(module, loader(), ckpt_path=ckpt_in)
    return module, callback


def test_a_foreign_module_trains_three_steps_and_resumes_exactly(tiny_model_dir, tmp_path):
    before = {k: v.clone() for k, v in DigitRL(tiny_model_dir).model.state_dict().items()}
    straight, cb_straight = fit(tiny_model_dir, 4, ckpt_dir=tmp_path)
    assert cb_straight.rl_step == 4
    changed = any(not torch.equal(before[k], v) for k, v in straight.model.state_dict().items())
    assert changed, "three trained steps left the weights as they were"
    resumed, cb_resumed = fit(tiny_model_dir, 4, ckpt_in=next(tmp_path.glob("*step=2*.ckpt")))
    assert cb_resumed.rl_step == 4
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resume")
    assert cb_straight.state_dict()["pending"] == cb_resumed.state_dict()["pending"]


def test_setup_refuses_a_model_whose_attention_cannot_be_captured(tiny_model_dir):
    module = DigitRL(tiny_model_dir)
    module.model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(UserError, match="AttentionBranchCallback"):
        AttentionBranchCallback().setup(Trainer(logger=False), module, "fit")


def test_a_foreign_module_can_train_with_the_library_ppo_update(tiny_model_dir):
    before = {k: v.clone() for k, v in DigitRL(tiny_model_dir).model.state_dict().items()}
    module, callback = fit(tiny_model_dir, 3, own_loss=False)
    assert callback.rl_step == 3
    assert any(not torch.equal(before[k], v) for k, v in module.model.state_dict().items())
