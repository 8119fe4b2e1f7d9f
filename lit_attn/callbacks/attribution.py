"""AttributionCallback: which context texts drove the policy's answers, logged while it trains.

At chosen points of a run (every N training steps, at the end of validation, at the start of
training) the callback attributes the answers of the *current* model on a fixed set of
examples — each a list of context texts and a question — with AttnTrace (docs/attribution.md)
or a baseline, and logs what it found: a ranked table per example, a heatmap of the examples ×
texts scores and, where the examples carry ground truth, scalars that say how much of the
attribution lands on the texts that really matter. It is a thin Lightning adapter over
:func:`lit_attn.attribution.attribute`; the examples (:mod:`lit_attn.attribution.examples`),
the scalars (:mod:`lit_attn.attribution.metrics`), the table and heatmap
(:mod:`lit_attn.attribution.report`) and the isolation (:mod:`lit_attn.attribution.isolation`)
live in the core.

Contract: any LightningModule with a Hugging Face causal LM at ``model_attr`` (default
``model``) and its tokenizer at ``tokenizer_attr`` (default ``tokenizer``). The attention
methods (``attntrace``, ``attention``) also need a model whose attention layers run through
transformers' AttentionInterface (Qwen2, Llama, GPT-2, Mistral, ...); ``setup()`` checks all
of this and names what is missing. The callback never changes training: it attributes on rank
zero only, under ``torch.no_grad``, with the model in eval mode (every submodule's train/eval
flag restored exactly afterwards), and with the global torch / CUDA / Python / NumPy random
states saved and restored around it — so sampling in the training step sees the same random
numbers with or without it. Its ``state_dict()`` is empty.

Drop it into any Lightning project::

    from lit_attn.callbacks import AttributionCallback

    trainer = Trainer(callbacks=[AttributionCallback("probes.jsonl", every_n_train_steps=100)])

or into a lit_attn config (see lit_attn/configs/grpo.yaml)::

    - class_path: lit_attn.callbacks.AttributionCallback
      init_args: {examples: builtin, num_examples: 8, every_n_train_steps: 400}

Logged (all tags under ``attribution/``; see docs/attribution_callback.md):

* ``attribution/precision_at_k``, ``attribution/recall_at_k``, ``attribution/relevant_share``
  — means over the examples that carry ground truth (``relevant``); see
  :func:`~lit_attn.attribution.metrics.ranking_metrics` for the exact definitions;
* ``attribution/seconds`` — mean wall-clock seconds per example (answer generation included);
* text ``attribution/example_<i>`` — the ranked texts of example ``i`` as a markdown table;
* image ``attribution/heatmap`` — examples × texts, each row scaled from its min to its max,
  ground truth circled, each row's top-k dotted;
* ``attribution/share/<kind>`` and ``attribution/follows_injection`` — where the probes label
  their texts (``kinds``): the share of positive credit on each kind, and the share of answers
  that give the injected text's answer (:mod:`lit_attn.attribution.kinds`);
* with ``html=True``, one self-contained HTML page per logging point,
  ``<run dir>/attribution/step_<step:06d>.html``, and ``index.html`` listing the points with
  their scalars (:mod:`lit_attn.attribution.html_report`, :mod:`lit_attn.attribution.html_files`).

The scalars go to every logger's ``log_metrics`` at the current ``trainer.global_step``, one
point per logging point; text and the image go to the first
:class:`~lightning.pytorch.loggers.TensorBoardLogger` of ``trainer.loggers`` (without one only
the scalars are logged). The three ground-truth scalars are also logged with
``pl_module.log_dict(..., logger=False)`` — on every rank, the values broadcast from rank zero
— so ``trainer.callback_metrics`` holds their latest values and a ``ModelCheckpoint`` or
``EarlyStopping`` can monitor them: at the end of every training batch, and at the end of a
validation run that attributed (``attribution/seconds``, a wall-clock time, stays out).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from lit_attn.attribution import METHODS, AttributionResult, PromptTemplate, attribute
from lit_attn.attribution.baselines import check_method_params
from lit_attn.attribution.examples import BUILTIN, AttributionExample, examples_from_records, load_examples
from lit_attn.attribution.isolation import isolated
from lit_attn.attribution.metrics import RANKING_METRICS, attribution_scalars
from lit_attn.attribution.prompt import check_length, document_sep, encode_answer, resolve_template, tokenize_prompt
from lit_attn.attribution.html_files import INDEX, write_step_page
from lit_attn.attribution.html_report import ReportItem, render_page
from lit_attn.attribution.report import heatmap_figure, result_markdown
from lit_attn.attribution.scores import DEFAULT_TOP_K
from lit_attn.attribution.trace import DEFAULT_NUM_SUBSAMPLES, DEFAULT_SUBSAMPLE_RATIO, check_trace_settings
from lit_attn.errors import UserError
from lit_attn.lora import unwrap
from lit_attn.strategy import check_strategy

Method = Literal["attntrace", "leave_one_out", "attention"]
ATTENTION_METHODS = ("attntrace", "attention")
MONITORED = tuple(f"attribution/{name}" for name in RANKING_METRICS)
"""The scalars that also go to ``trainer.callback_metrics`` (through ``pl_module.log_dict``)."""

__all__ = ["AttributionCallback", "builtin_examples"]


class AttributionCallback(Callback):
    """Attribute the current model's answers to context texts during training and log the result.

    Args:
        examples: the probes. A list of dicts, or the path of a JSONL file with one dict per
            line (checked by :func:`lit_attn.attribution.examples.parse_example`, as
            ``python -m lit_attn attribute`` checks its input), each with ``contexts`` (list of
            texts, or one document string cut by the method's ``split``, default ``segment``,
            settable in ``method_kwargs``), ``question``, optional ``answer``
            (attributed as given; omitted = the current model's greedy answer at each logging
            point), optional ``relevant`` (indices of the texts that truly matter: enables the
            scalars), optional ``reference`` (expected answer, shown in the table), optional
            ``kinds`` (one label per text: enables ``attribution/share/<kind>``) and optional
            ``injected_answer`` (what the ``injected`` text asks for: enables
            ``attribution/follows_injection``). Or
            ``"builtin"``: the held-out records of lit_attn's PromptDataModule (built-in task),
            with the facts each question needs as ground truth (with a user's own data, whose
            records have no ``contexts`` / ``question``, the callback warns and stays idle).
        num_examples: use at most this many examples (the first ones); None = all.
        num_distractors: ``"builtin"`` only: None = the held-out records as they are; a number
            = draw ``num_examples`` examples of the built-in task with that many distractor
            facts (for runs that train without distractors, where every fact is relevant;
            ignored when the data is not the built-in task).
        every_n_train_steps: attribute whenever ``trainer.global_step`` reaches a multiple of
            this (manual optimisation may advance several steps per batch: a multiple crossed
            counts). None or 0 = never during training.
        at_validation_end: also attribute at the end of every validation run (not the sanity check).
        at_train_start: also attribute once before the first training step (a step-0 baseline).
        model_attr: attribute of the LightningModule that holds the Hugging Face causal LM.
        tokenizer_attr: attribute of the LightningModule that holds its tokenizer.
        template: where texts and question go in the prompt: ``"builtin"`` (the built-in
            task's layout, one text per line then ``question?``), ``"reference"`` (the
            AttnTrace paper's ``Contexts: … Query: … Answer:``) or a
            :class:`lit_attn.attribution.PromptTemplate`; None = ``"builtin"``. Use the
            layout your model was trained on.
        method: ``attntrace`` (docs/attribution.md), ``leave_one_out`` (n + 1 teacher-forced
            passes) or ``attention`` (one pass, plain attention mean).
        top_k_tokens: AttnTrace: top-K token averaging per text (None: all of a text's tokens).
        subsample_ratio: AttnTrace: fraction of the texts each subsampling round keeps.
        num_subsamples: AttnTrace: subsampling rounds.
        seed: AttnTrace: seed of the subsampling (its own generator).
        max_new_tokens: length limit of the greedy answers the callback generates.
        k: cut-off of ``precision_at_k`` / ``recall_at_k`` (and the top-k outlined on the pages).
        method_kwargs: further keyword arguments for the attribution method.
        html: write a self-contained HTML page per logging point into ``<run dir>/attribution/``
            (the first logger's ``log_dir``, else ``trainer.default_root_dir``), with
            ``index.html`` listing the points and their scalars.
    """

    def __init__(
        self,
        examples: str | list[dict[str, Any]],
        num_examples: int | None = 8,
        num_distractors: int | None = None,
        every_n_train_steps: int | None = 50,
        at_validation_end: bool = False,
        at_train_start: bool = False,
        model_attr: str = "model",
        tokenizer_attr: str = "tokenizer",
        template: PromptTemplate | str | None = None,
        method: Method = "attntrace",
        top_k_tokens: int | None = DEFAULT_TOP_K,
        subsample_ratio: float = DEFAULT_SUBSAMPLE_RATIO,
        num_subsamples: int = DEFAULT_NUM_SUBSAMPLES,
        seed: int = 0,
        max_new_tokens: int = 64,
        k: int = 5,
        method_kwargs: dict[str, Any] | None = None,
        html: bool = True,
    ) -> None:
        super().__init__()
        _check_arguments(
            examples, method=method, top_k_tokens=top_k_tokens, subsample_ratio=subsample_ratio,
            num_subsamples=num_subsamples, max_new_tokens=max_new_tokens, k=k, num_examples=num_examples,
            every_n_train_steps=every_n_train_steps, num_distractors=num_distractors,
        )
        self.method = method
        self.params: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if method == "attntrace":
            self.params.update(
                top_k_tokens=top_k_tokens, subsample_ratio=subsample_ratio, num_subsamples=num_subsamples, seed=seed
            )
        self.params.update(_check_method_kwargs(method, method_kwargs or {}))
        resolve_template(template)  # an unknown template name fails here, not at the first logging point
        self.builtin = examples == BUILTIN
        split = self.params.get("split", "segment")  # a document string is cut as the method will cut it
        self.examples: list[AttributionExample] = [] if self.builtin else load_examples(examples, split=split)[:num_examples]
        self.num_examples = num_examples
        self.num_distractors = num_distractors
        self.every_n_train_steps = every_n_train_steps or 0
        self.at_validation_end = at_validation_end
        self.at_train_start = at_train_start
        self.model_attr = model_attr
        self.tokenizer_attr = tokenizer_attr
        self.template = template
        self.k = k
        self.html = html
        self.last_results: list[AttributionResult] = []
        """The AttributionResults of the latest logging point (rank zero)."""
        self.last_metrics: dict[str, float] = {}
        """The scalars of the latest logging point (every rank: broadcast from rank zero)."""
        self._previous_step = 0
        self._logged_step: int | None = None

    # ------------------------------------------------------------------ checks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the module offers a causal LM and a tokenizer; resolve ``"builtin"`` examples."""
        from lit_attn.families import check_model

        check_strategy(trainer, "AttributionCallback")
        where = f"AttributionCallback: {type(pl_module).__name__}"
        model = getattr(pl_module, self.model_attr, None)
        if model is None:
            raise UserError(
                f"{where} has no attribute {self.model_attr!r} (the Hugging Face causal LM to attribute); "
                "set model_attr to the attribute that holds it"
            )
        tokenizer = getattr(pl_module, self.tokenizer_attr, None)
        if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
            raise UserError(
                f"{where} has no tokenizer at attribute {self.tokenizer_attr!r}; "
                "set tokenizer_attr to the attribute that holds the model's Hugging Face tokenizer"
            )
        check_model(  # the attention methods need exact scores: a one-line refusal names the family (ALiBi, sinks, ...)
            model, f"{where}.{self.model_attr}", fix="set model_attr to the attribute that holds the causal LM",
            scorable=self.method in ATTENTION_METHODS,
        )
        if self.builtin and not self.examples:
            self.examples = builtin_examples(
                getattr(trainer, "datamodule", None), self.num_examples, num_distractors=self.num_distractors
            )
            if not self.examples:
                rank_zero_warn(
                    f"AttributionCallback: examples={BUILTIN!r} but the held-out records have no 'contexts' and "
                    "'question' (not the built-in task), so nothing will be attributed; pass a JSONL of probes "
                    "as examples, or remove the callback"
                )
        self.check_lengths(model, tokenizer)

    def check_lengths(self, model: Any, tokenizer: Any) -> None:
        """Fail before training when an example's prompt (and given answer) exceeds the model's context."""
        template = resolve_template(self.template)
        for i, example in enumerate(self.examples):
            answer = encode_answer(tokenizer, example.answer) if example.answer is not None else []
            pieces = tokenize_prompt(
                tokenizer, template, list(example.contexts), example.question, answer,
                sep=document_sep(example.prompt_contexts),
            )
            try:
                check_length(model, pieces.full_length - len(answer), max(len(answer), 1))
            except UserError as err:
                raise UserError(f"AttributionCallback example {i}: {err}") from None

    # ------------------------------------------------------------------ triggers

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._previous_step = trainer.global_step
        if self.at_train_start:
            # Lightning allows no step-level self.log here: the scalars reach callback_metrics
            # at the end of the first training batch (the loggers get them now).
            self.log_attribution(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, previous = trainer.global_step, self._previous_step
        self._previous_step = step
        n = self.every_n_train_steps
        if n and step // n > previous // n:
            self.log_attribution(trainer, pl_module)
        # Every batch: the training loop's stored values would otherwise overwrite newer ones
        # (from a validation run) in callback_metrics.
        self.publish(pl_module, on_epoch=False)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The end of validation; Lightning forbids self.log in on_validation_end, which follows.
        if self.at_validation_end and not trainer.sanity_checking and self.log_attribution(trainer, pl_module):
            self.publish(pl_module, on_epoch=True)

    # ------------------------------------------------------------------ work

    def attribute_examples(self, pl_module: LightningModule) -> list[AttributionResult]:
        """Attribute every example with the module's current model (isolated; see the module docstring)."""
        model = unwrap(getattr(pl_module, self.model_attr))  # a PEFT model's own layers carry the adapters
        tokenizer = getattr(pl_module, self.tokenizer_attr)
        results = []
        with isolated(model):
            for example in self.examples:
                results.append(attribute(
                    model, tokenizer, example.prompt_contexts, example.question, example.answer,
                    method=self.method, template=self.template, **self.params,
                ))
        return results

    def metrics(self, results: Sequence[AttributionResult]) -> dict[str, float]:
        """The ``attribution/*`` scalars of one logging point (see
        :func:`~lit_attn.attribution.metrics.attribution_scalars`)."""
        return attribution_scalars(self.examples, results, self.k)

    def log_attribution(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Attribute on rank zero and write scalars, tables and the heatmap to the loggers at
        ``trainer.global_step``; every rank then holds the scalars in :attr:`last_metrics`.
        False (nothing done) when this step was attributed already or there are no examples."""
        step = trainer.global_step
        if self._logged_step == step or not self.examples:
            return False
        self._logged_step = step
        metrics: dict[str, float] = {}
        if trainer.is_global_zero:
            results = self.attribute_examples(pl_module)
            metrics = self.metrics(results)
            self.last_results = results
            self.write(trainer, results, metrics, step)
        if trainer.world_size > 1:  # every rank logs the same values (ranks other than zero waited here)
            metrics = trainer.strategy.broadcast(metrics, src=0)
        self.last_metrics = metrics
        return True

    def write(self, trainer: Trainer, results: Sequence[AttributionResult], metrics: dict[str, float], step: int) -> None:
        """Scalars to every logger, tables and heatmap to the first TensorBoardLogger, at ``step``."""
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if self.html:
            self.write_page(trainer, results, metrics, step)
        board = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if board is None:
            return
        for i, (example, result) in enumerate(zip(self.examples, results)):
            board.experiment.add_text(f"attribution/example_{i}", result_markdown(example, result, step), global_step=step)
        figure = heatmap_figure(
            self.examples, [r.scores for r in results], f"attribution ({self.method}), step {step}", k=self.k
        )
        board.experiment.add_figure("attribution/heatmap", figure, global_step=step, close=True)

    def write_page(
        self, trainer: Trainer, results: Sequence[AttributionResult], metrics: dict[str, float], step: int
    ) -> Path:
        """This logging point's HTML page into ``<run dir>/attribution/``, and the index (rank zero)."""
        items = [ReportItem(f"probe {i}", ex, result, k=self.k) for i, (ex, result) in enumerate(zip(self.examples, results))]
        page = render_page(
            f"Attribution at step {step}", items, subtitle=f"{len(items)} probe(s); method {self.method}",
            scalars=metrics, back_link=(INDEX, "all logging points"),
        )
        return write_step_page(run_folder(trainer) / "attribution", step, page, metrics, "Attribution: logging points")

    def publish(self, pl_module: LightningModule, *, on_epoch: bool) -> None:
        """The latest ground-truth scalars into ``trainer.callback_metrics`` (``pl_module.log_dict``
        with ``logger=False``: the loggers got them once, at their step, from :meth:`write`)."""
        values = {name: value for name, value in self.last_metrics.items() if name in MONITORED}
        if values:
            # Same values on every rank: a "max" sync at the epoch level keeps them exact.
            pl_module.log_dict(
                values, on_step=not on_epoch, on_epoch=on_epoch, logger=False, batch_size=1,
                sync_dist=on_epoch, reduce_fx="max" if on_epoch else "mean",
            )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Nothing: the callback holds no state that changes training or what it logs next."""
        return {}


def run_folder(trainer: Trainer) -> Path:
    """The run's folder: the first logger's ``log_dir`` (a TensorBoardLogger's ``version_N``),
    else ``trainer.default_root_dir``. Read from the loggers, not ``trainer.log_dir``, which
    broadcasts and would hang when only rank zero asks."""
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return Path(log_dir)
    return Path(trainer.default_root_dir)


def _check_arguments(
    examples: Any, *, method: str, top_k_tokens: int | None, subsample_ratio: float, num_subsamples: int,
    max_new_tokens: int, k: int, num_examples: int | None, every_n_train_steps: int | None,
    num_distractors: int | None,
) -> None:
    """One-line :class:`UserError` for a bad AttributionCallback argument."""
    if method not in METHODS:
        raise UserError(f"AttributionCallback: unknown method {method!r}; use one of {', '.join(METHODS)}")
    check_trace_settings(top_k_tokens, subsample_ratio, num_subsamples, who="AttributionCallback: ")
    for name, value in (("max_new_tokens", max_new_tokens), ("k", k)):
        if value < 1:
            raise UserError(f"AttributionCallback: {name} must be >= 1, got {value}")
    if num_examples is not None and num_examples < 1:
        raise UserError(f"AttributionCallback: num_examples must be >= 1 or null (all), got {num_examples}")
    if every_n_train_steps is not None and every_n_train_steps < 0:
        raise UserError(
            f"AttributionCallback: every_n_train_steps must be >= 0 (0 or null = never), got {every_n_train_steps}"
        )
    if num_distractors is not None and (examples != BUILTIN or num_distractors < 0):
        raise UserError(
            f"AttributionCallback: num_distractors={num_distractors} needs examples={BUILTIN!r} and a value >= 0; "
            "set it to null otherwise"
        )


def builtin_examples(
    datamodule: Any, num_examples: int | None, *, num_distractors: int | None = None
) -> list[AttributionExample]:
    """What ``examples: builtin`` resolves to: the built-in task's probes
    (:func:`lit_attn.tasks.probes.builtin_probes`, plain records) from a
    :class:`lit_attn.PromptDataModule`, as attribution examples."""
    from lit_attn.data import PromptDataModule
    from lit_attn.tasks.probes import builtin_probes

    if not isinstance(datamodule, PromptDataModule):
        raise UserError(
            f"examples={BUILTIN!r} needs lit_attn's PromptDataModule, got {type(datamodule).__name__}; "
            "pass a list of examples or a JSONL path instead"
        )
    return examples_from_records(builtin_probes(datamodule, num_examples, num_distractors=num_distractors))


def _check_method_kwargs(method: str, method_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``method_kwargs`` when the method takes every one of them; else a one-line :class:`UserError`."""
    check_method_params(method, method_kwargs, who="AttributionCallback: method ")
    return dict(method_kwargs)
