"""Per-token log-probabilities (and entropies) of a sequence under a causal LM, memory-lean.

A causal LM's logits are a (B, T, V) tensor; with a 150k-token vocabulary that is the
biggest tensor of an RL step by far, and the loss only needs one number per position
(the log-prob of the token that actually follows) plus, optionally, the entropy.

:func:`token_logprobs` therefore runs only the transformer body (``model.base_model``) to
get the (B, T, H) hidden states, then applies the LM head, the temperature and a
log-softmax to ``chunk_size`` positions at a time, keeping just the gathered log-prob (and
entropy) of each chunk. When gradients are needed, each chunk runs under activation
checkpointing, so the backward pass re-creates that chunk's logits instead of keeping all
of them alive: at no point, forward or backward, do the full logits exist. The values and
gradients are those of the plain ``log_softmax(model(...).logits / temperature)``
computation (half-precision logits are upcast to float32 per chunk, which only makes
such models more exact).

Left padding is supported: position ids are derived from the attention mask, so a padded
sequence gets the same numbers as the unpadded one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from lit_attn.lora import unwrap
from lit_attn.models import cache_keyword

DEFAULT_CHUNK_SIZE = 256


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits, -1)`` gathered at ``index`` (shape ``logits.shape[:-1]``)."""
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only attended tokens, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _split_model(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (returns hidden states) and the LM head of a HF causal LM (of the
    model inside, for a PEFT model: its layers carry the adapters)."""
    model = unwrap(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise TypeError(f"{type(model).__name__} has no output embeddings (LM head); pass a causal LM")
    base = getattr(model, "base_model", model)
    if base is model and hasattr(model, "get_decoder"):
        base = model.get_decoder()
    if base is None or base is model:
        raise TypeError(f"cannot find the transformer body of {type(model).__name__} (model.base_model)")
    return base, head


def _logit_transform(model: nn.Module) -> tuple[float | None, float | None]:
    """(multiplier, soft-cap) that some architectures apply to the LM head's output.

    Known: Gemma-style ``final_logit_softcapping`` (``tanh(x / cap) * cap``), Cohere's
    ``logit_scale`` (multiply), Granite's ``logits_scaling`` (divide) and HyperCLOVA X's
    ``logits_scaling`` (multiply). Any other non-trivial scaling attribute is refused rather
    than silently ignored.
    """
    config = getattr(model, "config", None)
    if config is None:
        return None, None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    model_type = str(getattr(config, "model_type", "") or "")
    softcap = getattr(config, "final_logit_softcapping", None)
    softcap = float(softcap) if softcap else None
    multiplier: float | None = None
    logit_scale = getattr(config, "logit_scale", None)
    logits_scaling = getattr(config, "logits_scaling", None)
    if model_type.startswith("cohere") and logit_scale is not None:
        multiplier = float(logit_scale)
    elif model_type.startswith("granite") and logits_scaling is not None:
        multiplier = 1.0 / float(logits_scaling)
    elif model_type.startswith("hyperclovax") and logits_scaling is not None:
        multiplier = float(logits_scaling)
    elif logit_scale not in (None, 1, 1.0) or logits_scaling not in (None, 1, 1.0):
        raise NotImplementedError(
            f"{type(model).__name__} ({model_type}) scales its logits (logit_scale={logit_scale!r}, "
            f"logits_scaling={logits_scaling!r}) in a way lit_attn.logprobs does not know"
        )
    if multiplier == 1.0:
        multiplier = None
    return multiplier, softcap


def _chunk_stats(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    temperature: float,
    scale: float | None,
    softcap: float | None,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``targets`` (and entropies; empty tensor if not wanted) for one chunk."""
    logits = head(hidden)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if temperature != 1.0:
        logits = logits / temperature
    if not with_entropy:
        return selective_log_softmax(logits, targets), logits.new_empty(0)
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return picked, entropy


def token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``input_ids[:, 1:]`` given their prefixes, computed chunk by chunk.

    Args:
        model: a Hugging Face causal LM (``...ForCausalLM`` / ``...LMHeadModel``).
        input_ids: (B, T) token ids, left-padded.
        attention_mask: (B, T), 1 for real tokens, 0 for padding.
        chunk_size: number of positions whose logits are materialised at once.
        temperature: logits are divided by it (the sampling temperature, > 0: checked where it is
            set, :func:`lit_attn.settings.check_temperature`).
        with_entropy: also return the entropy of each full next-token distribution.

    Returns:
        ``(logprobs, entropy)``, both (B, T-1), float32 for half-precision models and the
        model's dtype otherwise; ``entropy`` is ``None`` unless
        ``with_entropy``. Entry ``t`` scores token ``t + 1``. Entries whose target is padding
        hold whatever the model computes there: mask them out. Gradients flow to the model
        when autograd is enabled.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape {tuple(input_ids.shape)}"
        )
    if input_ids.shape[1] < 2:
        raise ValueError(f"need at least 2 positions to score a next token, got shape {tuple(input_ids.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    base, head = _split_model(model)
    outputs = base(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    return _head_stats(model, head, hidden[:, :-1], input_ids[:, 1:], chunk_size, temperature, with_entropy)


SHAREABLE_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})
"""Attention layer kinds whose KV cache :func:`continuation_logprobs` reuses exactly: full
attention (transformers' ``DynamicLayer`` keeps every position) and sliding-window attention
(``DynamicSlidingWindowLayer`` keeps the last ``window - 1`` positions, all that a later token
may attend to; the model builds the same window mask on both paths)."""


