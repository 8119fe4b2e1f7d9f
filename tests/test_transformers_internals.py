"""The transformers internals lit_attn relies on, each checked on its own so that a transformers
release that moves one fails here, by name, before anything else breaks in a confusing way.

pyproject.toml pins transformers to the releases these tests ran against; widening the pin
starts with running this file on the new release.
"""

from __future__ import annotations

import inspect

import torch
import transformers
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lit_attn.models import build_tiny_model

WHERE = f"(transformers {transformers.__version__})"


def test_attention_and_mask_registries_that_capture_qk_extends():
    """lit_attn.attention.capture registers an attention function next to ``sdpa``."""
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
    )
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    assert "sdpa" in ALL_ATTENTION_FUNCTIONS, f"ALL_ATTENTION_FUNCTIONS lost 'sdpa' {WHERE}: update lit_attn/attention/capture.py"
    assert "sdpa" in ALL_MASK_ATTENTION_FUNCTIONS, f"ALL_MASK_ATTENTION_FUNCTIONS lost 'sdpa' {WHERE}"
    assert callable(getattr(AttentionInterface, "register", None)), f"AttentionInterface.register moved {WHERE}"
    assert callable(getattr(AttentionMaskInterface, "register", None)), f"AttentionMaskInterface.register moved {WHERE}"
    params = list(inspect.signature(ALL_ATTENTION_FUNCTIONS["sdpa"]).parameters)
    assert params[:5] == ["module", "query", "key", "value", "attention_mask"], (
        f"the attention-function signature changed to {params} {WHERE}: update capture._capturing_attention"
    )


def test_the_raw_attention_implementation_field_capture_saves_and_restores():
    """capture_qk saves ``config._attn_implementation_internal`` per (sub-)config and puts it back."""
    model = build_tiny_model("qwen2")
    assert hasattr(model.config, "_attn_implementation_internal"), f"config._attn_implementation_internal moved {WHERE}"
    model.config._attn_implementation_internal = "eager"
    assert model.config._attn_implementation == "eager", (
        f"_attn_implementation no longer reads _attn_implementation_internal {WHERE}: update capture._raw_implementation"
    )
    assert callable(getattr(model, "set_attn_implementation", None)), f"PreTrainedModel.set_attn_implementation moved {WHERE}"


def test_dynamic_layer_api_that_the_reserved_cache_subclasses():
    """lit_attn.kv_cache.ReservedLayer subclasses DynamicLayer and overrides its storage."""
    for name in ("update", "lazy_initialization", "batch_select_indices", "batch_repeat_interleave", "crop",
                 "get_seq_length"):
        assert callable(getattr(DynamicLayer, name, None)), f"DynamicLayer.{name} moved {WHERE}: update lit_attn/kv_cache.py"
    layer = DynamicLayer()
    assert layer.is_initialized is False, f"DynamicLayer.is_initialized moved {WHERE}"
    keys = torch.zeros(2, 1, 3, 4)
    layer.update(keys, keys.clone())
    assert layer.is_initialized and layer.keys.shape == (2, 1, 3, 4) and layer.get_seq_length() == 3, (
        f"DynamicLayer no longer keeps .keys/.values as (batch, heads, positions, dim) tensors {WHERE}"
    )


def test_dynamic_cache_builds_one_plain_layer_per_full_attention_layer():
    """kv_cache.new_cache swaps ``cache.layers`` entries; logprobs.can_share_prefixes checks their type."""
    for architecture in ("qwen2", "llama", "gpt2"):
        model = build_tiny_model(architecture, num_layers=2)
        cache = DynamicCache(config=model.config)
        layers = getattr(cache, "layers", None)
        assert isinstance(layers, list) and len(layers) == 2, f"DynamicCache(config=...).layers changed {WHERE}"
        assert all(type(layer) is DynamicLayer for layer in layers), f"{architecture}: cache layers are {layers} {WHERE}"
        assert callable(getattr(cache, "batch_select_indices", None)), f"DynamicCache.batch_select_indices moved {WHERE}"


def test_the_forward_argument_that_takes_the_cache():
    """models.cache_keyword picks ``cache`` or ``past_key_values``; one of them must exist."""
    from lit_attn.models import cache_keyword

    for architecture in ("qwen2", "llama", "gpt2"):
        model = build_tiny_model(architecture, num_layers=1)
        for module in (model, model.base_model):
            name = cache_keyword(module)
            assert name in inspect.signature(module.forward).parameters, (
                f"{type(module).__name__}.forward takes neither `cache` nor `past_key_values` {WHERE}"
            )


def _ci_releases() -> dict[str, str]:
    """TRANSFORMERS_OLDEST / TRANSFORMERS_NEWEST as .ci/run sets them."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    return dict(re.findall(r"^(TRANSFORMERS_(?:OLDEST|NEWEST))=(\S+)$", text, flags=re.M))


def _pinned_spec():
    """pyproject.toml's transformers requirement as a SpecifierSet."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    found = [Requirement(r) for r in project["project"]["dependencies"] if Requirement(r).name == "transformers"]
    assert len(found) == 1, "pyproject.toml must name transformers exactly once"
    return found[0].specifier


def test_the_releases_ci_tests_again_are_the_ends_of_the_pin_and_this_one_is_inside_it():
    """.ci/run reruns these tests on the oldest and newest release; both, and the release running
    now, must be ones pyproject.toml admits (keep the three in step when widening the pin)."""
    spec = _pinned_spec()
    releases = _ci_releases()
    assert set(releases) == {"TRANSFORMERS_OLDEST", "TRANSFORMERS_NEWEST"}, f".ci/run sets {releases}"
    for name, release in releases.items():
        assert release in spec, f".ci/run's {name}={release} is outside pyproject.toml's transformers{spec}"
    assert transformers.__version__ in spec, f"transformers {transformers.__version__} is outside the pin {spec}"
