"""Command line: ``python -m lit_attn fit | validate | test | predict | sft | attribute``.

``fit`` and friends are Lightning's own subcommands over :class:`PolicyModule` and
:class:`PromptDataModule`; with no ``--config`` they run the embedded default
(lit_attn/configs/default.yaml, shipped inside the package). ``sft`` is the warm start that
produced the shipped model. A shipped config may be named without its folder (``--config
grpo.yaml``) when the working directory has no file of that name. Examples::

    python -m lit_attn fit                                        # embedded default, CPU-friendly
    python -m lit_attn fit --config lit_attn/configs/grpo.yaml    # GRPO recipe (or --config grpo.yaml)
    python -m lit_attn fit --print_config                         # the full, commented config
    python -m lit_attn sft --config lit_attn/configs/sft.yaml     # rebuild the shipped model
    python -m lit_attn attribute --input examples.jsonl           # which context texts drove each answer

Bad input ends with one line ``error: <problem>; <fix>`` on stderr and exit status 2.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from jsonargparse import ArgumentError
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_attn.checkpoints import AtomicCheckpointIO, find_last_checkpoint, read_checkpoint
from lit_attn.config_files import flatten_nested_configs, packaged_config
from lit_attn.data import PromptDataModule, WarmStartDataModule
from lit_attn.errors import UserError
from lit_attn.policy import PolicyModule
from lit_attn.preemption import Preemption
from lit_attn.preflight import PreflightCLI
from lit_attn.resume import check_resume
from lit_attn.sft import SFTModule

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class CheckpointingCLI(LightningCLI):
    """LightningCLI whose checkpoints are written atomically (:class:`AtomicCheckpointIO`), whose
    runs save ``last.ckpt`` and exit with status 143 on SIGTERM (:class:`Preemption`), and which
    checks ``--ckpt_path`` before the run writes anything (docs/reliability.md, "Checkpoints,
    preemption and resume")."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        plugins = _as_list(kwargs.get("plugins", config.get("plugins")))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):  # a user's own CheckpointIO is kept
            plugins.append(AtomicCheckpointIO())
        callbacks = _as_list(kwargs.get("callbacks", config.get("callbacks")))
        if not any(isinstance(callback, Preemption) for callback in callbacks):
            callbacks.append(Preemption())
        return super().instantiate_trainer(**{**kwargs, "plugins": plugins, "callbacks": callbacks})

    def _parse_ckpt_path(self) -> None:
        """Recent Lightning releases parse ``--ckpt_path``'s saved model hyper-parameters over the
        command line here, silently, and only for a file (not for ``last``). In lit_attn the settings
        given are the settings used; :meth:`check_checkpoint` warns about each that differs."""

    def check_checkpoint(self, stage: str) -> None:
        """Resolve ``--ckpt_path last``, then refuse a broken checkpoint or one of another model, and
        warn about changed settings — all before the Trainer writes anything."""
        path = check_checkpoint_path(self.config[self.subcommand].get("ckpt_path"), self.trainer)
        if path is None or not Path(path).is_file():  # none, or Lightning's "best" / "hpc" / registry
            return
        checkpoint = read_checkpoint(path, resume=stage == "fit")
        check_resume(checkpoint, path, self.model, self.datamodule, fitting=stage == "fit")
        for config in (self.config, self.config_init):  # what runs, and what config.yaml records
            config[self.subcommand]["ckpt_path"] = path
        # A resumed run writes to a version folder of its own: its ModelCheckpoint starts afresh there, as meant.
        warnings.filterwarnings("ignore", message="The dirpath has changed from")


