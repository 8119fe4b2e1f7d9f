"""``python -m lit_attn attribute``: score the context texts of every example of a JSONL file.

Examples::

    python -m lit_attn attribute --input examples.jsonl                     # shipped model, AttnTrace
    python -m lit_attn attribute --model /path/to/model --input ex.jsonl --output scores.jsonl
    python -m lit_attn attribute --input ex.jsonl --method leave_one_out

Each input line is a JSON object with ``contexts`` (list of texts), ``question``, and optional
``answer`` (generated greedily when absent) and ``relevant`` (indices of the true texts, marked
in the printed table and copied to the output). A ranked table is printed per example; with
``--output`` every result is written as one JSON line, to a temporary file renamed at the end
(a failed run leaves no half-written output). Bad input ends with one line
``error: <problem>; <fix>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_attn.attribution.baselines import METHODS, attribute
from lit_attn.attribution.prompt import TEMPLATES
from lit_attn.errors import UserError
from lit_attn.records import jsonl_rows

_TRACE_ONLY = ("top_k", "num_subsamples", "subsample_ratio", "seed")


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UserError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; `python -m lit_attn attribute --help` lists the options")


def build_parser() -> argparse.ArgumentParser:
    """The ``attribute`` subcommand's arguments."""
    parser = _Parser(prog="python -m lit_attn attribute", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="local model directory (default: the shipped model)")
    parser.add_argument("--input", required=True, help="JSONL file: contexts, question, [answer], [relevant]")
    parser.add_argument("--output", default=None, help="JSONL file to write the scores to")
    parser.add_argument("--method", default="attntrace", choices=METHODS, help="attribution method")
    parser.add_argument("--top-k", type=int, default=None, help="AttnTrace: tokens averaged per text, 0 = all (5)")
    parser.add_argument("--num-subsamples", type=int, default=None, help="AttnTrace: rounds B (30)")
    parser.add_argument("--subsample-ratio", type=float, default=None, help="AttnTrace: fraction ρ per round (0.4)")
    parser.add_argument("--seed", type=int, default=None, help="AttnTrace: seed of the draws (0)")
    parser.add_argument("--template", default="builtin", choices=sorted(TEMPLATES), help="prompt template")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length when it is generated")
    parser.add_argument("--show", type=int, default=10, help="rows of the printed table per example")
    return parser


def method_params(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`~lit_attn.attribution.attribute` for the chosen method."""
    params: dict[str, Any] = {
        "template": args.template, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
    }
    given = [name for name in _TRACE_ONLY if getattr(args, name) is not None]
    if args.method != "attntrace":
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UserError(f"{flag} applies to --method attntrace only; drop it or use --method attntrace")
        return params
    if args.top_k is not None:
        params["top_k_tokens"] = None if args.top_k == 0 else args.top_k
    for name in ("num_subsamples", "subsample_ratio", "seed"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    return params


def _check_example(raw: Any, where: str) -> dict[str, Any]:
    """The fields of one input line, checked; :class:`UserError` naming the line otherwise."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(raw).__name__}; write one object per line")
    contexts = raw.get("contexts")
    if not isinstance(contexts, list) or not all(isinstance(t, str) for t in contexts):
        raise UserError(f"{where}: 'contexts' must be a list of strings; add the context texts as a JSON list")
    if not contexts:
        raise UserError(f"{where}: 'contexts' is empty; give at least one context text")
    if not isinstance(raw.get("question"), str):
        raise UserError(f"{where}: 'question' must be a string; add the question")
    answer = raw.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise UserError(f"{where}: 'answer' must be a string when given; quote it or drop it")
    relevant = raw.get("relevant")
    if relevant is not None and not (
        isinstance(relevant, list)
        and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(contexts) for i in relevant)
    ):
        raise UserError(
            f"{where}: 'relevant' must be a list of text indices in [0, {len(contexts)}); fix or drop it"
        )
    return {"contexts": contexts, "question": raw["question"], "answer": answer, "relevant": relevant}


def read_examples(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(location, example)`` for every non-blank line of a JSONL file, all checked first."""
    if not path.is_file():
        raise UserError(f"input file {str(path)!r} does not exist; pass --input path/to/examples.jsonl")
    examples = [(where, _check_example(value, where)) for where, value in jsonl_rows(path)]
    if not examples:
        raise UserError(f"input file {str(path)!r} holds no examples; add one JSON object per line")
    return examples


def _write_atomically(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write JSONL to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_model(name_or_path: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model with sdpa attention, or eager for an architecture without sdpa support (its
    attention then cannot be captured: AttnTrace names the architecture, leave-one-out works)."""
    from lit_attn.models import load_policy  # heavy: only once the arguments are valid

    try:
        return load_policy(name_or_path)
    except ValueError as err:
        if isinstance(err, UserError) or "scaled_dot_product_attention" not in str(err):
            raise
    return load_policy(name_or_path, attn_implementation="eager")


def run_attribute(argv: list[str], console: Console | None = None) -> None:
    """Run ``attribute`` with ``argv`` (the arguments after the subcommand name)."""
    args = build_parser().parse_args(argv)
    params = method_params(args)
    examples = read_examples(Path(args.input))
    model, tokenizer = load_model(args.model)
    console = console or Console()
    rows: list[dict[str, Any]] = []
    progress = Progress(
        TextColumn("attribute"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )
    with progress:
        task = progress.add_task("examples", total=len(examples))
        for where, example in examples:
            try:
                result = attribute(
                    model, tokenizer, example["contexts"], example["question"], example["answer"],
                    method=args.method, **params,
                )
            except UserError as err:
                raise UserError(f"{where}: {err}") from None
            console.print(result.to_rich_table(example["relevant"], k=args.show))
            row = {"input": where, "contexts": result.contexts, **result.to_dict()}
            if example["relevant"] is not None:
                row["relevant"] = example["relevant"]
            rows.append(row)
            progress.advance(task)
    if args.output:
        _write_atomically(Path(args.output), rows)
        console.print(f"wrote {len(rows)} results to {args.output}", soft_wrap=True, highlight=False)
