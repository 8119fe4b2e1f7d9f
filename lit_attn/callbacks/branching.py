"""Tree exploration for RL training: AttnRL's AttentionBranchCallback and its baselines.

Add one of these to a run and the :class:`~lit_attn.PolicyModule` stops sampling plain GRPO
groups: every training step becomes the one-step off-policy schedule of docs/attnrl.md §5::

    python -m lit_attn fit --config lit_attn/configs/attnrl.yaml     # AttnRL (FCI branching + ADS)
    python -m lit_attn fit --config lit_attn/configs/treerl.yaml     # TreeRL (entropy branching)

Each step is :func:`lit_attn.exploration.step.explore_step` — take prompts, one sampling call
(batch m's G responses and batch m−1's continuations), ADS, branch points of batch m (the
subclass's rule: FCI for AttnRL, token entropy for TreeRL, from
:mod:`lit_attn.exploration.rules`), batch m−1's trees, the filters — and the host trains on
what it returns (the package's map: ``lit_attn/exploration/__init__.py``). These classes only
adapt it to Lightning: one :class:`~lit_attn.exploration.settings.ExplorationSettings` and a
rule built from their arguments, checks in ``setup``, the state in ``state_dict``, histograms
to TensorBoard. The arguments are documented once, on those dataclasses; the classes'
docstrings below carry them (``--help`` shows them).

Every token keeps the log-prob of the policy that sampled it, so PPO's ratio is the only
off-policy correction. Adaptive sampling (docs/attnrl.md §4) decides how many responses per prompt are
branched, drops uninformative all-correct prompts, and adapts the prompt batch size.

Contract with the LightningModule: :data:`lit_attn.exploration.host.REQUIRED` (checked in
``setup`` by :func:`~lit_attn.exploration.host.check_host`; :class:`~lit_attn.PolicyModule`
offers it, another RL module can too).

Prompt batch: the data loader's batch (``prompts_per_step`` records) joins a queue; a step
takes its current batch size ``B_m`` from the front. When ``B_m`` has grown past what the
queue holds, the callback takes the training loader's next batches at once (those Lightning
would have handed to the next steps), so every prompt is used once, in data order, as in the
authors' code; what a step leaves stays queued for the next one (``branching/prompts_queued``).
All of this state is in ``state_dict()``: a run killed and resumed from a checkpoint
continues exactly (the loader's own position counts the batches taken early).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar, get_type_hints

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loops.fetchers import _PrefetchDataFetcher

from lit_attn.attention.fci import DEFAULT_BLOCK_SIZE
from lit_attn.attention.steps import STEP_DELIMITER
from lit_attn.errors import UserError
from lit_attn.experience import Experience
from lit_attn.exploration.host import check_host
from lit_attn.exploration.rules import BranchRule, EntropyBranching, FCIBranching
from lit_attn.exploration.settings import ExplorationSettings
from lit_attn.exploration.state import ExplorationState
from lit_attn.exploration.step import explore_step
from lit_attn.strategy import check_strategy, reduce_over_ranks

Built = TypeVar("Built")


def build(owner: str, cls: type[Built], arguments: Mapping[str, Any]) -> Built:
    """``cls`` (a settings dataclass) from the constructor ``arguments`` of the same names; its
    one-line UserError is prefixed with the callback's name."""
    try:
        return cls(**{f.name: arguments[f.name] for f in fields(cls) if f.name in arguments})
    except UserError as error:
        raise UserError(f"{owner}: {error}") from None


def documented(*sources: type) -> Any:
    """Class decorator: the sources' ``Attributes:`` docstring sections become the class's
    ``Args:`` section, so the arguments are documented once (on the dataclasses) and LightningCLI's
    ``--help`` still describes each of them."""

    def attributes(cls: type) -> str:
        lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
        start = lines.index("Attributes:") + 1
        end = next((k for k in range(start, len(lines)) if lines[k] and not lines[k].startswith(" ")), len(lines))
        return "\n".join(lines[start:end]).rstrip()

    def decorate(callback: type) -> type:
        sections = "\n".join(attributes(source) for source in sources)
        callback.__doc__ = f"{inspect.cleandoc(callback.__doc__ or '')}\n\nArgs:\n{sections}\n"
        return callback

    return decorate