def _as_list(value: Any) -> list:
    """A trainer argument that takes one item or a list (``plugins``, ``callbacks``) as a new list."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


class PolicyCLI(CheckpointingCLI):
    """LightningCLI with the validation batch-size link of lit_attn and input checks before any run
    (the training batch is the module's ``sampling.prompts_per_step``, read by the data module)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.evaluation.batch_size", "data.val_batch_size")

    def _check(self, stage: str) -> None:
        # Before the Trainer writes anything (config.yaml, logs): bad data fails with nothing on disk.
        self.check_checkpoint(stage)
        self.datamodule.setup(stage)
        self.model.check_data(self.datamodule, stage)

    def before_fit(self) -> None:
        self._check("fit")

    def before_validate(self) -> None:
        self._check("validate")

    def before_test(self) -> None:
        self._check("test")

    def before_predict(self) -> None:
        self._check("predict")


def check_checkpoint_path(path: str | None, trainer: Trainer) -> str | None:
    """``--ckpt_path`` resolved: ``last`` is the newest ``last.ckpt`` of this run's logger
    ``save_dir/name`` across its version folders (:func:`find_last_checkpoint`); Lightning's other
    aliases (``best``, ``hpc``, ``registry:…``) pass through; anything else must be a file."""
    if path is None:
        return None
    if str(path) == "last":
        return find_last_checkpoint(trainer)
    if str(path) in ("best", "hpc", "registry") or str(path).startswith("registry:"):
        return str(path)
    if not Path(path).is_file():
        raise UserError(
            f"checkpoint not found: {path}; pass an existing .ckpt file (e.g. runs/default/version_0/checkpoints/"
            "last.ckpt) or --ckpt_path=last for the newest last.ckpt of this run's logger name, in any version folder"
        )
    return str(path)


class SFTCLI(CheckpointingCLI):
    """LightningCLI of the warm start."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.batch_size", "data.batch_size")
        parser.link_arguments("model.val_batch_size", "data.val_batch_size")
        parser.link_arguments("model.context_hygiene_from", "data.absent_from")

    def before_fit(self) -> None:
        self.check_checkpoint("fit")


USAGE = """usage: python -m lit_attn {fit,validate,test,predict,sft,attribute} [options]

  fit         train a policy with RL (GRPO; AttnRL / TreeRL with --config attnrl.yaml, treerl.yaml)
  validate    held-out pass@1 of a policy or checkpoint
  test        pass@1 on the test split
  predict     greedy answers to the prediction prompts, written as JSONL
  sft         the warm start that built the shipped model (--config sft.yaml)
  attribute   which context texts drove each answer (AttnTrace), from a JSONL file

`--config NAME.yaml` with no folder runs a shipped config (lit_attn/configs/) when the working
directory has no file of that name. `python -m lit_attn <command> --help` lists a command's options;
`fit --print_config` prints the full default configuration. Docs: docs/README.md."""


def _parser_kwargs(default_config: Path) -> dict:
    common = {"parser_mode": "omegaconf", "exit_on_error": False, "prog": "python -m lit_attn"}
    kwargs = {sub: {**common, "default_config_files": [str(default_config)]} for sub in SUBCOMMANDS}
    kwargs.update(common)
    return kwargs


class CheckedPolicyCLI(PreflightCLI, PolicyCLI):
    """:class:`PolicyCLI` whose trainer settings and output folders are checked once the command
    line is parsed, before the model, the data or the Trainer is built (:mod:`lit_attn.preflight`)."""


class CheckedSFTCLI(PreflightCLI, SFTCLI):
    """:class:`SFTCLI` with the same checks as :class:`CheckedPolicyCLI` (automatic optimisation)."""

    rl_training = False


def run(argv: list[str]) -> None:
    """Run one CLI invocation (raises instead of exiting on bad input)."""
    torch.set_float32_matmul_precision("high")
    # We always pass args explicitly (main() is also called from tests); Lightning warns about that.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning internals vs newer torch
    # Our checkpoints are meant to hold the weights after each RL step's update.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in our output
    if argv and argv[0] == "attribute":
        from lit_attn.attribution.cli import run_attribute

        run_attribute(argv[1:])
        return
    argv = flatten_nested_configs(argv)  # a user's config on top of attnrl.yaml (itself on default.yaml)
    if argv and argv[0] == "sft":
        CheckedSFTCLI(
            SFTModule, WarmStartDataModule, args=["fit", *argv[1:]],
            parser_kwargs=_parser_kwargs(packaged_config("sft.yaml")),
            save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
        )
        return
    CheckedPolicyCLI(
        PolicyModule, PromptDataModule, args=argv,
        parser_kwargs=_parser_kwargs(packaged_config("default.yaml")),
        save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    try:
        run(argv)
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except ArgumentError as err:
        sub = argv[0] if argv and argv[0] in (*SUBCOMMANDS, "sft") else "fit"
        message = " ".join(str(err).split())
        print(f"error: {message}; `python -m lit_attn {sub} --help` lists the valid options", file=sys.stderr)
        return 2
    return 0


def main_exit() -> None:
    """Console-script entry point ``lit-attn``."""
    sys.exit(main())
