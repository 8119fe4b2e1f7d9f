"""The warm-start command that made the shipped model, run short."""

from __future__ import annotations

from pathlib import Path

import torch

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_attn.cli import main
from lit_attn.models import load_policy
from lit_attn.sampling import generate


def test_sft_command_trains_and_exports_a_loadable_policy(tmp_path):
    export = tmp_path / "model"
    config = tmp_path / "short.yaml"
    config.write_text(
        f"""
trainer:
  callbacks:
    - class_path: lit_attn.callbacks.ExportPolicy
      init_args:
        dirpath: {export}
"""
    )
    rc = main([
        "sft", "--config=lit_attn/configs/sft.yaml", f"--config={config}",
        "--trainer.max_steps=40", "--trainer.val_check_interval=40", "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--model.hidden_size=32", "--model.num_layers=2", "--model.intermediate_size=64",
        "--model.batch_size=16", "--model.warmup_steps=1", "--model.val_max_new_tokens=8",
        "--data.val_size=4", "--data.val_sets=[1op_8d, long_50]", "--model.context_hygiene_from=30",
    ])
    assert rc == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (export / name).is_file(), name
        assert (export / name).stat().st_mode & 0o044 == 0o044, name  # readable by others, like any file
    assert export.stat().st_mode & 0o055 == 0o055

    events = next(Path(tmp_path).rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    loss = [e.value for e in acc.Scalars("train/loss")]
    assert loss[-1] < loss[0] - 0.3, loss  # a fresh model learns the character distribution fast
    lookup = [e.value for e in acc.Scalars("train/lookup_loss") if e.step < 30]
    assert lookup[-1] < lookup[0] - 0.3, lookup  # the supervised head moves onto the looked-up facts
    hygiene = acc.Scalars("train/context_hygiene_loss")
    assert min(e.step for e in hygiene) >= 30  # context hygiene starts at model.context_hygiene_from
    tags = acc.Tags()["scalars"]
    for name in ("1op_8d", "long_50"):
        for metric in ("pass@1", "lookup_accuracy", "fact_attention", "fact_attention_all_heads"):
            assert f"val/{name}/{metric}" in tags, (name, metric)
    assert "val/pass@1" in tags

    model, tokenizer = load_policy(export)
    out = generate(model, tokenizer, ["a=1\nb=2\na+b?\n\n"], max_new_tokens=6, do_sample=False)
    assert len(out.completions) == 1


def _short_sft(tmp_path: Path, name: str, seed: int) -> Path:
    export = tmp_path / name
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"trainer:\n  callbacks:\n    - class_path: lit_attn.callbacks.ExportPolicy\n      init_args:\n        dirpath: {export}\n"
    )
    rc = main([
        "sft", "--config=lit_attn/configs/sft.yaml", f"--config={config}", f"--seed_everything={seed}", f"--model.seed={seed}",
        f"--data.seed={seed}", "--trainer.max_steps=6", "--trainer.val_check_interval=6", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path / name}-root", "--trainer.enable_checkpointing=false",
        "--model.hidden_size=32", "--model.num_layers=2", "--model.intermediate_size=64", "--model.batch_size=8",
        "--model.val_max_new_tokens=4", "--data.val_size=2", "--data.val_sets=[1op_8d]",
        "--data.recall_steps=2", "--data.ramp_steps=2",
    ])
    assert rc == 0
    return export / "model.safetensors"


def test_sft_is_reproducible_for_a_seed(tmp_path):
    from safetensors.torch import load_file

    first, again, other = (load_file(_short_sft(tmp_path, n, s)) for n, s in (("a", 3), ("b", 3), ("c", 4)))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_the_hygiene_phase_has_its_own_learning_rate_after_the_schedule():
    from lightning import Trainer

    from lit_attn.sft import SFTModule

    module = SFTModule(
        hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32, lr=1e-3, warmup_steps=2,
        schedule="cosine", context_hygiene=1.0, context_hygiene_from=10, context_hygiene_lr=3e-4, lookup_layer=0,
    )
    module.trainer = Trainer(max_steps=14, logger=False)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert abs(rates[2] - 1e-3) < 1e-12  # warm-up done: the peak
    assert 1e-4 < rates[9] < 1.5e-4  # the cosine nears its 10% floor at context_hygiene_from, not at max_steps
    assert all(abs(r - 3e-4) < 1e-12 for r in rates[10:])
