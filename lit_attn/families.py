"""Which causal LMs lit_attn can score exactly, and a one-line refusal for the others.

Every attention-derived score (FCI of docs/attnrl.md §2, AttnTrace's ``text_scores`` of
docs/attribution.md §2) comes from :mod:`lit_attn.attention.capture`: the post-RoPE queries and
keys of each layer, the layer's own mask (causal, padding, sliding window), its scaling and its
logit soft-cap give the softmax rows. A model is scorable when that is all its attention does.
:func:`check_scorable` refuses, in one line naming the family and what to do:

* attention that does not go through transformers' AttentionInterface (Falcon, and anything
  with its own attention code): nothing to capture;
* ALiBi / position biases added inside the model's own attention code (Bloom, MPT, Falcon with
  ``alibi``): the captured q·k lack the bias;
* learned attention-sink logits (GPT-OSS): the softmax has an extra column the rows lack;
* bidirectional attention (``use_bidirectional_attention``): the rows are causal;
* anything else the probe finds: a short forward under capture must give the model's own eager
  outputs and its rows the model's own eager attention weights (``output_attentions``), else
  the model does something the capture does not reproduce (sparse or block-sparse attention,
  extra score terms, an attention that exists only as a flash / flex / hub kernel).

docs/models.md ("Attention scores across families") lists what scores exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from lit_attn.attention.capture import (
    CapturedLayer,
    _all_configs,
    _not_supported,
    _raw_implementation,
    _restore_implementation,
    architecture_name,
    capture_qk,
    check_all_layers_captured,
)
from lit_attn.compat import transformer_body
from lit_attn.errors import UserError, one_line
from lit_attn.lora import unwrap
from lit_attn.models import eval_mode, model_device

PROBE_LENGTH = 24
"""Tokens of the probe forward of :func:`check_scorable`."""

SCORE_FREE_METHODS = "a method that needs no attention scores (leave_one_out attribution, EntropyBranchCallback)"
"""What a user of a refused model can still run."""


def _text_config(model: PreTrainedModel) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _uses_alibi(config: Any) -> bool:
    """ALiBi: Bloom always; Falcon with ``alibi``; MPT with ``attn_config.alibi``."""
    if getattr(config, "model_type", None) == "bloom" or getattr(config, "alibi", False) is True:
        return True
    attn_config = getattr(config, "attn_config", None)
    if isinstance(attn_config, dict):
        return bool(attn_config.get("alibi", False))
    return bool(getattr(attn_config, "alibi", False))


def _refuse(model: PreTrainedModel, what: str, fix: str = "") -> UserError:
    return UserError(
        f"{architecture_name(model)} {what}, which lit_attn's attention scores (FCI, AttnTrace) cannot reproduce "
        f"exactly; {fix or 'use a model with plain softmax attention (Qwen2, Llama, Mistral, Gemma, Phi-3, ...)'} "
        f"or {SCORE_FREE_METHODS}"
    )


def check_model(model: Any, where: str, *, fix: str, scorable: bool = True) -> PreTrainedModel:
    """The callbacks' one model probe: ``model`` (named ``where`` in the message) must be a Hugging
    Face PreTrainedModel or a PEFT model around one, else a one-line :class:`UserError` ending in
    ``fix``; with ``scorable``, its attention scores must be exact too (:func:`check_scorable`).
    Returns the Hugging Face model (unwrapped)."""
    base = unwrap(model)
    if not isinstance(base, PreTrainedModel):
        raise UserError(
            f"{where} is a {type(model).__name__}, not a Hugging Face PreTrainedModel (or a PEFT model around one); {fix}"
        )
    if scorable:
        check_scorable(base)
    return base


def check_scorable(model: nn.Module, *, probe: bool = True) -> None:
    """Raise a one-line :class:`UserError` unless lit_attn can compute ``model``'s attention
    scores exactly (see the module docstring). ``model`` may be a PEFT model.

    With ``probe`` (and weights that are not on the meta device) a forward of
    :data:`PROBE_LENGTH` tokens under capture is compared with the model's own eager forward:
    same outputs, and captured rows equal to its eager attention weights.
    """
    model = unwrap(model)
    if not isinstance(model, PreTrainedModel):
        raise UserError(
            f"attention scores need a Hugging Face PreTrainedModel (or a PEFT model around one), got "
            f"{type(model).__name__}; hold the causal LM in the module's model attribute"
        )
    config = _text_config(model)
    if _uses_alibi(config):
        raise _refuse(model, "adds ALiBi position biases inside its own attention code")
    can_set = getattr(type(model), "_can_set_attn_implementation", None)
    if can_set is not None and not can_set():
        raise _not_supported(model)
    if any(name.rsplit(".", 1)[-1] in ("sinks", "s_aux") for name, _ in model.named_parameters()):
        raise _refuse(model, "adds learned attention-sink logits to every softmax")
    if getattr(config, "use_bidirectional_attention", False):
        raise _refuse(model, "attends both ways (bidirectional attention)", "use a causal (decoder-only) model")
    with capture_qk(model, lambda layer: None):  # the implementation switch itself may refuse
        pass
    if probe and not any(p.is_meta for p in model.parameters()):
        _probe(model)


@contextmanager
def _implementation(model: PreTrainedModel, name: str) -> Iterator[None]:
    """``model`` with attention implementation ``name`` for the block, each config restored after."""
    saved = [(config, _raw_implementation(config)) for config in _all_configs(model)]
    try:
        model.set_attn_implementation(name)
        yield
    finally:
        for config, value in saved:
            _restore_implementation(config, value)


def _tolerance(dtype: torch.dtype) -> float:
    """Largest difference of probe outputs (relative to their largest entry) and of attention
    weights that counts as equal: rounding of sdpa against eager."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 5e-2


@torch.no_grad()
def _probe(model: PreTrainedModel) -> None:
    """The behavioural check of :func:`check_scorable`: capture forward against eager forward."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = ((torch.arange(PROBE_LENGTH) * 7 + 3) % max(1, vocab - 1) + 1)[None].to(model_device(model))
    decoder = transformer_body(model)
    rows: list[torch.Tensor] = []

    def consumer(layer: CapturedLayer) -> None:
        rows.append(layer.attention_rows(slice(0, layer.query_length))[0])

    with eval_mode(model):
        with capture_qk(model, consumer) as session:
            captured = decoder(input_ids=ids, use_cache=False).last_hidden_state.float()
        check_all_layers_captured(session)
        try:
            with _implementation(model, "eager"):
                eager = decoder(input_ids=ids, use_cache=False, output_attentions=True)
        except (ValueError, NotImplementedError, RuntimeError, TypeError) as err:
            raise _refuse(
                model, f"has no eager attention to check the capture against ({one_line(err)})"
            ) from None
    tolerance = _tolerance(next(model.parameters()).dtype)
    reference = eager.last_hidden_state.float()
    change = float((captured - reference).abs().max()) / max(1.0, float(reference.abs().max()))
    if not change <= tolerance:
        raise _refuse(model, f"changes its outputs under lit_attn's attention capture (relative difference {change:.2g})")
    maps = [a for a in (eager.attentions or ()) if a is not None]
    if len(maps) != len(rows) or any(a.shape[-2:] != r.shape[-2:] for a, r in zip(maps, rows)):
        return  # the eager forward does not report comparable weights: the output check stands
    gap = max(float((r - a[0].float()).abs().max()) for r, a in zip(rows, maps))
    if not gap <= tolerance:
        raise _refuse(model, f"has attention weights the captured rows do not reproduce (largest difference {gap:.2g})")
