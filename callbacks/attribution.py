"""AttributionCallback: which context texts drove the policy's answers, logged while it trains.

At chosen points of a run (every N training steps, at the end of validation, at the start of
training) the callback attributes the answers of the *current* model on a fixed set of
examples — each a list of context texts and a question — with AttnTrace (docs/attribution.md)
or a baseline, and logs to TensorBoard what it found: a ranked table per example, a heatmap of
the examples × texts scores and, where the examples carry ground truth, scalars that say how
much of the attribution lands on the texts that really matter. It is a thin Lightning adapter
over :func:`lit_attn.attribution.attribute`.

Contract: any LightningModule with a Hugging Face causal LM at ``model_attr`` (default
``model``) and its tokenizer at ``tokenizer_attr`` (default ``tokenizer``). The attention
methods (``attntrace``, ``attention``) also need a model whose attention layers run through
transformers' AttentionInterface (Qwen2, Llama, GPT-2, Mistral, ...); ``setup()`` checks all
of this and names what is missing. The callback never changes training: it runs on rank zero
only, under ``torch.no_grad``, with the model in eval mode (every submodule's train/eval flag
restored exactly afterwards), and with the global torch / CUDA / Python / NumPy random states
saved and restored around it — so sampling in the training step sees the same random numbers
with or without it. Its ``state_dict()`` is empty.

Drop it into any Lightning project::

    from lit_attn.callbacks import AttributionCallback

    trainer = Trainer(callbacks=[AttributionCallback("probes.jsonl", every_n_train_steps=100)])

or into a lit_attn config (see configs/grpo.yaml)::

    - class_path: lit_attn.callbacks.AttributionCallback
      init_args: {examples: builtin, num_examples: 8, every_n_train_steps: 400}

Logged (all tags under ``attribution/``; see docs/attribution_callback.md):

* ``attribution/precision_at_k``, ``attribution/recall_at_k``, ``attribution/relevant_share``
  — means over the examples that carry ground truth (``relevant``); see
  :func:`ranking_metrics` for the exact definitions;
* ``attribution/seconds`` — mean wall-clock seconds per example (answer generation included);
* text ``attribution/example_<i>`` — the ranked texts of example ``i`` as a markdown table;
* image ``attribution/heatmap`` — examples × texts, each row scaled from its min to its max,
  ground truth circled, each row's top-k dotted.

Scalars go to every logger's ``log_metrics`` at the current ``trainer.global_step``; text and
the image go to the first :class:`~lightning.pytorch.loggers.TensorBoardLogger` of
``trainer.loggers`` (without one only the scalars are logged).
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lit_attn.attribution import (
    METHODS,
    AttnTrace,
    AttributionResult,
    PromptTemplate,
    attention_scores,
    attribute,
    leave_one_out,
)
from lit_attn.attribution.prompt import check_length, encode_answer, resolve_template, tokenize_prompt
from lit_attn.errors import UserError
from lit_attn.lora import unwrap
from lit_attn.markdown import cell
from lit_attn.models import eval_mode
from lit_attn.records import jsonl_rows
from lit_attn.seeding import mix_seed
from lit_attn.strategy import check_strategy

Method = Literal["attntrace", "leave_one_out", "attention"]
ATTENTION_METHODS = ("attntrace", "attention")
EXAMPLE_KEYS = ("contexts", "question", "answer", "relevant", "reference")
BUILTIN = "builtin"
METHOD_TARGETS = {"attntrace": AttnTrace, "leave_one_out": leave_one_out, "attention": attention_scores}


# --------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class AttributionExample:
    """One probe: context texts, a question and, optionally, the answer and the ground truth.

    Attributes:
        contexts: the texts whose influence is scored, in prompt order.
        question: the question asked after them.
        answer: the answer to attribute (teacher-forced). None = the current model's greedy
            answer, generated anew at every logging point.
        relevant: indices into ``contexts`` of the texts that truly drive the answer (ground
            truth for the scalars). None = no ground truth: table and heatmap only.
        reference: the expected answer, shown in the table only (e.g. the verifier's answer).
    """

    contexts: tuple[str, ...]
    question: str
    answer: str | None = None
    relevant: tuple[int, ...] | None = None
    reference: str | None = None


def parse_example(raw: Any, where: str) -> AttributionExample:
    """Validate one example (a dict with the keys of :data:`EXAMPLE_KEYS`); ``where`` names it in errors."""
    if not isinstance(raw, dict):
        raise UserError(
            f"{where}: an attribution example must be an object with 'contexts' and 'question', "
            f"got {type(raw).__name__}"
        )
    unknown = sorted(set(raw) - set(EXAMPLE_KEYS))
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} in attribution example; "
            f"use only {', '.join(EXAMPLE_KEYS)}"
        )
    contexts = raw.get("contexts")
    if not isinstance(contexts, list) or not contexts or not all(isinstance(t, str) for t in contexts):
        raise UserError(f"{where}: 'contexts' must be a non-empty list of strings (one per context text)")
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: 'question' must be a non-empty string")
    for key in ("answer", "reference"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise UserError(f"{where}: {key!r} must be a string or null, got {type(raw[key]).__name__}")
    relevant = raw.get("relevant")
    if relevant is not None:
        n = len(contexts)
        if (
            not isinstance(relevant, list)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in relevant)
            or any(not 0 <= i < n for i in relevant)
            or len(set(relevant)) != len(relevant)
        ):
            raise UserError(
                f"{where}: 'relevant' must be a list of distinct indices into 'contexts' (0 to {n - 1}), got {relevant!r}"
            )
        relevant = tuple(sorted(relevant))
    return AttributionExample(
        contexts=tuple(contexts), question=question, answer=raw.get("answer"), relevant=relevant,
        reference=raw.get("reference"),
    )


def load_examples(source: str | Path | Sequence[dict]) -> list[AttributionExample]:
    """Examples from a list of dicts or a JSONL file (one JSON object per line, blank lines skipped)."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(
                f"attribution examples file {str(source)!r} does not exist; pass a JSONL path, a list of "
                f"examples, or {BUILTIN!r} for the built-in task's held-out prompts"
            )
        examples = [parse_example(raw, where) for where, raw in jsonl_rows(path)]
        if not examples:
            raise UserError(f"{path}: no attribution examples in the file; add one JSON object per line")
        return examples
    if not isinstance(source, Sequence) or not source:
        raise UserError(
            f"examples must be a non-empty list of dicts, a JSONL path or {BUILTIN!r}, got {source!r}"
        )
    return [parse_example(raw, f"examples[{i}]") for i, raw in enumerate(source)]


