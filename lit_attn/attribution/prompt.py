"""The attribution prompt, docs/attribution.md §1: ``before ‖ text_1 ‖ sep ‖ … ‖ text_n ‖ after``.

Every piece is tokenised on its own and the ids are concatenated, so each text's token span
is exact and a subset of the texts is one concatenation away (no re-tokenising per round).
For a subword tokenizer the result can differ slightly from tokenising the joined string
(merges across piece boundaries do not happen); for the shipped character-level tokenizer and
the built-in template it is identical to ``tokenizer(format_prompt(contexts, question))``.

Also here: splitting one long document into consecutive texts (``segment`` / ``paragraph`` /
``sentence``; the prompt then holds the document verbatim), the tokenizer's chat template
around the prompt (:func:`chat_template`), and greedy answer generation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_attn.attention.steps import STEP_DELIMITER
from lit_attn.errors import UserError
from lit_attn.models import context_length
from lit_attn.rollout import eos_ids
from lit_attn.sampling import sample_continuations

SPLIT_MODES = ("segment", "paragraph", "sentence")
"""Ways to cut one long document into texts."""

SEGMENT_WORDS = 100
"""Words per text in ``segment`` mode (the reference default)."""


@dataclass(frozen=True)
class PromptTemplate:
    """Where the texts and the question go: ``before ‖ t_1 ‖ sep ‖ … ‖ t_n ‖ after``.

    Args:
        before: text before the first context text.
        sep: text between two context texts.
        after: text after the last context text; must contain ``{question}``.
    """

    before: str = ""
    sep: str = "\n"
    after: str = "\n{question}?" + STEP_DELIMITER

    def __post_init__(self) -> None:
        if "{question}" not in self.after:
            raise UserError(
                f"template 'after' is {self.after!r}; it must contain {{question}} where the question goes"
            )

    def suffix(self, question: str) -> str:
        """``after`` with the question filled in (only ``{question}`` is replaced)."""
        return self.after.replace("{question}", question)


BUILTIN_TEMPLATE = PromptTemplate()
"""The built-in task's format (``lit_attn.tasks.chain.format_prompt``): one fact per line, ``question?``, step delimiter."""

REFERENCE_TEMPLATE = PromptTemplate(
    before="Answer the query using the contexts below.\n\nContexts: ",
    sep="\n",
    after=" \n\nQuery: {question} \n\nAnswer:",
)
"""The shape of the paper's template (``…Contexts: `` before, ``Query: … Answer:`` after)."""

TEMPLATES = {"builtin": BUILTIN_TEMPLATE, "reference": REFERENCE_TEMPLATE}


def resolve_template(template: PromptTemplate | str | None) -> PromptTemplate:
    """``None`` → the built-in template; a name of :data:`TEMPLATES`; or a :class:`PromptTemplate`."""
    if template is None:
        return BUILTIN_TEMPLATE
    if isinstance(template, PromptTemplate):
        return template
    if isinstance(template, str) and template in TEMPLATES:
        return TEMPLATES[template]
    raise UserError(f"unknown template {template!r}; use one of {sorted(TEMPLATES)} or a PromptTemplate")


def _whitespace_cuts(document: str, mode: str, words: int) -> list[int]:
    """Where :func:`split_document` cuts: the start of every whitespace run that ends a text."""
    runs = [m for m in re.finditer(r"\s+", document) if 0 < m.start() and m.end() < len(document)]
    if mode == "segment":
        return [m.start() for i, m in enumerate(runs, start=1) if i % words == 0]
    if mode == "paragraph":
        return [m.start() for m in runs if m.group().count("\n") >= 2]
    return [m.start() for m in runs if document[m.start() - 1] in ".!?"]


def split_document(document: str, mode: str = "segment", *, words: int = SEGMENT_WORDS) -> list[str]:
    """Cut one document into consecutive texts whose concatenation is the document, character
    for character: ``"".join(split_document(d, mode)) == d``.

    Cuts fall only inside whitespace, and the whitespace at a cut opens the next text (the
    document's leading whitespace stays in the first text, its trailing whitespace in the
    last; newlines and runs of spaces are kept as they are). ``segment``: ``words`` words per
    text (a word = a run of non-whitespace); ``paragraph``: a cut at every blank line (a
    whitespace run holding two or more newlines); ``sentence``: a cut after every ``.``,
    ``!`` or ``?`` that whitespace follows. The prompt joins these texts with nothing
    in between (not the template's ``sep``), so the model reads the document verbatim.
    """
    if mode not in SPLIT_MODES:
        raise UserError(f"unknown split mode {mode!r}; use one of {', '.join(SPLIT_MODES)}")
    if mode == "segment" and words < 1:
        raise UserError(f"segment length must be >= 1 word, got {words}")
    if not isinstance(document, str) or not document.strip():
        raise UserError("the document is empty (nothing but whitespace); pass a non-empty document or a list of texts")
    bounds = [0, *_whitespace_cuts(document, mode, words), len(document)]
    return [document[start:end] for start, end in zip(bounds, bounds[1:])]


def _special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The BOS token the tokenizer puts in front of a text, if it does (e.g. Llama)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return [bos] if ids[:1] == [bos] else []


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


@dataclass
class SequenceInput:
    """One ``prompt ‖ answer`` sequence: ids, each included text's span, the answer start."""

    input_ids: list[int]
    text_spans: list[tuple[int, int]]
    answer_start: int
    texts: list[int]
    """Indices (into the original contexts) of the texts in this sequence, in order."""


