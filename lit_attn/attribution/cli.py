"""``python -m lit_attn attribute``: score the context texts of every example of a JSONL file.

Examples::

    python -m lit_attn attribute --input examples.jsonl                     # shipped model, AttnTrace
    python -m lit_attn attribute --model /path/to/model --input ex.jsonl --output scores.jsonl
    python -m lit_attn attribute --input ex.jsonl --method leave_one_out
    python -m lit_attn attribute --input ex.jsonl --html report.html          # a page to read in a browser
    python -m lit_attn attribute --model /path/to/chat-model --input ex.jsonl --chat-template \
        --template reference --device cuda:1 --dtype bfloat16 --split paragraph

Each input line is a JSON object with ``contexts`` (a list of texts, or one document string cut
by ``--split`` and read verbatim), ``question``, and optional ``answer`` (generated greedily
when absent), ``relevant`` (indices of the true texts, marked in the printed table and copied
to the output) and ``reference`` (the expected answer, copied to the output) — checked by
:func:`lit_attn.attribution.examples.parse_example`, the rule the AttributionCallback uses too.
A ranked table is printed per example; with ``--output`` every result is written as one JSON
line, to a temporary file renamed at the end (a failed run leaves no half-written output); with
``--html`` one self-contained page shows every example (:mod:`lit_attn.attribution.html_report`),
written the same way. Bad input ends with one line ``error: <problem>; <fix>`` and exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_attn.attribution.baselines import METHODS, attribute
from lit_attn.attribution.examples import AttributionExample, read_jsonl_examples
from lit_attn.attribution.html_files import write_text_atomic
from lit_attn.attribution.html_report import ReportItem, render_page
from lit_attn.attribution.kinds import kind_scalars
from lit_attn.attribution.prompt import SPLIT_MODES, TEMPLATES, PromptTemplate, chat_template, resolve_template
from lit_attn.attribution.result import AttributionResult
from lit_attn.attribution.scores import DEFAULT_TOP_K
from lit_attn.attribution.trace import DEFAULT_NUM_SUBSAMPLES, DEFAULT_SUBSAMPLE_RATIO
from lit_attn.errors import UserError
from lit_attn.files import check_writable_file
from lit_attn.records import write_jsonl
from lit_attn.tokenizer import describe_characters, unknown_characters

_TRACE_ONLY = ("top_k_tokens", "num_subsamples", "subsample_ratio", "seed")
"""The AttnTrace options, by their names in :class:`~lit_attn.attribution.AttnTrace` and the callback."""
DTYPES = ("float32", "bfloat16", "float16")


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UserError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; `python -m lit_attn attribute --help` lists the options")


def build_parser() -> argparse.ArgumentParser:
    """The ``attribute`` subcommand's arguments."""
    parser = _Parser(prog="python -m lit_attn attribute", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="local model directory (default: the shipped model)")
    parser.add_argument("--input", required=True, help="JSONL file: contexts, question, [answer], [relevant], [reference]")
    parser.add_argument("--output", default=None, help="JSONL file to write the scores to")
    parser.add_argument(
        "--html", default=None,
        help="HTML file: one self-contained page with every example (texts shaded by score, top-k, settings)",
    )
    parser.add_argument("--method", default="attntrace", choices=METHODS, help="attribution method")
    parser.add_argument(
        "--top-k-tokens", type=int, default=None, help=f"AttnTrace: tokens averaged per text, 0 = all ({DEFAULT_TOP_K})"
    )
    parser.add_argument("--num-subsamples", type=int, default=None, help=f"AttnTrace: rounds B ({DEFAULT_NUM_SUBSAMPLES})")
    parser.add_argument("--subsample-ratio", type=float, default=None, help=f"AttnTrace: fraction ρ per round ({DEFAULT_SUBSAMPLE_RATIO})")
    parser.add_argument("--seed", type=int, default=None, help="AttnTrace: seed of the draws (0)")
    parser.add_argument("--template", default="builtin", choices=sorted(TEMPLATES), help="prompt template")
    parser.add_argument(
        "--chat-template", action="store_true",
        help="put the prompt into the tokenizer's chat template (one user message, then the assistant turn)",
    )
    parser.add_argument(
        "--split", default="segment", choices=SPLIT_MODES,
        help="how a document given as one 'contexts' string is cut into texts (segment = 100 words)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype", default=None, choices=DTYPES, help="parameter dtype (default: float32 on CPU, bfloat16 on CUDA)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length when it is generated")
    parser.add_argument("--show", type=int, default=10, help="rows of the printed table per example")
    return parser