def builtin_examples(
    datamodule: Any, num_examples: int | None, *, num_distractors: int | None = None
) -> list[AttributionExample]:
    """The first ``num_examples`` held-out records of a :class:`lit_attn.PromptDataModule`.

    Records keep their ground truth: ``contexts``, ``question``, ``relevant`` (the facts the
    question needs) and ``answer`` (shown as the reference; the attributed answer is the
    model's own). Held-out records without ``contexts`` and ``question`` (a user's own data)
    are skipped, so the list is empty for data that has none. With ``num_distractors`` set and
    the built-in task as the data (no ``train_path`` / ``val_path``), the examples are drawn
    afresh from the datamodule's task with that many distractor facts instead (seeded by the
    datamodule's seed, no prompt of the training split): useful when training uses no
    distractors, where every text is relevant and the scalars would be trivially 1.
    """
    from lit_attn.data import PromptDataModule
    from lit_attn.task import make_split

    if not isinstance(datamodule, PromptDataModule):
        raise UserError(
            f"examples={BUILTIN!r} needs lit_attn's PromptDataModule, got {type(datamodule).__name__}; "
            "pass a list of examples or a JSONL path instead"
        )
    hp = datamodule.hparams
    size = num_examples or hp.val_size
    if num_distractors is not None and hp.train_path is None and hp.val_path is None:
        if getattr(hp, "num_texts", 0):
            raise UserError(
                f"AttributionCallback num_distractors={num_distractors} redraws plain built-in examples, but the data "
                f"uses long contexts (data.num_texts={hp.num_texts}); set num_distractors: null to attribute held-out prompts"
            )
        train = {r["prompt"] for r in datamodule.records("fit").get("train", [])}
        try:
            task = replace(datamodule.task, num_distractors=num_distractors)
            records = make_split(task, size, seed=mix_seed(hp.seed, 3), exclude=train)
        except ValueError as err:
            raise UserError(f"AttributionCallback num_distractors={num_distractors}: {err}") from err
    else:
        records = [r for r in datamodule.val_records() if r.get("contexts") and r.get("question")][:size]
    return [
        AttributionExample(
            contexts=tuple(r["contexts"]), question=str(r["question"]),
            relevant=tuple(r["relevant"]) if r.get("relevant") is not None else None,
            reference=str(r["answer"]) if r.get("answer") is not None else None,
        )
        for r in records
    ]


