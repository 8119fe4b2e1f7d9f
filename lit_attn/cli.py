"""Command line: ``python -m lit_attn fit | validate | test | predict | sft | attribute``.

``fit`` and friends are Lightning's own subcommands over :class:`PolicyModule` and
:class:`PromptDataModule`; with no ``--config`` they run the embedded default
(configs/default.yaml, shipped inside the package). ``sft`` is the warm start that produced
the shipped model. Examples::

    python -m lit_attn fit                               # embedded default, CPU-friendly
    python -m lit_attn fit --config configs/grpo.yaml    # GRPO recipe
    python -m lit_attn fit --print_config                # the full, commented config
    python -m lit_attn sft --config configs/sft.yaml     # rebuild the shipped model
    python -m lit_attn attribute --input examples.jsonl  # which context texts drove each answer

Bad input ends with one line ``error: <problem>; <fix>`` on stderr and exit status 2.
"""

from __future__ import annotations

import sys
import warnings
from importlib import resources
from pathlib import Path

import torch
import transformers
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_attn.data import PromptDataModule
from lit_attn.errors import UserError
from lit_attn.policy import PolicyModule
from lit_attn.sft import SFTModule
from lit_attn.warm_start import WarmStartDataModule

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def packaged_config(name: str) -> Path:
    """A YAML of the top-level configs/ folder, installed as the ``lit_attn.configs`` package."""
    return Path(str(resources.files("lit_attn.configs").joinpath(name)))


class PolicyCLI(LightningCLI):
    """LightningCLI with the batch-size links of lit_attn and input checks before any run."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.sampling.prompts_per_step", "data.prompts_per_step")
        parser.link_arguments("model.evaluation.batch_size", "data.val_batch_size")

    def _check(self, stage: str) -> None:
        # Before the Trainer writes anything (config.yaml, logs): bad data fails with nothing on disk.
        check_checkpoint_path(self.config[self.subcommand].get("ckpt_path"))
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


CHECKPOINT_ALIASES = ("last", "best", "hpc", "registry")


def check_checkpoint_path(path: str | None) -> None:
    """``--ckpt_path`` must name an existing file (or one of Lightning's aliases)."""
    if path is None or str(path) in CHECKPOINT_ALIASES or str(path).startswith("registry:"):
        return
    if not Path(path).is_file():
        raise UserError(
            f"checkpoint not found: {path}; pass an existing .ckpt file (e.g. runs/default/version_0/checkpoints/"
            "last.ckpt) or --ckpt_path=last for the newest checkpoint of this run directory"
        )


class SFTCLI(LightningCLI):
    """LightningCLI of the warm start."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.batch_size", "data.batch_size")
        parser.link_arguments("model.val_batch_size", "data.val_batch_size")
        parser.link_arguments("model.context_hygiene_from", "data.absent_from")


USAGE = """usage: python -m lit_attn {fit,validate,test,predict,sft,attribute} [options]

  fit         train a policy with RL (GRPO; AttnRL / TreeRL with configs/attnrl.yaml, treerl.yaml)
  validate    held-out pass@1 of a policy or checkpoint
  test        pass@1 on the test split
  predict     greedy answers to the prediction prompts, written as JSONL
  sft         the warm start that built the shipped model (configs/sft.yaml)
  attribute   which context texts drove each answer (AttnTrace), from a JSONL file

`python -m lit_attn <command> --help` lists a command's options; `fit --print_config` prints the
full default configuration. Docs: docs/README.md."""


def _parser_kwargs(default_config: Path) -> dict:
    common = {"parser_mode": "omegaconf", "exit_on_error": False, "prog": "python -m lit_attn"}
    kwargs = {sub: {**common, "default_config_files": [str(default_config)]} for sub in SUBCOMMANDS}
    kwargs.update(common)
    return kwargs


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
    if argv and argv[0] == "sft":
        SFTCLI(
            SFTModule, WarmStartDataModule, args=["fit", *argv[1:]],
            parser_kwargs=_parser_kwargs(packaged_config("sft.yaml")),
            save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
        )
        return
    PolicyCLI(
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
