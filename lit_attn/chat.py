"""Chat prompts: a record's prompt rendered with the tokenizer's chat template.

A prompt is either plain text or, as in TRL's conversational format, a list of messages::

    {"prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}], "answer": "8"}

A list of messages is always rendered with the model's chat template, followed by the opened
assistant turn (``add_generation_prompt=True``; when the last message is the assistant's, its
text is continued instead, ``continue_final_message=True``, as TRL does). A plain-text prompt
is read as it is, or, with ``data.apply_chat_template: true``, wrapped as the one user message
and rendered the same way. The rendered text is what the model reads, what the length and
spelling checks measure, and what reward functions receive as ``prompts``; the conversation
itself is kept in the record's ``messages`` column (every other column is untouched).

:func:`render_records` is the one place prompts are rendered (``PromptDataModule`` calls it for
every split once the model's tokenizer is known); :func:`check_messages` is the shape check that
:func:`lit_attn.records.load_records` applies to a message-list prompt. docs/chat_models.md
walks through a chat model folder end to end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lit_attn.errors import UserError, one_line

MESSAGES_COLUMN = "messages"
"""The record column that keeps the conversation a rendered prompt came from."""


def is_chat(prompt: Any) -> bool:
    """True for a message-list prompt (TRL's conversational format), False for plain text."""
    return isinstance(prompt, (list, tuple))


def check_messages(messages: Any, where: str, key: str = "prompt") -> list[dict]:
    """The messages of a chat prompt, checked: a non-empty list of objects, each with a
    non-empty string ``role`` and a string ``content`` (other keys are kept for the template).

    Raises:
        UserError: one line naming ``where``, the message (0-based) and the fix.
    """
    example = '[{"role": "user", "content": "..."}]'
    if not isinstance(messages, (list, tuple)) or not messages:
        raise UserError(f"{where}: {key!r} is an empty list of messages; give at least one message, e.g. {example}")
    checked: list[dict] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise UserError(
                f"{where}: {key!r} message {i} is a {type(message).__name__}, not an object; write each message as "
                '{"role": "user", "content": "..."}'
            )
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role.strip():
            got = "missing" if role is None else f"{role!r}"
            raise UserError(
                f"{where}: {key!r} message {i} has role {got}; give every message a role "
                '("system", "user" or "assistant")'
            )
        if not isinstance(content, str):
            got = "missing" if content is None else f"a {type(content).__name__}"
            raise UserError(
                f"{where}: {key!r} message {i} ({role}) has content {got}; it must be a string (text-only chat prompts)"
            )
        checked.append(dict(message))
    if not any(m["content"].strip() for m in checked):
        raise UserError(f"{where}: every message of {key!r} is empty; give the prompt some text")
    return checked


def as_messages(prompt: str | Sequence[dict]) -> list[dict]:
    """A chat prompt's messages; plain text becomes the one user message."""
    return [dict(m) for m in prompt] if is_chat(prompt) else [{"role": "user", "content": prompt}]


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its BOS token in front of every text it encodes (e.g. Llama)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def render_prompt(prompt: str | Sequence[dict], tokenizer: Any, *, bos_added: bool | None = None) -> str:
    """``prompt`` (messages, or plain text as the one user message) in the tokenizer's chat
    template, ending with the opened assistant turn (or inside the final assistant message).

    A BOS token that the template writes out is dropped when the tokenizer adds BOS itself
    (``bos_added``; worked out when None), so the model reads one BOS, not two.

    Raises:
        UserError: the tokenizer has no chat template, or the template fails on the messages.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"the model's tokenizer ({type(tokenizer).__name__}) has no chat template, but the prompts are chat "
            "messages (or data.apply_chat_template is true); use a model folder whose tokenizer_config.json or "
            "chat_template.jinja holds one (docs/chat_models.md), or write the prompts as plain strings with "
            "data.apply_chat_template false"
        )
    messages = as_messages(prompt)
    final = messages[-1]["role"] == "assistant"
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not final, continue_final_message=final,
        )
    except Exception as err:  # noqa: BLE001 - a template's own errors (jinja raise_exception, ...) are the user's
        raise UserError(
            f"the tokenizer's chat template failed on the messages {_roles(messages)}: {one_line(err)}; "
            "give the roles in the order the model's template accepts"
        ) from err
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and (adds_bos(tokenizer) if bos_added is None else bos_added):
        text = text[len(bos) :]
    return text


def render_records(
    records: Sequence[dict], tokenizer: Any | None, *, apply_chat_template: bool = False, where: str = "data"
) -> list[dict]:
    """The records with every prompt ready for the model.

    Message-list prompts are rendered (:func:`render_prompt`); plain-text prompts are too with
    ``apply_chat_template``, and are left as they are without it. A rendered record's ``prompt``
    is the rendered text and its ``messages`` the conversation; the other columns are kept as
    they are. Records that need no rendering are returned as the same objects.

    Raises:
        UserError: one line: a split mixes plain-text and message prompts without
            ``apply_chat_template``; rendering is needed but no tokenizer is known; a record
            already has a ``messages`` column; or :func:`render_prompt`'s errors.
    """
    chats = [i for i, r in enumerate(records) if is_chat(r.get("prompt"))]
    if not chats and not apply_chat_template:
        return list(records)
    if chats and not apply_chat_template and len(chats) < len(records):
        plain = next(i for i, r in enumerate(records) if not is_chat(r.get("prompt")))
        raise UserError(
            f"{where}: record {plain} has a plain-text prompt while record {chats[0]} is a list of messages; write every "
            "prompt as messages, or set data.apply_chat_template true to wrap plain prompts as one user message"
        )
    if tokenizer is None:
        raise UserError(
            f"{where}: chat prompts are rendered with the model's tokenizer, which the data module was not given; "
            "call datamodule.use_tokenizer(tokenizer) (PolicyModule does it when it checks the data)"
        )
    bos_added = adds_bos(tokenizer)
    rendered: list[dict] = []
    for i, record in enumerate(records):
        if MESSAGES_COLUMN in record:
            raise UserError(
                f"{where}: record {i} has a {MESSAGES_COLUMN!r} column, where a rendered chat prompt keeps its "
                "conversation; rename that column"
            )
        prompt = record["prompt"]
        rendered.append(
            {**record, "prompt": render_prompt(prompt, tokenizer, bos_added=bos_added), MESSAGES_COLUMN: as_messages(prompt)}
        )
    return rendered


def _roles(messages: Sequence[dict]) -> str:
    """``[system, user, assistant]``: the roles of a conversation, for messages."""
    return "[" + ", ".join(str(m.get("role")) for m in messages) + "]"