# --------------------------------------------------------------------------- measures


def ranking_metrics(scores: Sequence[float], relevant: Sequence[int], k: int) -> dict[str, float]:
    """How well one attribution finds the ground-truth texts.

    With ``n`` texts, scores ``s``, the set ``G`` of relevant indices (non-empty) and
    ``top`` = the ``k' = min(k, n)`` highest-scoring texts (ties broken by position):

    * ``precision_at_k`` = |top ∩ G| / k'
    * ``recall_at_k`` = |top ∩ G| / |G|
    * ``relevant_share`` = Σ_{i∈G} max(s_i, 0) / Σ_i max(s_i, 0): the share of the positive
      score mass that falls on the relevant texts (1 = all credit on the truth, 0 = none);
      NaN when no text has a positive score (left out of the logged mean).
    """
    n = len(scores)
    truth = set(relevant)
    top = sorted(range(n), key=lambda i: (-scores[i], i))[: min(k, n)]
    hits = len(truth.intersection(top))
    positive = [max(float(s), 0.0) for s in scores]
    total = sum(positive)
    return {
        "precision_at_k": hits / len(top),
        "recall_at_k": hits / len(truth),
        "relevant_share": sum(positive[i] for i in truth) / total if total > 0 else math.nan,
    }


def result_markdown(example: AttributionExample, result: AttributionResult, step: int) -> str:
    """A markdown table of one attribution: the texts ranked, their scores, ground truth marked."""
    lines = [
        f"**question** {cell(example.question)} — **answer** {cell(result.answer)}"
        + (f" — **reference** {cell(example.reference)}" if example.reference is not None else ""),
        "",
        f"method `{result.method}`, step {step}, {result.seconds:.2f} s"
        + ("; ✓ = ground truth (a text the answer needs)" if example.relevant is not None else ""),
        "",
        result.to_markdown(relevant=example.relevant),
    ]
    return "\n".join(lines)


def heatmap_figure(
    examples: Sequence[AttributionExample], scores: Sequence[Sequence[float]], title: str, k: int = 5
) -> Figure:
    """Examples × texts, each row scaled from its own min (0) to its own max (1).

    Attention scores of different texts can differ by a few percent of their size (0.0211 to
    0.0232, say); scaling a row by its max would paint every cell the same colour. Min-to-max
    scaling shows the ranking whatever the spread. Ground-truth texts are circled and each
    row's top-``k`` texts carry a dot, so a right ranking reads as dots inside circles.

    Built on a bare :class:`~matplotlib.figure.Figure` with the Agg canvas, so it never
    touches pyplot's global state or the user's backend.
    """
    width = max(len(row) for row in scores)
    grid = np.full((len(scores), width), np.nan)
    tops: list[list[int]] = []
    for r, row in enumerate(scores):
        values = np.asarray(row, dtype=float)
        low, high = np.nanmin(values), np.nanmax(values)
        grid[r, : len(values)] = (values - low) / (high - low) if high > low else 0.5
        tops.append(sorted(range(len(values)), key=lambda i: (-values[i], i))[: min(k, len(values))])
    figure = Figure(figsize=(min(3.0 + 0.45 * width, 18), 1.6 + 0.42 * len(scores)))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    truth = [(i, r) for r, example in enumerate(examples) for i in (example.relevant or ())]
    if truth:
        ax.scatter(*zip(*truth), s=90, facecolors="none", edgecolors="white", linewidths=1.6, label="ground truth")
    top = [(i, r) for r, row in enumerate(tops) for i in row]
    ax.scatter(*zip(*top), s=14, c="red", marker="o", linewidths=0, label=f"top-{k}")
    ax.set_xlabel("context text (index)")
    ax.set_ylabel("example")
    if width <= 40:  # beyond that, matplotlib's own ticks stay readable
        ax.set_xticks(range(width))
    ax.set_yticks(range(len(scores)))
    ax.set_title(title, fontsize=9)
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / max(len(scores), 1)), ncol=2, fontsize=8, frameon=False)
    for handle in legend.legend_handles:
        if handle.get_label() == "ground truth":
            handle.set_edgecolor("black")
    figure.colorbar(image, ax=ax, label="score, row min (0) to row max (1)")
    figure.tight_layout()
    return figure


