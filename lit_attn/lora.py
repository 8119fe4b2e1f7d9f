"""LoRA adapters through PEFT (``pip install -e '.[lora]'``), for models whose full optimiser
state does not fit.

:class:`~lit_attn.PolicyModule` with ``model.lora`` set wraps its causal LM with
``peft.get_peft_model``; ``module.model`` stays the Hugging Face model (now holding LoRA
layers), so every forward — rollouts, FCI, AttnTrace, the update — runs with the adapters, and
only the adapter weights train. The reference policy for the KL penalty is the same model with
the adapters switched off (:func:`adapters_off`): no second copy. ``ExportPolicy`` saves the
adapters, and on request the merged model.

    python -m lit_attn fit --config lit_attn/configs/lora.yaml
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

from lit_attn.errors import UserError
from lit_attn.settings import LoraSettings


def peft_available() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def add_adapters(model: torch.nn.Module, settings: LoraSettings) -> torch.nn.Module:
    """Wrap ``model`` with fresh LoRA adapters; returns the ``PeftModel`` (``model`` itself now
    holds the adapter layers, and only they require gradients)."""
    if not peft_available():
        raise UserError("model.lora needs PEFT; install it with: pip install -e '.[lora]'")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules, task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"model.lora: {str(err).splitlines()[0]}") from err


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a ``PeftModel`` (the model itself otherwise). Its layers
    carry the adapters, so it computes what the ``PeftModel`` computes."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@contextmanager
def adapters_off(peft_model: torch.nn.Module) -> Iterator[None]:
    """The model without its adapters for the block (the KL reference policy)."""
    with peft_model.disable_adapter():
        yield


def adapters_off_reference(peft_model: torch.nn.Module, model: torch.nn.Module) -> Callable[[], AbstractContextManager[torch.nn.Module]]:
    """The KL reference of a LoRA run (a :data:`lit_attn.ppo.Reference`): ``model``, the Hugging
    Face model inside ``peft_model``, with the adapters off for the block (no second copy)."""

    @contextmanager
    def reference() -> Iterator[torch.nn.Module]:
        with adapters_off(peft_model):
            yield model

    return reference

