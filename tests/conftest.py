"""Shared fixtures: tiny models on local disk (built from config, never downloaded)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from lit_attn.models import build_tiny_model
from lit_attn.tokenizer import build_char_tokenizer


def save_tiny(path: Path, architecture: str = "qwen2", max_positions: int = 256, **kwargs) -> Path:
    """A tiny random causal LM with the character tokenizer, saved like a user's model."""
    tok = build_char_tokenizer()
    model = build_tiny_model(
        architecture, vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, max_positions=max_positions, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, **kwargs,
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture
def reward_module(tmp_path, monkeypatch) -> str:
    """Import path of a reward that varies within a group (so a random policy gets gradients)."""
    (tmp_path / "test_rewards_mod.py").write_text(
        textwrap.dedent(
            '''
            def digit_reward(prompts, completions, **kwargs):
                return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "test_rewards_mod.digit_reward"


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Tests must not leak RNG state or thread settings into each other."""
    rng = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    yield
    torch.random.set_rng_state(rng)
    torch.set_num_threads(threads)
