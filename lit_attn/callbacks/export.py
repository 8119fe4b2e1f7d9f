"""ExportPolicy: write the trained policy with ``save_pretrained`` when fitting ends.

Contract with the LightningModule: it has ``model`` (a transformers ``PreTrainedModel``, or a
PEFT model) and ``tokenizer`` attributes (names configurable). LoRA training (a ``PeftModel``
at ``model``, or at the module's ``peft_model`` as :class:`~lit_attn.PolicyModule` keeps it)
exports the adapters (``adapter_config.json`` + ``adapter_model.safetensors``), and with
``merged: true`` also the merged full model under ``merged/``.

**Nothing of the user's is removed** (docs/reliability.md). Every export carries a marker file,
:data:`MARKER` (one line of JSON). The target folder must be new, empty, or a previous export
(it has the marker): anything else — a folder of other files, ``.``, a file — is refused at
``setup``, before training, in one line. The export is written to a staging folder beside the
target (``.export-<name>-XXXXXXXX``, marked first) and moved into place, so a failure never
leaves a half-written model; staging folders that a killed run left behind (marked or empty,
with that name) are removed.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lit_attn.errors import UserError
from lit_attn.files import publish_tree

MARKER = "lit_attn_export.json"
"""The file that marks a folder as an export of ours (no leading dot: package data globs skip dotfiles)."""
MARKER_TEXT = json.dumps({"lit_attn_export": 1, "written_by": "lit_attn.callbacks.ExportPolicy"}) + "\n"
_STAGING_SUFFIX = re.compile(r"[a-z0-9_]{8}(-old)?")  # tempfile.mkdtemp's 8 random characters


def is_export(path: Path) -> bool:
    """Whether ``path`` is a folder that an :class:`ExportPolicy` wrote (it holds :data:`MARKER`)."""
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def export_problem(target: Path) -> str | None:
    """Why ``target`` may not receive an export (it would have to be replaced), or None when it
    is free: missing, an empty folder, or a previous export."""
    if target.is_symlink():
        return "it is a symbolic link"
    if not target.exists():
        return None
    if not target.is_dir():
        return "it is a file, not a folder"
    if is_export(target) or not any(target.iterdir()):
        return None
    return f"it is not a previous export (it has files and no {MARKER})"


def _staging_prefix(target: Path) -> str:
    return f".export-{target.name}-"


def stale_staging(target: Path) -> list[Path]:
    """Staging folders of exports to ``target`` that a killed run left in its parent: named
    ``.export-<name>-XXXXXXXX`` and marked, or empty. Nothing else there is ours."""
    prefix = _staging_prefix(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    found = []
    for path in parent.iterdir():
        if not (path.name.startswith(prefix) and _STAGING_SUFFIX.fullmatch(path.name[len(prefix):])):
            continue
        if path.is_dir() and not path.is_symlink() and (is_export(path) or not any(path.iterdir())):
            found.append(path)
    return sorted(found)


class ExportPolicy(Callback):
    """Save ``model`` and ``tokenizer`` in Hugging Face format at the end of ``fit``.

    Args:
        dirpath: target directory; None = ``<run log dir>/policy``. It must be new, empty, or a
            previous export (it holds ``lit_attn_export.json``), which is then replaced;
            anything else is refused before training starts.
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
        if stage != "fit":
            return
        target = self.target(trainer)  # on every rank: finding the log dir is a collective call
        problem = None
        if trainer.is_global_zero:  # the rank that writes decides, and every rank stops alike
            problem = export_problem(target)
            if problem is None:
                _remove_stale(target)
        problem = trainer.strategy.broadcast(problem)
        if problem is not None:
            raise UserError(
                f"ExportPolicy will not replace {target}: {problem}; set its dirpath to a new or empty "
                "folder, or to a previous export"
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
        _remove_stale(target)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
        try:
            (staging / MARKER).write_text(MARKER_TEXT)  # first: a killed run's staging is recognisably ours
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
            publish_tree(staging)
            target = _move_into_place(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        self.last_export = target
        print(f"policy exported to {target}")


def _remove_stale(target: Path) -> None:
    for path in stale_staging(target):
        shutil.rmtree(path, ignore_errors=True)


def _move_into_place(staging: Path, target: Path) -> Path:
    """Rename the finished ``staging`` folder to ``target``; returns where the export is.

    A previous export is swapped out (renamed to a marked staging name) and removed only once
    the new one is in place. A target that, since ``setup``, has become something not ours is
    left alone: the export goes to the first free ``<target>-N`` beside it, with a warning."""
    problem = export_problem(target)
    if problem is not None:
        n = 1
        while target.with_name(f"{target.name}-{n}").exists() or target.with_name(f"{target.name}-{n}").is_symlink():
            n += 1
        moved = target.with_name(f"{target.name}-{n}")
        staging.rename(moved)
        rank_zero_warn(f"{target} changed during the run ({problem}): left alone; the policy is exported to {moved} instead")
        return moved
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if target.exists():  # a previous export of ours
        old = staging.with_name(staging.name + "-old")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
    return target
