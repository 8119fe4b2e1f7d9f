"""Loading policies: any local Hugging Face causal LM, or a tiny model built from config.

No hub access, ever: a path that does not exist on local disk is an error, not a download.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from lit_attn.compat import sdpa_runs_the_attention
from lit_attn.errors import UserError, one_line

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
"""The shipped warm-started default policy (see ``python -m lit_attn sft``)."""

Architecture = Literal[
    "qwen2", "llama", "gpt2", "qwen2-sliding", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "olmo2", "gpt-neox"
]
"""Families :func:`tiny_config` builds; ``tests/test_families.py`` checks each one (docs/models.md)."""

ARCHITECTURES: tuple[str, ...] = Architecture.__args__  # type: ignore[attr-defined]

def context_length(model: torch.nn.Module) -> int | None:
    """The most positions ``model`` takes (its config's ``max_position_embeddings``, or the
    older names ``n_positions``, ``max_sequence_length``, ``seq_length``; of the text config for
    a multimodal model), or None when its config names no limit."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cache_keyword(model: torch.nn.Module) -> str:
    """Name of the forward argument that takes a KV cache (``cache`` from transformers 5.2x,
    ``past_key_values`` before and in some architectures)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def check_head_sizes(hidden_size: int, num_heads: int, num_kv_heads: int | None = None, *, prefix: str = "") -> None:
    """Refuse attention sizes a model cannot be built with, in one line: ``hidden_size`` must
    split evenly over ``num_heads``, and the query heads evenly over ``num_kv_heads`` (grouped-
    query attention; None for an architecture without it). ``prefix`` names the settings'
    section (``model.`` for ``sft``)."""
    for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
        if value is not None and value < 1:
            raise UserError(f"{prefix}{name} must be >= 1, got {value}; give a positive size")
    if hidden_size % num_heads:
        low = hidden_size // num_heads * num_heads
        near = [n for n in (low, low + num_heads) if n >= num_heads]
        raise UserError(
            f"{prefix}hidden_size={hidden_size} is not divisible by {prefix}num_heads={num_heads} (each head gets "
            f"hidden_size / num_heads dimensions); use a hidden_size of {' or '.join(map(str, near))}, or another "
            "number of heads"
        )
    if num_kv_heads is not None and num_heads % num_kv_heads:
        divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
        raise UserError(
            f"{prefix}num_heads={num_heads} is not divisible by {prefix}num_kv_heads={num_kv_heads} (each key/value "
            f"head serves an equal group of query heads); use num_kv_heads in {divisors}"
        )


def tiny_config(
    architecture: Architecture = "qwen2",
    *,
    vocab_size: int = 100,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 384,
    max_positions: int = 256,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
):
    """A small transformers config of a standard architecture (built, never downloaded)."""
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown architecture {architecture!r}; use one of {', '.join(map(repr, ARCHITECTURES))}")
    kv = None if architecture in ("gpt2", "gpt-neox") else num_kv_heads
    check_head_sizes(hidden_size, num_heads, kv)
    common = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=eos_token_id)
    if architecture == "gpt2":
        return GPT2Config(
            n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_inner=intermediate_size,
            n_positions=max_positions, **common,
        )
    sizes = dict(
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_positions, **common,
    )
    if architecture == "gpt-neox":  # fused QKV, partial rotary (a quarter of each head), parallel residual
        return transformers.GPTNeoXConfig(**sizes, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False)
    sizes["num_key_value_heads"] = num_kv_heads
    window = max(4, max_positions // 16)  # small enough that test sequences cross it
    # every other layer slides (the first two full, as Qwen2's max_window_layers does)
    alternating = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    if architecture == "qwen2":
        return Qwen2Config(**sizes, tie_word_embeddings=True)
    if architecture == "qwen2-sliding":  # Qwen2 with use_sliding_window: the layers from max_window_layers slide
        return Qwen2Config(
            **sizes, tie_word_embeddings=True, use_sliding_window=True, sliding_window=window,
            max_window_layers=num_layers // 2,
        )
    if architecture == "llama":
        return LlamaConfig(**sizes, tie_word_embeddings=True)
    if architecture == "qwen3":  # QK-norm, explicit head_dim
        return transformers.Qwen3Config(**sizes, head_dim=hidden_size // num_heads, tie_word_embeddings=True)
    if architecture == "mistral":  # every layer slides
        return transformers.MistralConfig(**sizes, sliding_window=window, tie_word_embeddings=False)
    if architecture == "gemma2":  # logit soft-capping, a query scale other than 1/sqrt(d), alternating sliding
        return transformers.Gemma2Config(
            **sizes, head_dim=hidden_size // num_heads, query_pre_attn_scalar=hidden_size // num_heads * 2,
            attn_logit_softcapping=5.0, final_logit_softcapping=30.0, sliding_window=window, layer_types=alternating,
        )
    if architecture == "gemma3":  # QK-norm, sliding layers with their own rotary base
        return transformers.Gemma3TextConfig(
            **sizes, head_dim=hidden_size // num_heads, query_pre_attn_scalar=hidden_size // num_heads,
            sliding_window=window, layer_types=alternating,
        )
    if architecture == "phi3":  # fused QKV (and gate/up) projections, partial rotary
        return transformers.Phi3Config(**sizes, partial_rotary_factor=0.5, tie_word_embeddings=False)
    if architecture == "olmo2":  # QK-norm over the whole projection, post-norm blocks
        return transformers.Olmo2Config(**sizes, tie_word_embeddings=False)
    raise AssertionError(architecture)  # pragma: no cover - ARCHITECTURES and the branches above agree


def build_tiny_model(architecture: Architecture = "qwen2", *, seed: int = 0, **kwargs) -> PreTrainedModel:
    """A randomly initialised tiny causal LM (seeded)."""
    torch.manual_seed(seed)
    config = tiny_config(architecture, **kwargs)
    config._attn_implementation = default_attention(config)
    return AutoModelForCausalLM.from_config(config)


def default_attention(config) -> str:
    """``"sdpa"`` where the config's causal-LM class supports it, else ``"eager"`` (Gemma 2:
    sdpa cannot soft-cap attention logits). A class transformers does not map (remote code)
    gets sdpa, which transformers itself checks when it builds the model."""
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if model_class is None:
        return "sdpa"
    # not sdpa either where it would drop a logit soft-cap (Gemma 2 on transformers 4.57)
    return "sdpa" if sdpa_runs_the_attention(model_class, config) else "eager"


def resolve_model_path(name_or_path: str | os.PathLike | None) -> Path:
    """``None`` or ``"default"`` → the shipped model; otherwise an existing local directory."""
    if name_or_path in (None, "", "default"):
        path = DEFAULT_MODEL_DIR
        if not (path / "config.json").is_file():
            raise UserError(
                f"the shipped default model is missing from {path}; "
                "reinstall lit_attn or rebuild it with `python -m lit_attn sft --config lit_attn/configs/sft.yaml`"
            )
        return path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise UserError(
            f"model path {str(name_or_path)!r} does not exist; lit_attn never downloads models — "
            "pass a local directory saved with save_pretrained (model.name_or_path=/path/to/model)"
        )
    if not (path / "config.json").is_file():
        raise UserError(
            f"model path {str(path)!r} has no config.json; pass a directory written by save_pretrained"
        )
    return path


_GENERIC_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast"}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt")
"""Files that hold a tokenizer's vocabulary (any one of them; ``vocab.json`` goes with ``merges.txt``)."""