def method_params(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`~lit_attn.attribution.attribute` for the chosen method."""
    params: dict[str, Any] = {
        "template": args.template, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "split": args.split,
    }
    given = [name for name in _TRACE_ONLY if getattr(args, name) is not None]
    if args.method != "attntrace":
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UserError(f"{flag} applies to --method attntrace only; drop it or use --method attntrace")
        return params
    if args.top_k_tokens is not None:
        params["top_k_tokens"] = None if args.top_k_tokens == 0 else args.top_k_tokens
    for name in ("num_subsamples", "subsample_ratio", "seed"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    return params


def read_examples(path: Path, split: str = "segment") -> list[tuple[str, AttributionExample]]:
    """``(location, example)`` for every non-blank line of a JSONL file, all checked first."""
    if not path.is_file():
        raise UserError(f"input file {str(path)!r} does not exist; pass --input path/to/examples.jsonl")
    examples = read_jsonl_examples(path, split=split)
    if not examples:
        raise UserError(f"input file {str(path)!r} holds no examples; add one JSON object per line")
    return examples


def resolve_device(name: str | None) -> torch.device:
    """``--device``: the named device (checked), or cuda when available, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a device; use cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise UserError(f"--device {name} asks for CUDA, which this machine does not have; use --device cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; pick one of them")
    elif device.type != "cpu":
        raise UserError(f"--device {name!r}: only cpu and cuda devices are supported; use cpu, cuda or cuda:<index>")
    return device


def prompt_template(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase) -> str | PromptTemplate:
    """``--template``, inside the tokenizer's chat template with ``--chat-template``."""
    if not args.chat_template:
        return args.template
    try:
        return chat_template(resolve_template(args.template), tokenizer)
    except UserError as err:
        problem = str(err).split("; ")[0]
        raise UserError(f"--chat-template: {problem}; drop --chat-template") from None


def load_model(
    name_or_path: str | None, device: torch.device | str = "cpu", dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model in ``dtype`` on ``device``, with sdpa attention, or eager for a family without
    sdpa support (:func:`lit_attn.models.load_policy` picks; both are scored exactly, and
    :func:`lit_attn.families.check_scorable` refuses what cannot be)."""
    from lit_attn.models import load_policy  # heavy: only once the arguments are valid

    model, tokenizer = load_policy(name_or_path, dtype=dtype)
    return model.to(device), tokenizer


def check_example_spelling(examples: list[tuple[str, AttributionExample]], tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse, in one line naming the first example and the characters, texts that hold
    characters the tokenizer cannot spell (it would read each as its unknown token)."""
    for where, example in examples:
        for field, value in (("contexts", example.prompt_contexts), ("question", example.question), ("answer", example.answer)):
            bad = unknown_characters(tokenizer, [value] if isinstance(value, str) else list(value or []))
            if bad:
                raise UserError(
                    f"{where}: the model's tokenizer cannot spell {describe_characters(bad)} in {field!r}: it reads each "
                    f"as {tokenizer.unk_token}; write the text in characters the tokenizer knows (the shipped character "
                    "tokenizer spells printable ASCII and newlines), or pass a --model whose tokenizer covers them"
                )


def output_row(where: str, example: AttributionExample, result: AttributionResult) -> dict[str, Any]:
    """One output line: the input's location, the texts (a document's pieces), the result, and
    ``relevant`` / ``reference`` / ``kinds`` / ``injected_answer`` when the input gave them."""
    row = {"input": where, "contexts": result.contexts, **result.to_dict()}
    if example.relevant is not None:
        row["relevant"] = list(example.relevant)
    if example.reference is not None:
        row["reference"] = example.reference
    if example.kinds is not None:
        row["kinds"] = list(example.kinds)
    if example.injected_answer is not None:
        row["injected_answer"] = example.injected_answer
    return row


def check_html_path(path: str | None) -> None:
    """``--html`` must name a file, not a folder (checked before any work)."""
    if path is not None and Path(path).is_dir():
        raise UserError(f"--html {path!r} is a folder; give the path of a file such as {str(Path(path) / 'report.html')!r}")


def html_page(args: argparse.Namespace, items: list[ReportItem]) -> str:
    """The ``--html`` page: every example of the input, with the credit by kind over all of them."""
    subtitle = (
        f"{len(items)} example(s) from {args.input}; model {args.model or 'shipped default'}; method {args.method}; "
        "top-k = the number of ground-truth texts where an example gives them, else 5"
    )
    scalars = kind_scalars([item.example for item in items], [item.result for item in items])
    return render_page(
        f"Attribution: {Path(args.input).name}", items, subtitle=subtitle, scalars=scalars,
        scalars_title="Credit by kind, all examples",
    )


def run_attribute(argv: list[str], console: Console | None = None) -> None:
    """Run ``attribute`` with ``argv`` (the arguments after the subcommand name)."""
    args = build_parser().parse_args(argv)
    params = method_params(args)
    check_html_path(args.html)
    device = resolve_device(args.device)
    for option, target in (("--output", args.output), ("--html", args.html)):
        if target:
            check_writable_file(target, option)  # before the work, not after it
    examples = read_examples(Path(args.input), args.split)
    model, tokenizer = load_model(args.model, device, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.method != "leave_one_out":  # attention scores: refuse, in one line, what they cannot score exactly
        from lit_attn.families import check_scorable

        check_scorable(model)
    check_example_spelling(examples, tokenizer)
    params["template"] = prompt_template(args, tokenizer)
    console = console or Console()
    rows: list[dict[str, Any]] = []
    items: list[ReportItem] = []
    progress = Progress(
        TextColumn("attribute"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )
    with progress:
        task = progress.add_task("examples", total=len(examples))
        for where, example in examples:
            try:
                result = attribute(
                    model, tokenizer, example.prompt_contexts, example.question, example.answer,
                    method=args.method, **params,
                )
            except UserError as err:
                raise UserError(f"{where}: {err}") from None
            console.print(result.to_rich_table(example.relevant, k=args.show))
            rows.append(output_row(where, example, result))
            items.append(ReportItem(where, example, result, k=len(example.relevant) if example.relevant else 5))
            progress.advance(task)
    if args.output:
        write_jsonl(Path(args.output), rows)
        console.print(f"wrote {len(rows)} results to {args.output}", soft_wrap=True, highlight=False)
    if args.html:
        write_text_atomic(Path(args.html), html_page(args, items))
        console.print(f"wrote the page of {len(items)} results to {args.html}", soft_wrap=True, highlight=False)
