"""LoRA through PEFT: only the adapters train, the KL reference is the model with its adapters
off, the export holds the adapters (and the merged model), and FCI / AttnTrace read a PEFT
model exactly as they read the merged one."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from lightning import LightningModule, Trainer
from transformers import AutoModelForCausalLM

pytest.importorskip("peft")

from lit_attn import PolicyModule  # noqa: E402
from lit_attn.attention import fci_scores_batch, split_steps  # noqa: E402
from lit_attn.attribution import attribute  # noqa: E402
from lit_attn.cli import main  # noqa: E402
from lit_attn.experience import pack_sequences  # noqa: E402
from lit_attn.lora import add_adapters  # noqa: E402
from lit_attn.models import load_policy  # noqa: E402
from lit_attn.ppo import batched_completion_logprobs  # noqa: E402
from lit_attn.settings import LoraSettings, SamplingSettings, UpdateSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def peft_with_nonzero_adapters(model_dir: Path):
    """A PEFT model whose adapters change the outputs (PEFT starts lora_B at zero)."""
    model, tokenizer = load_policy(model_dir)
    peft = add_adapters(model, LoraSettings(rank=4, alpha=8.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return peft, tokenizer


def test_lora_config_trains_only_adapters_and_exports_adapters_and_merged_model(tiny_model_dir, reward_module, tmp_path):
    config = yaml.safe_load((ROOT / "lit_attn" / "configs" / "lora.yaml").read_text())
    assert config["model"]["lora"]["rank"] >= 1 and config["model"]["update"]["kl_coef"] > 0
    rc = main([
        "fit", "--config", str(ROOT / "lit_attn" / "configs" / "lora.yaml"),
        f"--model.name_or_path={tiny_model_dir}", "--model.sampling.prompts_per_step=2", "--model.sampling.group_size=4",
        "--model.update.minibatch_size=8", "--model.sampling.max_new_tokens=12", "--model.evaluation.batch_size=4", "--model.optimizer.lr=0.05",
        f"--model.rewards.functions=[{reward_module}]", "--model.evaluation.validate_at_start=false",
        "--data.train_size=40", "--data.val_size=4", "--data.num_texts=0", "--data.num_ops=1", "--data.num_distractors=2",
        "--trainer.max_steps=3", "--trainer.val_check_interval=3",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
    ])
    assert rc == 0
    policy = next(tmp_path.rglob("policy"))
    assert (policy / "adapter_config.json").exists() and (policy / "adapter_model.safetensors").exists()
    assert not (policy / "model.safetensors").exists()  # the adapters, not a full copy
    merged = AutoModelForCausalLM.from_pretrained(policy / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # the adapters trained, the base weights did not: merged = base + B·A on the adapted layers only
    changed = {n for (n, a), b in zip(merged.named_parameters(), base.parameters()) if not torch.equal(a, b)}
    assert changed and all("proj" in n or "fc" in n or "attn" in n or "mlp" in n for n in changed)
    assert torch.equal(merged.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_kl_reference_is_the_model_with_adapters_off_and_no_second_copy(tiny_model_dir):
    module = PolicyModule(
        name_or_path=str(tiny_model_dir), sampling=SamplingSettings(prompts_per_step=2, group_size=2),
        update=UpdateSettings(minibatch_size=4, kl_coef=0.01), lora=LoraSettings(rank=4),
    )
    assert module.ref_model is None and module.peft_model is not None
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = module.configure_optimizers()
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) < sum(
        p.numel() for p in module.model.parameters()) / 2
    with torch.no_grad():  # make the adapters matter
        for name, param in module.model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.2)
    exp = pack_sequences([[5, 6, 7], [8, 9]], [[10, 11, 12], [13]], 0, advantages=[torch.tensor(1.0)] * 2)
    settings = UpdateSettings()
    with module.peft_model.disable_adapter():
        off = batched_completion_logprobs(module.model, exp, settings)
    on = batched_completion_logprobs(module.model, exp, settings)
    base, _ = load_policy(tiny_model_dir)
    reference = batched_completion_logprobs(base, exp, settings)
    torch.testing.assert_close(off, reference)
    assert not torch.allclose(on, reference)
    with module.reference()() as ref_model:  # what the update receives: the same model, adapters off
        assert ref_model is module.model
        torch.testing.assert_close(batched_completion_logprobs(ref_model, exp, settings), reference)
    torch.testing.assert_close(batched_completion_logprobs(module.model, exp, settings), on)  # adapters back on


def test_fci_and_attntrace_through_peft_equal_the_merged_model(tiny_model_dir):
    peft, tokenizer = peft_with_nonzero_adapters(tiny_model_dir)
    merged = copy.deepcopy(peft).merge_and_unload()
    text = "a=1\nb=2\na+b?\n\na=1\n\nb=2\n\n1+2=3\n\n3"
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    spans = [split_steps(ids[0].tolist(), tokenizer, "\n\n", prompt_length=8)]
    through_peft = fci_scores_batch(peft, ids, torch.ones_like(ids), spans, min_gap=1)
    through_merged = fci_scores_batch(merged, ids, torch.ones_like(ids), spans, min_gap=1)
    torch.testing.assert_close(through_peft[0], through_merged[0], rtol=1e-4, atol=1e-6)
    assert through_peft[0].abs().sum() > 0

    contexts = ["a=1", "b=2", "c=5", "d=7"]
    kwargs = dict(method="attntrace", num_subsamples=4, max_new_tokens=4, seed=0)
    a = attribute(peft, tokenizer, contexts, "a+b?", "3", **kwargs)
    b = attribute(merged, tokenizer, contexts, "a+b?", "3", **kwargs)
    assert a.scores == pytest.approx(b.scores, rel=1e-4, abs=1e-6)


class HostsAPeftModel(LightningModule):
    """A user's module that holds the PEFT model itself in ``model``."""

    def __init__(self, peft, tokenizer) -> None:
        super().__init__()
        self.model, self.tokenizer = peft, tokenizer
        self.group_size, self.max_new_tokens, self.temperature = 2, 4, 1.0
        self.experience_source = None

    def score(self, records, completions):
        return torch.zeros(len(completions))


def test_both_callbacks_accept_a_peft_model(tiny_model_dir):
    from lit_attn.callbacks import AttentionBranchCallback, AttributionCallback

    peft, tokenizer = peft_with_nonzero_adapters(tiny_model_dir)
    module = HostsAPeftModel(peft, tokenizer)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    AttentionBranchCallback(min_gap=1).setup(trainer, module, "fit")
    examples = [{"contexts": ["a=1", "b=2"], "question": "a+b?", "relevant": [0, 1]}]
    AttributionCallback(examples=examples, k=1, num_subsamples=2, max_new_tokens=2).setup(trainer, module, "fit")
