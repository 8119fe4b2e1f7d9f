"""ExportPolicy: write the trained policy with ``save_pretrained`` when fitting ends.

Contract with the LightningModule: it has ``model`` (a transformers ``PreTrainedModel``, or a
PEFT model) and ``tokenizer`` attributes (names configurable). LoRA training (a ``PeftModel``
at ``model``, or at the module's ``peft_model`` as :class:`~lit_attn.PolicyModule` keeps it)
exports the adapters (``adapter_config.json`` + ``adapter_model.safetensors``), and with
``merged: true`` also the merged full model under ``merged/``. The export is written to a
temporary folder beside the target and moved into place, so a failure never leaves a
half-written model.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

from lightning import Callback, LightningModule, Trainer


class ExportPolicy(Callback):
    """Save ``model`` and ``tokenizer`` in Hugging Face format at the end of ``fit``.

    Args:
        dirpath: target directory; None = ``<run log dir>/policy``. An existing directory is
            replaced.
        model_attr: the module attribute holding the model.
        tokenizer_attr: the module attribute holding the tokenizer.
        merged: LoRA runs: also save the model with the adapters merged in, under ``merged/``
            (loadable with ``from_pretrained`` and by ``--model.name_or_path``).
    """

    def __init__(
        self, dirpath: str | None = None, model_attr: str = "model", tokenizer_attr: str = "tokenizer",
        merged: bool = False,
    ) -> None:
        self.dirpath = dirpath
        self.merged = merged
        self.model_attr = model_attr
        self.tokenizer_attr = tokenizer_attr
        self.last_export: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for attr in (self.model_attr, self.tokenizer_attr):
            if not hasattr(pl_module, attr):
                raise AttributeError(
                    f"ExportPolicy needs the LightningModule to have a `{attr}` attribute; "
                    f"{type(pl_module).__name__} has none — set model_attr / tokenizer_attr"
                )

    def target(self, trainer: Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "policy"

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        target = self.target(trainer)  # on every rank: finding the log dir is a collective call
        if trainer.is_global_zero:
            self._export(pl_module, target)
        trainer.strategy.barrier("ExportPolicy")  # no rank leaves (closing the group) mid-export

    def _export(self, pl_module: LightningModule, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
        try:
            model = getattr(pl_module, self.model_attr)
            peft = getattr(pl_module, "peft_model", None) or (model if hasattr(model, "merge_and_unload") else None)
            tokenizer = getattr(pl_module, self.tokenizer_attr)
            if peft is None:
                model.save_pretrained(staging, safe_serialization=True)
            else:
                peft.save_pretrained(staging, safe_serialization=True)  # the adapters only
                if self.merged:
                    copy.deepcopy(peft).merge_and_unload().save_pretrained(staging / "merged", safe_serialization=True)
                    tokenizer.save_pretrained(staging / "merged")
            tokenizer.save_pretrained(staging)
            # mkdtemp makes the folder private (0700) and some writers make private files:
            # give the export the permissions of a normally created folder.
            mask = os.umask(0)
            os.umask(mask)
            staging.chmod(0o777 & ~mask)
            for path in staging.rglob("*"):
                path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        self.last_export = target
        print(f"policy exported to {target}")