@dataclass
class TokenizedPrompt:
    """The pre-tokenised pieces of one attribution prompt; :meth:`build` assembles any subset."""

    prefix: list[int]
    texts: list[list[int]]
    sep: list[int]
    suffix: list[int]
    answer: list[int]

    def build(self, keep: Sequence[int] | None = None) -> SequenceInput:
        """The sequence with only the texts ``keep`` (original order kept; others absent)."""
        indices = sorted(range(len(self.texts)) if keep is None else {int(i) for i in keep})
        ids = list(self.prefix)
        spans: list[tuple[int, int]] = []
        for j, i in enumerate(indices):
            if j:
                ids += self.sep
            spans.append((len(ids), len(ids) + len(self.texts[i])))
            ids += self.texts[i]
        ids += self.suffix
        answer_start = len(ids)
        return SequenceInput(input_ids=ids + self.answer, text_spans=spans, answer_start=answer_start, texts=indices)

    @property
    def full_length(self) -> int:
        """Tokens of the prompt with every text, plus the answer."""
        return len(self.build().input_ids)


def check_contexts(contexts: Sequence[str] | str, split: str = "segment") -> list[str]:
    """A list of texts as given, or one string cut by :func:`split_document`; never empty.

    The texts of a cut document are joined with nothing between them (see
    :func:`document_sep`), so the prompt holds the document verbatim."""
    if isinstance(contexts, str):
        return split_document(contexts, split)
    texts = list(contexts)
    if not texts:
        raise UserError("the context list is empty; pass at least one context text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise UserError(f"context text {i} is a {type(text).__name__}, not a string; pass texts as strings")
    return texts


def document_sep(contexts: Sequence[str] | str) -> str | None:
    """The separator between the texts of ``contexts``: ``""`` for one document string (its
    pieces carry their own whitespace), ``None`` (= the template's ``sep``) for a list."""
    return "" if isinstance(contexts, str) else None


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase,
    template: PromptTemplate,
    contexts: Sequence[str],
    question: str,
    answer_ids: Sequence[int] = (),
    *,
    sep: str | None = None,
) -> TokenizedPrompt:
    """Tokenise every piece once; ``sep`` replaces the template's separator (``""`` for the
    texts of one split document). A text with no tokens (it would be missing from the prompt)
    is a :class:`UserError`."""
    if not isinstance(question, str):
        raise UserError(f"the question is a {type(question).__name__}, not a string; pass it as a string")
    texts = [_encode(tokenizer, text) for text in contexts]
    for i, ids in enumerate(texts):
        if not ids:
            raise UserError(
                f"context text {i} is empty, so it would be missing from the prompt; remove it or give it content"
            )
    return TokenizedPrompt(
        prefix=_special_prefix(tokenizer) + _encode(tokenizer, template.before),
        texts=texts,
        sep=_encode(tokenizer, template.sep if sep is None else sep),
        suffix=_encode(tokenizer, template.suffix(question)),
        answer=list(answer_ids),
    )


CHAT_MARKER = "LitAttnPromptMarker"
"""Stand-in for the prompt when :func:`chat_template` renders the tokenizer's chat template."""


def chat_template(template: PromptTemplate, tokenizer: PreTrainedTokenizerBase) -> PromptTemplate:
    """``template`` inside the tokenizer's chat template: the whole prompt (texts, question) as
    the one user message, then the opened assistant turn (``add_generation_prompt``) that the
    answer follows. The message is the prompt verbatim (whitespace that a chat template might
    trim around a message is kept). A BOS token that the chat template writes out is dropped
    from ``before`` when the tokenizer adds BOS itself (it would appear twice)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"the tokenizer ({type(tokenizer).__name__}) has no chat template; "
            "attribute without the chat template, or use a tokenizer that has one"
        )
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": CHAT_MARKER}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(rendered, str) or rendered.count(CHAT_MARKER) != 1:
        raise UserError(
            "the tokenizer's chat template does not copy the user message into the prompt verbatim, so the "
            "texts' positions cannot be known; attribute without the chat template"
        )
    head, tail = rendered.split(CHAT_MARKER)
    bos = tokenizer.bos_token
    if bos and _special_prefix(tokenizer) and head.startswith(bos):
        head = head[len(bos) :]
    return PromptTemplate(before=head + template.before, sep=template.sep, after=template.after + tail)


def check_length(model: PreTrainedModel, prompt_tokens: int, answer_tokens: int) -> None:
    """:class:`UserError` naming both lengths when prompt + answer exceed the model's context."""
    limit = context_length(model)
    if limit is not None and prompt_tokens + answer_tokens > limit:
        raise UserError(
            f"the prompt is {prompt_tokens} tokens plus {answer_tokens} answer tokens = "
            f"{prompt_tokens + answer_tokens}, longer than the model's context of {limit} tokens; "
            "pass fewer or shorter texts, split the document, or use a model with a longer context"
        )


@torch.no_grad()
def generate_answer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int], max_new_tokens: int
) -> list[int]:
    """Greedy answer ids (end-of-sequence and padding dropped), capped by the model's context."""
    limit = context_length(model)
    budget = max_new_tokens if limit is None else min(max_new_tokens, limit - len(prompt_ids))
    check_length(model, len(prompt_ids), 1)
    stop = set(eos_ids(model, tokenizer))
    sampled = sample_continuations(model, tokenizer, [list(prompt_ids)], 1, max_new_tokens=max(1, budget), do_sample=False)
    answer: list[int] = []
    for token in sampled.new_tokens(0):
        if token in stop:
            break
        answer.append(token)
    return answer


def encode_answer(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """Answer ids (no special tokens)."""
    if not isinstance(answer, str):
        raise UserError(f"the answer is a {type(answer).__name__}, not a string; pass it as a string")
    return _encode(tokenizer, answer)