# --------------------------------------------------------------------------- isolation


@contextmanager
def isolated(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode, no grad, and every global random state saved and restored around the block."""
    device = next(model.parameters()).device
    accelerator = [device.index or 0] if device.type not in ("cpu", "meta") else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=accelerator, device_type=device.type if accelerator else None):
            with torch.no_grad(), eval_mode(model):
                yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


# --------------------------------------------------------------------------- the callback


class AttributionCallback(Callback):
    """Attribute the current model's answers to context texts during training and log the result.

    Args:
        examples: the probes. A list of dicts, or the path of a JSONL file with one dict per
            line, each with ``contexts`` (list of texts), ``question``, optional ``answer``
            (attributed as given; omitted = the current model's greedy answer at each logging
            point), optional ``relevant`` (indices of the texts that truly matter: enables the
            scalars) and optional ``reference`` (expected answer, shown in the table). Or
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
        k: cut-off of ``precision_at_k`` / ``recall_at_k``.
        method_kwargs: further keyword arguments for the attribution method.
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
        top_k_tokens: int | None = 5,
        subsample_ratio: float = 0.4,
        num_subsamples: int = 30,
        seed: int = 0,
        max_new_tokens: int = 64,
        k: int = 5,
        method_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise UserError(f"AttributionCallback: unknown method {method!r}; use one of {', '.join(METHODS)}")
        for name, value in (("top_k_tokens", top_k_tokens or 1), ("num_subsamples", num_subsamples),
                            ("max_new_tokens", max_new_tokens), ("k", k)):
            if value < 1:
                raise UserError(f"AttributionCallback: {name} must be >= 1, got {value}")
        if not 0.0 < subsample_ratio <= 1.0:
            raise UserError(f"AttributionCallback: subsample_ratio must be in (0, 1], got {subsample_ratio}")
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
        self.builtin = examples == BUILTIN
        self.examples: list[AttributionExample] = [] if self.builtin else load_examples(examples)[:num_examples]
        self.num_examples = num_examples
        self.num_distractors = num_distractors
        self.every_n_train_steps = every_n_train_steps or 0
        self.at_validation_end = at_validation_end
        self.at_train_start = at_train_start
        self.model_attr = model_attr
        self.tokenizer_attr = tokenizer_attr
        self.template = template
        self.method = method
        self.params: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if method == "attntrace":
            self.params.update(
                top_k_tokens=top_k_tokens, subsample_ratio=subsample_ratio, num_subsamples=num_subsamples, seed=seed
            )
        accepted = {
            name for name, p in inspect.signature(METHOD_TARGETS[method]).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        unknown = sorted(set(method_kwargs or {}) - accepted)
        if unknown:
            raise UserError(
                f"AttributionCallback: method {method!r} does not take {', '.join(unknown)}; "
                f"its options are {', '.join(sorted(accepted))}"
            )
        self.params.update(method_kwargs or {})
        resolve_template(template)  # an unknown template name fails here, not at the first logging point
        self.k = k
        self.last_results: list[AttributionResult] = []
        """The AttributionResults of the latest logging point (rank zero)."""
        self.last_metrics: dict[str, float] = {}
        """The scalars of the latest logging point."""
        self._previous_step = 0
        self._logged_step: int | None = None

    # ------------------------------------------------------------------ checks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the module offers a causal LM and a tokenizer; resolve ``"builtin"`` examples."""
        from transformers import PreTrainedModel

        check_strategy(trainer, "AttributionCallback")
        where = f"AttributionCallback: {type(pl_module).__name__}"
        model = getattr(pl_module, self.model_attr, None)
        if model is None:
            raise UserError(
                f"{where} has no attribute {self.model_attr!r} (the Hugging Face causal LM to attribute); "
                "set model_attr to the attribute that holds it"
            )
        if not isinstance(unwrap(model), PreTrainedModel):
            raise UserError(
                f"{where}.{self.model_attr} is a {type(model).__name__}, not a Hugging Face PreTrainedModel "
                "(or a PEFT model around one); set model_attr to the attribute that holds the causal LM"
            )
        tokenizer = getattr(pl_module, self.tokenizer_attr, None)
        if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
            raise UserError(
                f"{where} has no tokenizer at attribute {self.tokenizer_attr!r}; "
                "set tokenizer_attr to the attribute that holds the model's Hugging Face tokenizer"
            )
        if self.method in ATTENTION_METHODS:
            from lit_attn.attention import capture_qk

            with capture_qk(model, lambda layer: None):  # raises a UserError naming the architecture
                pass
        strategy = type(trainer.strategy).__name__
        if trainer.world_size > 1 and any(name in strategy for name in ("FSDP", "DeepSpeed", "ModelParallel")):
            raise UserError(
                f"AttributionCallback runs the model on rank zero only, which {strategy} (sharded weights) "
                "cannot do; use DDP or remove the callback"
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
            pieces = tokenize_prompt(tokenizer, template, list(example.contexts), example.question, answer)
            try:
                check_length(model, pieces.full_length - len(answer), max(len(answer), 1))
            except UserError as err:
                raise UserError(f"AttributionCallback example {i}: {err}") from None

    # ------------------------------------------------------------------ triggers

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._previous_step = trainer.global_step
        if self.at_train_start:
            self.log_attribution(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, previous = trainer.global_step, self._previous_step
        self._previous_step = step
        n = self.every_n_train_steps
        if n and step // n > previous // n:
            self.log_attribution(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_validation_end and not trainer.sanity_checking:
            self.log_attribution(trainer, pl_module)

    # ------------------------------------------------------------------ work

    def attribute_examples(self, pl_module: LightningModule) -> list[AttributionResult]:
        """Attribute every example with the module's current model (isolated; see the module docstring)."""
        model = unwrap(getattr(pl_module, self.model_attr))  # a PEFT model's own layers carry the adapters
        tokenizer = getattr(pl_module, self.tokenizer_attr)
        results = []
        with isolated(model):
            for example in self.examples:
                results.append(attribute(
                    model, tokenizer, list(example.contexts), example.question, example.answer,
                    method=self.method, template=self.template, **self.params,
                ))
        return results

    def metrics(self, results: Sequence[AttributionResult]) -> dict[str, float]:
        """The ``attribution/*`` scalars of one logging point (means over examples; see :func:`ranking_metrics`)."""
        rows = [
            ranking_metrics(list(result.scores), example.relevant, self.k)
            for example, result in zip(self.examples, results)
            if example.relevant
        ]
        out = {"attribution/seconds": sum(r.seconds for r in results) / len(results)}
        for name in ("precision_at_k", "recall_at_k", "relevant_share"):
            values = [row[name] for row in rows if not math.isnan(row[name])]
            if values:
                out[f"attribution/{name}"] = sum(values) / len(values)
        return out

    def log_attribution(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Attribute, then log scalars, tables and the heatmap at ``trainer.global_step`` (rank zero)."""
        step = trainer.global_step
        if not trainer.is_global_zero or self._logged_step == step or not self.examples:
            return
        self._logged_step = step
        results = self.attribute_examples(pl_module)
        metrics = self.metrics(results)
        self.last_results, self.last_metrics = results, metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        board = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if board is None:
            return
        for i, (example, result) in enumerate(zip(self.examples, results)):
            board.experiment.add_text(f"attribution/example_{i}", result_markdown(example, result, step), global_step=step)
        figure = heatmap_figure(
            self.examples, [r.scores for r in results], f"attribution ({self.method}), step {step}", k=self.k
        )
        board.experiment.add_figure("attribution/heatmap", figure, global_step=step, close=True)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Nothing: the callback holds no state that changes training or what it logs next."""
        return {}