_TOKENIZER_PROBE = "The answer is 42."
"""Text any usable tokenizer turns into at least one token."""


def _no_tokenizer(path: Path) -> UserError:
    return UserError(
        f"model folder {str(path)!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
        f"copy the model's tokenizer files into it, or save them with tokenizer.save_pretrained({str(path)!r})"
    )


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """Refuse a tokenizer that encodes text as nothing (transformers builds an empty one for a
    folder without tokenizer files), naming the files that are missing."""
    if tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]:
        return
    present = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not present:
        raise _no_tokenizer(path)
    raise UserError(
        f"the tokenizer in {str(path)!r} ({type(tokenizer).__name__}, from {', '.join(present)}) turns text into no "
        "tokens; replace its tokenizer files with the model's own (tokenizer.save_pretrained)"
    )


def load_tokenizer(path: Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``path``, as saved.

    A generic ``tokenizers`` tokenizer (such as the shipped character tokenizer) is loaded as
    is: ``AutoTokenizer`` would pick the class of the model type (e.g. Qwen2Tokenizer) and
    replace its normaliser and pre-tokenizer.

    A folder without tokenizer files, or with files that make a tokenizer that encodes text as
    nothing, is a one-line :class:`UserError` naming the files (:func:`check_tokenizer`).
    """
    config_file = path / "tokenizer_config.json"
    try:
        saved_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
        if saved_class in _GENERIC_TOKENIZERS:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise _no_tokenizer(path) from err
        raise UserError(
            f"cannot load the tokenizer in {str(path)!r}: {one_line(err)}; check its tokenizer files "
            "(tokenizer.json, tokenizer_config.json) or save them again with tokenizer.save_pretrained"
        ) from err
    check_tokenizer(tokenizer, path)
    return tokenizer


def load_policy(
    name_or_path: str | os.PathLike | None = None,
    *,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str = "float32",
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from local disk (offline).

    ``attn_implementation`` None picks sdpa where the family supports it and eager where it does
    not (Gemma 2, whose attention soft-capping sdpa cannot do); the attention scores are exact
    either way (docs/models.md)."""
    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (ValueError, OSError) as err:
        raise UserError(
            f"cannot read the model config {str(path / 'config.json')!r}: {one_line(err)}; fix or replace it "
            "with the config.json that save_pretrained wrote for this model"
        ) from err
    is_causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or any(
        a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in (config.architectures or [])
    )
    if not is_causal:
        raise UserError(
            f"model in {str(path)!r} ({config.model_type}) is not a causal language model; "
            "pass a decoder-only model such as Qwen2, Llama or GPT-2"
        )
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if attn_implementation is None:
        attn_implementation = default_attention(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=True, dtype=dtype,
            attn_implementation=attn_implementation,
        )
    except (SafetensorError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(
            f"cannot load the model weights in {str(path)!r} ({type(err).__name__}: {one_line(err)}); a weights file "
            "is damaged or truncated (an interrupted copy or a full disk?): copy the model again, or save it again "
            "with save_pretrained"
        ) from err
    check_causal(model, path)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


@torch.no_grad()
def check_causal(model: PreTrainedModel, path: Path) -> None:
    """Refuse a model whose output at a position depends on later tokens: an encoder with an
    LM head (e.g. a ``BertLMHeadModel`` saved with ``is_decoder: false``) loads as a causal LM
    but attends both ways. Two short sequences that differ in their last token only are run;
    a causal model gives the same logits at every earlier position."""
    vocab = model.get_input_embeddings().num_embeddings
    if vocab < 4:
        return
    device = model_device(model)
    prefix = [(3 + 7 * i) % (vocab - 1) + 1 for i in range(5)]
    with eval_mode(model):
        first = model(input_ids=torch.tensor([prefix + [1]], device=device)).logits[0, :-1].float()
        second = model(input_ids=torch.tensor([prefix + [2]], device=device)).logits[0, :-1].float()
    change = (first - second).abs().max().item()
    if change > 1e-4 * max(1.0, first.abs().max().item()):
        kind = model.config.model_type
        hint = " (its config.json has is_decoder: false)" if getattr(model.config, "is_decoder", None) is False else ""
        raise UserError(
            f"model in {str(path)!r} ({kind}) is not a causal language model: its attention is bidirectional{hint}, "
            "each position sees later tokens; pass a decoder-only model such as Qwen2, Llama or GPT-2"
        )


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the block; every module's own flag is restored after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
