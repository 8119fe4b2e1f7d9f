"""The differences between the transformers releases lit_attn supports, in one place.

pyproject.toml's pin names the releases; ``.ci/run`` runs ``tests/test_transformers_internals.py``
and the model-family tests on the oldest and the newest of them (docs/models.md, "transformers
releases"). Each helper here takes the newest release's call and translates it for an older one,
choosing by the signature of the transformers function rather than by version number, so a
release that backports a change needs nothing here.

* ``use_gqa_in_sdpa(attention_mask, key, value)``: 5.x passes ``value`` too (head-dim check);
  4.57 takes ``(attention_mask, key)``.
* ``DynamicLayer.lazy_initialization(key_states, value_states)``: 5.x; 4.57 takes
  ``key_states`` only (and keeps the keys' dtype for the values).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from transformers.cache_utils import DynamicLayer

try:
    from transformers.integrations import sdpa_attention as _sdpa_attention
except ImportError:  # pragma: no cover - a release without the module: no log-sum-exp capture
    _sdpa_attention = None

TRANSFORMERS_VERSION: tuple[int, ...] = tuple(
    int(part) for part in transformers.__version__.split(".")[:2] if part.isdigit()
)
"""transformers' (major, minor), e.g. ``(5, 25)`` or ``(4, 57)``."""


def _takes(function: Any, count: int) -> bool:
    """Whether ``function`` accepts ``count`` positional arguments (``self`` excluded for a bound method)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return True
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


repeat_kv = getattr(_sdpa_attention, "repeat_kv", None)
"""transformers' ``repeat_kv`` (the sdpa attention's GQA fallback), or None where it moved."""

_use_gqa_in_sdpa = getattr(_sdpa_attention, "use_gqa_in_sdpa", None)
_GQA_TAKES_VALUE = _use_gqa_in_sdpa is not None and _takes(_use_gqa_in_sdpa, 3)


def _gqa_rule(attention_mask: torch.Tensor | None, key: torch.Tensor, value: torch.Tensor) -> bool:
    """transformers' sdpa GQA rule, called with the arguments this release takes."""
    if _GQA_TAKES_VALUE:
        return bool(_use_gqa_in_sdpa(attention_mask, key, value))
    return bool(_use_gqa_in_sdpa(attention_mask, key))


use_gqa_in_sdpa = _gqa_rule if _use_gqa_in_sdpa is not None else None
"""``use_gqa_in_sdpa(attention_mask, key, value)`` on every supported release (None where
transformers moved it: then lit_attn does not call the flash kernel itself)."""

_LAZY_INIT_TAKES_VALUES = _takes(DynamicLayer.lazy_initialization, 3)  # self, key_states, value_states


def lazy_initialization(layer: DynamicLayer, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
    """``layer.lazy_initialization(key_states, value_states)`` on every supported release."""
    if _LAZY_INIT_TAKES_VALUES:
        layer.lazy_initialization(key_states, value_states)
    else:
        layer.lazy_initialization(key_states)


def sdpa_runs_the_attention(model_class: type, config: Any) -> bool:
    """Whether transformers' sdpa attention computes what the family's eager attention does.

    Not where the class lacks sdpa support, nor where the config soft-caps the attention logits
    (``attn_logit_softcapping``, Gemma 2): transformers 5.x refuses sdpa for Gemma 2, but 4.57
    accepts it and its sdpa silently drops the cap, so the model would not compute Gemma 2's
    attention (and a capture, which applies the cap, would not reproduce its outputs).
    """
    if not getattr(model_class, "_supports_sdpa", False):
        return False
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "attn_logit_softcapping", None) is None


def transformer_body(model: Any) -> Any:
    """The transformer body of a causal LM, the module that returns ``last_hidden_state``:
    ``model.base_model``, or ``model.get_decoder()`` where ``base_model`` is the model itself
    (transformers 4.57's Gemma 2 / Gemma 3 causal LMs, whose ``base_model_prefix`` names no
    attribute). A body passed in is returned as it is."""
    body = getattr(model, "base_model", model)
    if body is model and hasattr(model, "get_decoder"):
        decoder = model.get_decoder()
        if decoder is not None:
            body = decoder
    return body