def takes(*sources: type, **defaults: Any) -> Any:
    """Class decorator: the callback's constructor takes the fields of ``sources`` (settings
    dataclasses), in order, as keyword arguments, with ``defaults`` overriding theirs.

    The signature is generated (``__init__.__signature__``), so LightningCLI lists, types and
    documents each argument, and a new knob is one field on its dataclass: no constructor to
    edit. The constructor receives every argument, defaults filled in, as one mapping."""

    def decorate(callback: type) -> type:
        parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        names: list[str] = []
        for source in sources:
            hints = get_type_hints(source)
            for f in fields(source):
                default = defaults.get(f.name, f.default)
                parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[f.name]))
                names.append(f.name)
        unknown = sorted(set(defaults) - set(names))
        if unknown:  # pragma: no cover - a programming error in this module
            raise TypeError(f"{callback.__name__}: defaults for unknown arguments {unknown}")
        signature = inspect.Signature(parameters)
        init = callback.__init__

        def __init__(self: Any, **arguments: Any) -> None:
            unexpected = sorted(set(arguments) - set(names))
            if unexpected:
                raise TypeError(f"{callback.__name__} got unexpected keyword arguments {unexpected}")
            bound = signature.bind(self, **arguments)
            bound.apply_defaults()
            init(self, {name: bound.arguments[name] for name in names})

        __init__.__signature__ = signature  # type: ignore[attr-defined]
        __init__.__doc__ = init.__doc__
        callback.__init__ = __init__
        return callback

    return decorate