def can_share_prefixes(model: nn.Module) -> bool:
    """Whether :func:`continuation_logprobs` can encode shared prefixes once for ``model`` and
    give exactly the numbers and gradients of the plain forward.

    It needs a KV cache whose layers are transformers' ``DynamicLayer`` (full attention) or
    ``DynamicSlidingWindowLayer`` (sliding-window attention: Mistral, Qwen2 with
    ``use_sliding_window``, Gemma 2 / 3's alternating layers), and no activation checkpointing
    (transformers drops the cache of checkpointed layers). Anything else is refused, and
    callers (``lit_attn.ppo.completion_logprobs``) then run the plain full forward: chunked
    attention (Llama 4's ``attention_chunk_size``, which shares the sliding layer class but
    masks by chunk), linear-attention or state-space layers, sparse indexed attention, a config
    the cache cannot read.
    """
    inner = unwrap(model)
    flag = "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing") else "is_gradient_checkpointing"
    if getattr(inner, flag, False):
        return False
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    if getattr(config, "attention_chunk_size", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and not set(layer_types) <= SHAREABLE_LAYER_TYPES:
        return False
    try:
        cache = DynamicCache(config=inner.config)
    except Exception:  # noqa: BLE001 - a config the cache cannot read: take the plain path
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def continuation_logprobs(
    model: nn.Module,
    prefix_ids: torch.Tensor,
    prefix_mask: torch.Tensor,
    prefix_index: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of continuations, each prefix run through the model once for all of them.

    Row ``r`` of ``input_ids`` continues prefix ``prefix_index[r]``. The same numbers (and
    gradients) as :func:`token_logprobs` on the concatenated rows, restricted to the
    continuation tokens, but a prefix shared by ``k`` rows costs one forward instead of
    ``k``: the prefixes fill a KV cache (gradients flow through it), the cache rows are
    repeated to the continuations, and the continuations attend to them. This is how a GRPO
    group's G completions share their prompt.

    Sliding-window layers cache only the last ``window - 1`` prefix positions, which is all a
    continuation token can see; Gemma 2's final-logit soft-capping and other head transforms
    are applied as in :func:`token_logprobs`. ``tests/test_family_rollouts.py`` checks values
    and gradients against the plain forward for every family of ``lit_attn.models.ARCHITECTURES``.

    Args:
        model: a Hugging Face causal LM; where :func:`can_share_prefixes` does not hold, the
            rows are written out in full and run through :func:`token_logprobs` (same numbers,
            no saving).
        prefix_ids, prefix_mask: (D, P) distinct prefixes, left-padded.
        prefix_index: (R,) long, the prefix of each continuation.
        input_ids, attention_mask: (R, C) continuations, right-padded.
        chunk_size, temperature, with_entropy: as in :func:`token_logprobs`.

    Returns:
        ``(logprobs, entropy)``, both (R, C): entry ``t`` scores ``input_ids[:, t]`` (the
        first from the prefix's last position).
    """
    if prefix_ids.dim() != 2 or input_ids.dim() != 2 or prefix_index.shape != input_ids.shape[:1]:
        raise ValueError(
            f"need (D, P) prefixes, (R,) prefix_index and (R, C) continuations, got {tuple(prefix_ids.shape)}, "
            f"{tuple(prefix_index.shape)}, {tuple(input_ids.shape)}"
        )
    if not can_share_prefixes(model):  # the plain forward on the rows written out in full
        width = prefix_ids.shape[1]
        logprobs, entropy = token_logprobs(
            model, torch.cat([prefix_ids[prefix_index], input_ids], dim=1),
            torch.cat([prefix_mask[prefix_index], attention_mask], dim=1),
            chunk_size=chunk_size, temperature=temperature, with_entropy=with_entropy,
        )
        return logprobs[:, width - 1 :], (entropy[:, width - 1 :] if entropy is not None else None)
    base, head = _split_model(model)
    keyword = cache_keyword(base)
    cache = DynamicCache(config=unwrap(model).config)
    prefix = base(
        input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=position_ids_from_mask(prefix_mask),
        use_cache=True, **{keyword: cache},
    )
    last = (prefix.last_hidden_state if hasattr(prefix, "last_hidden_state") else prefix[0])[:, -1]
    cache.batch_select_indices(prefix_index)
    full_mask = torch.cat([prefix_mask[prefix_index], attention_mask], dim=1)
    outputs = base(
        input_ids=input_ids, attention_mask=full_mask,
        position_ids=position_ids_from_mask(full_mask)[:, prefix_ids.shape[1]:], use_cache=True, **{keyword: cache},
    )
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    hidden = torch.cat([last[prefix_index].unsqueeze(1), hidden[:, :-1]], dim=1)
    return _head_stats(model, head, hidden, input_ids, chunk_size, temperature, with_entropy)


def _head_stats(
    model: nn.Module, head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int,
    temperature: float, with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's log-probs of ``targets`` (and entropies) from ``hidden``, ``chunk_size``
    positions at a time (each chunk recomputed in the backward pass when gradients flow)."""
    scale, softcap = _logit_transform(model)
    recompute = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    logprob_chunks: list[torch.Tensor] = []
    entropy_chunks: list[torch.Tensor] = []
    for start in range(0, hidden.shape[1], chunk_size):
        args = (
            hidden[:, start : start + chunk_size],
            targets[:, start : start + chunk_size],
            head, temperature, scale, softcap, with_entropy,
        )
        if recompute:
            picked, entropy = checkpoint(_chunk_stats, *args, use_reentrant=False)
        else:
            picked, entropy = _chunk_stats(*args)
        logprob_chunks.append(picked)
        entropy_chunks.append(entropy)

    logprobs = torch.cat(logprob_chunks, dim=1)
    return logprobs, (torch.cat(entropy_chunks, dim=1) if with_entropy else None)
