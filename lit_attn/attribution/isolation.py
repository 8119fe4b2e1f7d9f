"""Run a model without leaving a trace on training: eval mode, no grad, every random state restored."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from lit_attn.models import eval_mode


@contextmanager
def isolated(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (every submodule's train/eval flag restored after), no grad, and the torch
    (CPU and the model's accelerator), Python and NumPy random states saved and restored
    around the block."""
    device = next(model.parameters()).device
    accelerator = [device.index or 0] if device.type not in ("cpu", "meta") else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=accelerator, device_type=device.type if accelerator else None):
            with torch.no_grad(), eval_mode(model):
                yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