@documented(ExplorationSettings)
class BranchingCallback(Callback):
    """One-step off-policy tree exploration with adaptive sampling; subclasses pick the rule.

    The step itself is :func:`lit_attn.exploration.step.explore_step`; this class adapts it to
    Lightning: it checks the host in ``setup``, checkpoints the state, lends the training
    dataset's prompts when the batch grows, and logs histograms. ``rule`` is any
    :class:`~lit_attn.exploration.rules.BranchRule`; ``settings`` an
    :class:`~lit_attn.exploration.settings.ExplorationSettings` (default: its defaults), with
    any of its fields overridden by keyword (``BranchingCallback(rule, continuations=4)``).
    """

    def __init__(self, rule: BranchRule, settings: ExplorationSettings | None = None, **overrides: Any) -> None:
        settings = settings if settings is not None else ExplorationSettings()
        if overrides:
            unknown = sorted(set(overrides) - {f.name for f in fields(ExplorationSettings)})
            if unknown:
                raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {unknown}")
            settings = build(type(self).__name__, ExplorationSettings, {**vars(settings), **overrides})
        self.rule = rule
        self.settings = settings
        self.state = ExplorationState(seed=settings.seed)
        self._histograms: dict[str, torch.Tensor] = {}
        self._trainer: Trainer | None = None

    @property
    def rl_step(self) -> int:
        """RL steps taken (the first only samples)."""
        return self.state.rl_step

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_strategy(trainer, type(self).__name__)
        check_host(pl_module, type(self).__name__)
        current = pl_module.experience_source
        if current is not None and current is not self:
            raise UserError(
                f"two exploration callbacks on one module ({type(current).__name__} and {type(self).__name__}); keep one"
            )
        pl_module.experience_source = self
        self._trainer = trainer
        if trainer.global_rank != self.state.rank:  # each rank draws its own numbers
            self.state = ExplorationState(seed=self.settings.seed, rank=trainer.global_rank)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if getattr(pl_module, "experience_source", None) is self:
            pl_module.experience_source = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero or not self._histograms:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, values in self._histograms.items():
                    if values.numel():
                        logger.experiment.add_histogram(tag, values, global_step=trainer.global_step)
        self._histograms = {}

    def state_dict(self) -> dict[str, Any]:
        """This rank's state; under DDP every rank's, gathered (the checkpoint is written by rank
        0 alone, and each rank resumes from its own)."""
        state = self.state.state_dict()
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return state
        states: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(states, state)
        return {"per_rank": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "per_rank" in state_dict:
            states = state_dict["per_rank"]
            if len(states) != (self._trainer.world_size if self._trainer is not None else 1):
                raise UserError(
                    f"{type(self).__name__}: the checkpoint holds the exploration state of {len(states)} processes; "
                    f"resume with --trainer.devices={len(states)} (and the same number of nodes)"
                )
            state_dict = states[self.state.rank]
        self.state.load_state_dict(state_dict)

    # ------------------------------------------------------------------ one step

    def make_experience(self, module: LightningModule, records: list[dict]) -> Experience:
        """What this step trains on (:func:`lit_attn.exploration.step.explore_step`)."""
        experience, self._histograms = explore_step(
            module, records, self.state, self.settings, self.rule, self._next_prompts, self._reduce
        )
        return experience

    def _reduce(self, values: list[float], op: str) -> list[float]:
        return reduce_over_ranks(self._trainer, values, op)

    def _next_prompts(self, count: int) -> list[dict]:
        """At least ``count`` more prompts for a batch grown past the loader's: the training
        loader's next batches, taken now from the iterator Lightning's fit loop reads (so later
        steps get the batches after them), until ``count`` are in or the epoch ends. The batches
        taken here skip Lightning's batch-transfer hooks (records are plain lists of dicts).
        Nothing when the module reads the loader itself (a ``dataloader_iter`` training step)."""
        fetcher = getattr(getattr(self._trainer, "fit_loop", None), "_data_fetcher", None)
        if not isinstance(fetcher, _PrefetchDataFetcher):
            return []
        prompts: list[dict] = []
        while len(prompts) < count:
            try:
                batch, _, _ = next(fetcher)
            except StopIteration:
                break
            prompts.extend(batch)
        return prompts


@documented(FCIBranching, ExplorationSettings)
@takes(FCIBranching, ExplorationSettings)
class AttentionBranchCallback(BranchingCallback):
    """AttnRL (docs/attnrl.md): branch at the steps that later steps attend to most.

    The rule is :class:`~lit_attn.exploration.rules.FCIBranching` (its arguments first), the
    exploration :class:`~lit_attn.exploration.settings.ExplorationSettings` (the rest).
    """

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        super().__init__(
            build(type(self).__name__, FCIBranching, arguments), build(type(self).__name__, ExplorationSettings, arguments)
        )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        from lit_attn.families import check_model

        check_model(  # FCI needs the model's attention scores, exactly (no ALiBi, sinks, ...)
            pl_module.model, f"AttentionBranchCallback: {type(pl_module).__name__}.model",
            fix="hold the causal LM, whose attention FCI captures, in `model`",
        )


@documented(ExplorationSettings, EntropyBranching)
@takes(ExplorationSettings, EntropyBranching, adaptive_sampling=False, adaptive_batch=False)
class EntropyBranchCallback(BranchingCallback):
    """TreeRL-style baseline (docs/attnrl.md §8): branch at the ``num_points`` highest-entropy tokens.

    Entropy of the full next-token distribution at every response token, from one no-grad
    forward over the new responses. Same trees, advantages and one-step off-policy schedule as
    :class:`AttentionBranchCallback`; by default every response is expanded (no ADS) and the
    prompt batch size is fixed, as in TreeRL. The rule is
    :class:`~lit_attn.exploration.rules.EntropyBranching`.
    """

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        super().__init__(
            build(type(self).__name__, EntropyBranching, arguments), build(type(self).__name__, ExplorationSettings, arguments)
        )
