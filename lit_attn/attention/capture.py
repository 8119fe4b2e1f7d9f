"""Stream every layer's post-RoPE queries and keys out of a normal Hugging Face forward pass.

One mechanism for all attention-derived scores of the library (FCI of docs/attnrl.md §2,
``text_scores`` of docs/attribution.md §2): nothing ever builds a T×T attention matrix.

How it works: transformers' attention layers call ``ALL_ATTENTION_FUNCTIONS[impl](module, query,
key, value, attention_mask, scaling=..., dropout=..., **kwargs)`` with ``impl`` read from
``config._attn_implementation`` at every call. :func:`capture_qk` registers one extra
implementation, ``"lit_attn_capture"`` (with the sdpa mask builder), switches the model to it
and, for every layer call, first hands a :class:`CapturedLayer` (layer index, queries, keys,
scaling, the mask the layer received) to the caller's *consumer* and computes the layer's
output with the ordinary sdpa implementation — the forward's outputs are those of sdpa. A
layer called with a logit soft-cap (Gemma 2's ``softcap``), and every layer of a model without
sdpa support, runs :func:`eager_attention` instead (transformers' eager attention, op for op:
the model's own outputs), and its rows apply the cap. Layers called with arguments that change
the weights in ways the rows do not reproduce (:data:`REFUSED_ATTENTION_ARGUMENTS`: attention
sinks, position biases, sparse key selection) are refused in one line. The consumer must use
the layer immediately (e.g. :meth:`CapturedLayer.attention_rows` over row blocks and
accumulate), so extra memory stays O(one layer).

A consumer with ``wants_logsumexp = True`` (FCI) also gets each query row's softmax normaliser
(:attr:`CapturedLayer.logsumexp`) from the forward's own attention kernel when that kernel is
torch's CPU flash attention: the layer then calls that kernel directly — exactly what sdpa
would run (same dispatch check, same inputs), so the outputs are unchanged — and keeps the
log-sum-exp it returns. Elsewhere (GPU, other kernels) the consumer gets ``None`` and
:meth:`CapturedLayer.row_logsumexp` computes it.

Example — the per-token attention of AttnTrace's rows R (docs/attribution.md §2) would be a
consumer summing ``layer.attention_rows(rows_index, heads=chunk).sum(dim=(1, 2))`` over layers
and head chunks: O(|R|·T) memory per head chunk, never T×T.

The original attention implementation of every config of the model is restored on exit, also
when the body raises. Capture is meant for full forwards without a KV cache (pass
``use_cache=False``); query ``i`` is aligned with key ``i + (key_length - query_length)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend
from transformers import PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

# The GQA rule of transformers' sdpa attention, to call the kernel exactly as it would; None
# where a release moved them (then no log-sum-exp capture). lit_attn.compat calls it on every
# supported release (4.57 takes no `value`).
from lit_attn.compat import repeat_kv, transformer_body, use_gqa_in_sdpa

from lit_attn.errors import UserError
from lit_attn.lora import unwrap
from lit_attn.logprobs import position_ids_from_mask
from lit_attn.models import eval_mode, model_device

CAPTURE_ATTN_IMPLEMENTATION = "lit_attn_capture"
"""Name under which the capturing attention function is registered in transformers."""

RowSelection = slice | torch.Tensor
"""Query rows: a ``slice`` (step 1) or a 1-D tensor of query indices, shared by the batch."""


@dataclass
class CapturedLayer:
    """One attention layer's inputs, as seen inside the forward pass.

    ``query`` is ``(batch, heads, query_length, head_dim)`` and ``key`` is
    ``(batch, kv_heads, key_length, head_dim)``, both after rotary embeddings, in the model's
    dtype. Query head ``h`` uses key head ``h // (heads // kv_heads)`` (grouped KV heads).
    ``attention_mask`` is the mask the layer received: ``None`` (plain causal), a boolean
    tensor (``True`` = may attend) or an additive float tensor, broadcastable to
    ``(batch, heads, query_length, key_length)``. ``logsumexp`` is ``(batch, heads,
    query_length)``, the natural-log softmax normaliser of each query row as the forward's
    attention kernel computed it, or ``None`` (not asked for, or not available from the kernel:
    use :meth:`row_logsumexp`). ``softcap`` is the layer's attention logit soft-cap (Gemma 2:
    scores become ``softcap · tanh(scaling · q·k / softcap)`` before the mask), ``None`` for none.
    """

    layer_idx: int
    query: torch.Tensor
    key: torch.Tensor
    scaling: float
    attention_mask: torch.Tensor | None
    module: nn.Module = field(repr=False)
    logsumexp: torch.Tensor | None = field(default=None, repr=False)
    softcap: float | None = None
    _keys_fp32: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def num_heads(self) -> int:
        """Number of query heads."""
        return int(self.query.shape[1])

    @property
    def num_kv_heads(self) -> int:
        """Number of key/value heads (``num_heads`` without grouped KV heads)."""
        return int(self.key.shape[1])

    @property
    def query_length(self) -> int:
        """Number of query positions."""
        return int(self.query.shape[2])

    @property
    def key_length(self) -> int:
        """Number of key positions."""
        return int(self.key.shape[2])

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    def _float_keys(self) -> torch.Tensor:
        """fp32 keys ``(batch, kv_heads, key_length, head_dim)``, converted once per layer."""
        if self._keys_fp32 is None:
            self._keys_fp32 = self.key.float()
        return self._keys_fp32

    def attention_rows(
        self,
        rows: RowSelection,
        *,
        heads: slice | None = None,
        trim_keys: bool = False,
        log: bool = False,
    ) -> torch.Tensor:
        """Exact fp32 causal softmax attention rows of the selected queries (their natural logs
        with ``log=True``: a loss on a tiny probability keeps its gradient).

        Args:
            rows: query rows, a contiguous ``slice`` or a 1-D index tensor (same for every
                batch row).
            heads: a contiguous slice of query heads (default all), to bound memory.
            trim_keys: return only the keys up to the last selected row's causal limit (later
                keys would be exactly zero); otherwise all ``key_length`` keys.

        Returns ``(batch, len(heads), len(rows), K')`` in fp32. The causal mask is always
        applied, together with the layer's own mask (padding, sliding window). Rows with no key
        allowed (padding queries) are all zero. Grouped KV heads are handled by a grouped
        matmul (keys are not copied per query head). Memory: O(batch · heads · rows · K').
        """
        scores, fully_masked_possible = self._scores(rows, heads=heads, trim_keys=trim_keys)
        if log:
            logs = torch.log_softmax(scores, dim=-1)
            return torch.nan_to_num_(logs, nan=float("-inf")) if fully_masked_possible else logs
        probs = torch.softmax(scores, dim=-1)
        if fully_masked_possible:
            probs = torch.nan_to_num_(probs, nan=0.0)  # rows with every key masked
        return probs

    def row_logsumexp(self, rows: slice) -> torch.Tensor:
        """``(batch, heads, len(rows))`` fp32 natural-log softmax normaliser of the selected
        query rows: the forward kernel's (:attr:`logsumexp`) when it was captured, else computed
        from the fp32 scores (memory O(batch · heads · rows · key_length)). Rows with every key
        masked give ``-inf``."""
        if self.logsumexp is not None:
            return self.logsumexp[:, :, rows].float()
        scores, _ = self._scores(rows, trim_keys=True)
        return torch.logsumexp(scores, dim=-1)

    def _scores(
        self, rows: RowSelection, *, heads: slice | None = None, trim_keys: bool = False
    ) -> tuple[torch.Tensor, bool]:
        """The fp32 scaled scores of :meth:`attention_rows`, ``-inf`` where masked, and whether
        a row may have every key masked."""
        head_range = range(self.num_heads)[heads if heads is not None else slice(None)]
        if head_range.step != 1:
            raise ValueError("attention_rows takes a contiguous slice of heads (step 1)")
        offset = self.key_length - self.query_length
        device = self.query.device
        if isinstance(rows, slice):
            row_range = range(self.query_length)[rows]
            if row_range.step != 1:
                raise ValueError("attention_rows takes a contiguous slice of rows (step 1) or an index tensor")
            positions = torch.arange(row_range.start, row_range.stop, device=device)
            num_rows = len(row_range)
            first, last = row_range.start, row_range.stop - 1  # no device sync for slices
        else:
            positions = rows.to(device=device, dtype=torch.long).reshape(-1)
            num_rows = int(positions.numel())
            first = int(positions.min()) if num_rows else 0
            last = int(positions.max()) if num_rows else 0
        batch = self.query.shape[0]
        if num_rows == 0 or len(head_range) == 0:
            width = 0 if trim_keys else self.key_length
            return torch.zeros(batch, len(head_range), num_rows, width, device=device), False
        key_end = min(self.key_length, last + 1 + offset) if trim_keys else self.key_length

        # Grouped matmul over the KV heads that the selected query heads use.
        group = self.group_size
        kv_first, kv_end = head_range.start // group, (head_range.stop - 1) // group + 1
        query = self.query[:, kv_first * group : kv_end * group]
        query = query[:, :, rows] if isinstance(rows, slice) else query.index_select(2, positions)
        query = query.float() * self.scaling
        query = query.reshape(batch, kv_end - kv_first, group * num_rows, -1)
        keys = self._float_keys()[:, kv_first:kv_end, :key_end]
        scores = torch.matmul(query, keys.transpose(-1, -2))
        scores = scores.view(batch, (kv_end - kv_first) * group, num_rows, key_end)
        head_offset = head_range.start - kv_first * group
        scores = scores[:, head_offset : head_offset + len(head_range)]
        if self.softcap is not None:  # Gemma 2's logit soft-capping, as its eager attention applies it
            scores = torch.tanh(scores / self.softcap) * self.softcap

        # Causal mask: only keys after the earliest row's limit can be in the future of a row.
        tail_start = max(0, first + offset + 1)
        if tail_start < key_end:
            columns = torch.arange(tail_start, key_end, device=device)
            scores[..., tail_start:].masked_fill_(columns[None, :] > (positions[:, None] + offset), float("-inf"))
        mask = self.attention_mask
        if mask is not None:
            if mask.shape[1] > 1:
                mask = mask[:, head_range.start : head_range.stop]
            mask = mask[..., :key_end]
            mask = mask[:, :, rows] if isinstance(rows, slice) else mask.index_select(2, positions)
            if mask.dtype == torch.bool:
                scores.masked_fill_(~mask, float("-inf"))
            else:
                scores.add_(mask.float())
        return scores, mask is not None or first + offset < 0


LayerConsumer = Callable[[CapturedLayer], None]
"""Receives each layer as it runs; must not keep the tensors beyond the call."""


@dataclass
class CaptureSession:
    """What a :func:`capture_qk` block has seen: the layer indices, in call order."""

    model: PreTrainedModel
    consumer: LayerConsumer
    layers_seen: list[int] = field(default_factory=list)
    eager: bool = False
    """The model has no sdpa attention (``_supports_sdpa`` false): layers run :func:`eager_attention`."""
    _calls_this_forward: int = 0

    def next_layer_index(self, module: nn.Module) -> int:
        """The module's ``layer_idx``, or the call count within the current forward."""
        index = getattr(module, "layer_idx", None)
        if index is None:
            index = self._calls_this_forward
        self._calls_this_forward += 1
        return int(index)

    def start_forward(self) -> None:
        """Reset the per-forward call counter (a forward pre-hook calls it)."""
        self._calls_this_forward = 0


# Attention modules of models under capture → their session. Keyed by module id so that calls
# from any thread find their session; a model can be under one capture at a time.
_SESSIONS: dict[int, CaptureSession] = {}
_SESSIONS_LOCK = threading.Lock()


REFUSED_ATTENTION_ARGUMENTS: dict[str, str] = {
    "s_aux": "learned attention-sink logits",
    "sinks": "learned attention-sink logits",
    "position_bias": "a position bias added to the attention scores",
    "indices": "sparse attention over selected keys",
    "block_indices": "block-sparse attention over selected keys",
}
"""Arguments that some layers pass to their attention function and that change the attention
weights in a way the captured rows do not reproduce; a capture refuses them (one line)."""


def _refused_argument(module: nn.Module, kwargs: dict[str, Any]) -> UserError | None:
    """The one-line refusal for a layer called with an argument of :data:`REFUSED_ATTENTION_ARGUMENTS`."""
    for name, what in REFUSED_ATTENTION_ARGUMENTS.items():
        if kwargs.get(name) is not None:
            session = _SESSIONS.get(id(module))
            model = architecture_name(session.model) if session is not None else type(module).__name__
            return UserError(
                f"{model} attention uses {what} ({name}=...), which lit_attn's attention scores (FCI, AttnTrace) "
                "cannot reproduce exactly; use a model with plain softmax attention (Qwen2, Llama, Mistral, Gemma, "
                "Phi-3, ...) or a method that needs no attention scores (leave_one_out attribution, EntropyBranchCallback)"
            )
    return None


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """The output ``(batch, query_length, heads, head_dim)`` of transformers' eager attention,
    op for op (grouped KV heads repeated, ``q·kᵀ · scaling``, soft-capping, additive mask with
    the dtype's minimum where masked, fp32 softmax cast back, dropout as the module's mode
    says). Used for layers that sdpa cannot run (a soft-cap) and for eager-only models."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key[:, :, None].expand(-1, -1, groups, -1, -1).flatten(1, 2)
        value = value[:, :, None].expand(-1, -1, groups, -1, -1).flatten(1, 2)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        weights = weights / softcap
        weights = torch.tanh(weights)
        weights = weights * softcap
    minimum = torch.finfo(weights.dtype).min
    if attention_mask is None:  # plain causal (the sdpa mask builder skips the mask then)
        query_length, key_length = query.shape[2], key.shape[2]
        rows = torch.arange(query_length, device=query.device)[:, None] + (key_length - query_length)
        allowed = torch.arange(key_length, device=query.device)[None, :] <= rows
        attention_mask = allowed[None, None]
    if attention_mask.dtype == torch.bool:  # as transformers' eager mask builder writes it
        attention_mask = torch.where(attention_mask, torch.tensor(0.0, dtype=weights.dtype, device=weights.device), minimum)
    weights = weights + attention_mask[..., : key.shape[-2]]
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous()


def _capturing_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The registered attention function: run sdpa (or, for a soft-capped layer or an
    eager-only model, :func:`eager_attention`), report q/k (and, when asked for and available,
    the log-sum-exp) to the session."""
    session = _SESSIONS.get(id(module))
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if session is None:
        return sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    refused = _refused_argument(module, kwargs)
    if refused is not None:
        raise refused
    layer_idx = session.next_layer_index(module)
    session.layers_seen.append(layer_idx)
    effective_scaling = float(scaling) if scaling is not None else float(query.shape[-1]) ** -0.5
    softcap = kwargs.get("softcap")
    softcap = float(softcap) if softcap is not None else None
    logsumexp = None
    flash = None
    if softcap is not None or session.eager:
        result = (eager_attention(module, query, key, value, attention_mask, effective_scaling, dropout, softcap), None)
    else:
        if getattr(session.consumer, "wants_logsumexp", False):
            flash = _cpu_flash_with_logsumexp(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
        if flash is None:
            result = sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        else:
            output, logsumexp = flash
            result = (output, None)
    session.consumer(
        CapturedLayer(
            layer_idx=layer_idx, query=query, key=key, scaling=effective_scaling,
            attention_mask=attention_mask, module=module, logsumexp=logsumexp, softcap=softcap,
        )
    )
    return result


def _cpu_flash_with_logsumexp(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    dropout: float,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The layer's sdpa output and log-sum-exp from one call of torch's CPU flash kernel, or
    ``None`` when sdpa would not run that kernel here (then the caller runs sdpa itself).

    Mirrors transformers' sdpa attention for a full no-cache forward (its GQA rule, its
    ``is_causal`` rule) and torch's own sdpa for the flash branch (the dispatch check
    ``torch._fused_sdp_choice`` and its boolean-mask conversion), so the output is the tensor
    sdpa would return; ``tests/test_attention.py`` checks that bit for bit.
    """
    if (
        query.device.type != "cpu"
        or use_gqa_in_sdpa is None
        or torch.is_autocast_enabled("cpu")  # sdpa may be cast there; the kernel called directly would not
        or dropout
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or query.dim() != 4
        or query.shape[2] < 2
        or key.shape[2] != query.shape[2]
    ):
        return None
    enable_gqa = False
    if getattr(module, "num_key_value_groups", 1) > 1:
        if use_gqa_in_sdpa(attention_mask, key, value):
            enable_gqa = True
        else:
            key = repeat_kv(key, module.num_key_value_groups)
            value = repeat_kv(value, module.num_key_value_groups)
    is_causal = kwargs.get("is_causal")
    is_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    is_causal = attention_mask is None and is_causal
    choice = torch._fused_sdp_choice(
        query, key, value, attention_mask, dropout, is_causal, scale=scaling, enable_gqa=enable_gqa
    )
    if choice != SDPBackend.FLASH_ATTENTION.value:
        return None
    mask = attention_mask
    if mask is not None and mask.dtype == torch.bool:  # what sdpa does before calling the kernel
        mask = torch.zeros_like(mask, dtype=query.dtype).masked_fill_(mask.logical_not(), float("-inf"))
    output, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout, is_causal, attn_mask=mask, scale=scaling
    )
    return output.transpose(1, 2).contiguous(), logsumexp


def _register() -> None:
    """Make ``"lit_attn_capture"`` a valid attention implementation (idempotent)."""
    AttentionInterface.register(CAPTURE_ATTN_IMPLEMENTATION, _capturing_attention)
    AttentionMaskInterface.register(CAPTURE_ATTN_IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def architecture_name(model: nn.Module) -> str:
    """A readable architecture name for error messages (e.g. ``Qwen2ForCausalLM (qwen2)``)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    return f"{type(model).__name__} ({model_type})" if model_type else type(model).__name__


def _all_configs(model: PreTrainedModel) -> list[Any]:
    """Every config object the model's attention implementation lives in (sub-configs included)."""
    found: dict[int, Any] = {}
    pending = [model.config] + [m.config for m in model.modules() if isinstance(m, PreTrainedModel)]
    while pending:
        config = pending.pop()
        if config is None or id(config) in found:
            continue
        found[id(config)] = config
        for name in getattr(config, "sub_configs", {}) or {}:
            pending.append(getattr(config, name, None))
    return list(found.values())


def _raw_implementation(config: Any) -> Any:
    """The config's own attention implementation (not resolved through sub-configs)."""
    return getattr(config, "_attn_implementation_internal", None)


def _restore_implementation(config: Any, value: Any) -> None:
    """Put the saved value back on this config only (the public setter would cascade)."""
    setattr(config, "_attn_implementation_internal", value)


def _not_supported(model: nn.Module) -> UserError:
    return UserError(
        f"{architecture_name(model)} does not route its attention through transformers' AttentionInterface, "
        "so lit_attn cannot capture its queries and keys; use a model whose attention layers call "
        "ALL_ATTENTION_FUNCTIONS (Qwen2, Llama, GPT-2, Mistral, ...)"
    )


def check_all_layers_captured(session: CaptureSession) -> None:
    """Raise a clear :class:`UserError` when a forward under capture saw no attention call."""
    if not session.layers_seen:
        raise _not_supported(session.model)


@contextmanager
def capture_qk(model: PreTrainedModel, consumer: LayerConsumer) -> Iterator[CaptureSession]:
    """Within the block, every attention layer of ``model`` reports to ``consumer``.

    Run ordinary forwards of ``model`` (or of its base model) inside the block, preferably with
    ``use_cache=False``; their outputs are the sdpa outputs. On exit — normal or by exception —
    the attention implementation of every config of the model is put back exactly as it was.

    Raises :class:`UserError` for an architecture whose attention layers do not use the
    AttentionInterface (also detectable afterwards: no layer in ``session.layers_seen``). A
    PEFT model is read through the Hugging Face model inside it (whose layers carry the adapters).
    """
    model = unwrap(model)
    if not isinstance(model, PreTrainedModel):
        raise UserError(f"capture needs a transformers PreTrainedModel, got {type(model).__name__}")
    can_set = getattr(type(model), "_can_set_attn_implementation", None)
    if can_set is not None and not can_set():
        raise _not_supported(model)
    _register()
    session = CaptureSession(model=model, consumer=consumer, eager=not getattr(type(model), "_supports_sdpa", True))
    saved = [(config, _raw_implementation(config)) for config in _all_configs(model)]
    module_ids = [id(m) for m in model.modules()]
    with _SESSIONS_LOCK:
        if any(i in _SESSIONS for i in module_ids):
            raise UserError(
                f"{architecture_name(model)} is already under an attention capture; captures of one model cannot nest"
            )
        for i in module_ids:
            _SESSIONS[i] = session
    hooks: list[torch.utils.hooks.RemovableHandle] = []
    try:
        hooks = [
            m.register_forward_pre_hook(lambda _module, _args: session.start_forward())
            for m in model.modules()
            if isinstance(m, PreTrainedModel)
        ]
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(CAPTURE_ATTN_IMPLEMENTATION)
        else:  # pragma: no cover - transformers without the public setter
            model.config._attn_implementation = CAPTURE_ATTN_IMPLEMENTATION
        if model.config._attn_implementation != CAPTURE_ATTN_IMPLEMENTATION:
            raise _not_supported(model)
        yield session
    finally:
        for hook in hooks:
            hook.remove()
        for config, value in saved:
            _restore_implementation(config, value)
        with _SESSIONS_LOCK:
            for i in module_ids:
                if _SESSIONS.get(i) is session:
                    del _SESSIONS[i]


def left_pad_offsets(attention_mask: torch.Tensor) -> list[int]:
    """Number of left-padding tokens per row; :class:`UserError` unless padding is on the left."""
    mask = attention_mask.to(torch.long).cpu()
    if mask.dim() != 2:
        raise UserError(f"attention_mask must be (batch, length), got shape {tuple(mask.shape)}")
    if not torch.all((mask == 0) | (mask == 1)):
        raise UserError("attention_mask must hold only 0 and 1")
    offsets = (mask.shape[1] - mask.sum(dim=1)).tolist()
    for row, pad in enumerate(offsets):
        if not torch.all(mask[row, pad:] == 1):
            raise UserError(f"row {row} of the batch is not left-padded; FCI needs left padding (tokenizer.padding_side='left')")
    return [int(p) for p in offsets]


def capture_forward(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, consumer: LayerConsumer
) -> None:
    """One capture forward of a left-padded batch: every layer goes to ``consumer``.

    The decoder alone runs (the LM head's T × vocab logits are not needed), without a KV cache,
    under ``torch.no_grad`` in eval mode (module modes restored); with padding, positions come
    from ``attention_mask`` and padded keys are masked. Raises if some layer did not report.
    This is the one forward behind FCI and ``text_scores``.
    """
    device = model_device(model)
    forward_kwargs: dict[str, torch.Tensor | bool] = {"input_ids": input_ids.to(device), "use_cache": False}
    if attention_mask is not None and not bool(attention_mask.all()):
        mask = attention_mask.to(device=device, dtype=torch.long)
        forward_kwargs["attention_mask"] = mask
        forward_kwargs["position_ids"] = position_ids_from_mask(mask)
    decoder = transformer_body(model)
    with capture_qk(model, consumer) as session, torch.no_grad(), eval_mode(model):
        decoder(**forward_kwargs)
    check_all_layers_captured(session)
