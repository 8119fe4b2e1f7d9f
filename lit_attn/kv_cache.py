"""The KV cache of lit_attn's sampler: transformers' ``DynamicCache`` with room reserved.

transformers' ``DynamicLayer.update`` concatenates the new keys and values to the old, which
copies the whole cache at every decoding step. :class:`ReservedLayer` writes each step into a
buffer sized for the longest continuation instead; :func:`new_cache` builds a ``DynamicCache``
whose plain full-attention layers are such layers. It subclasses a transformers internal
(``transformers.cache_utils.DynamicLayer``); ``tests/test_transformers_internals.py`` fails
loudly when that class changes under it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lit_attn.compat import lazy_initialization


class ReservedLayer(DynamicLayer):
    """A :class:`~transformers.cache_utils.DynamicLayer` whose keys and values live in a buffer
    with room for ``capacity`` positions.

    ``DynamicLayer.update`` concatenates, which copies the whole cache at every decoding step
    (a cost that grows with the prefix length); here a step writes only its new position and
    ``keys`` / ``values`` are views of the filled part. Batch selection copies the filled part.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def _set_buffers(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._key_buffer, self._value_buffer = keys, values
        self.keys = keys[:, :, : self.length]
        self.values = values[:, :, : self.length]

    def _reallocate(self, capacity: int, rows: torch.Tensor | None = None) -> None:
        """New buffers of ``capacity`` positions holding the filled part (of ``rows`` only, if given)."""
        keys, values = self.keys, self.values
        if rows is not None:
            keys, values = keys[rows], values[rows]
        batch, heads, _, key_dim = keys.shape
        new_keys = keys.new_empty(batch, heads, capacity, key_dim)
        new_values = values.new_empty(batch, heads, capacity, values.shape[-1])
        new_keys[:, :, : self.length] = keys
        new_values[:, :, : self.length] = values
        self.capacity = capacity
        self._set_buffers(new_keys, new_values)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions into the buffers; return views of everything cached."""
        new = key_states.shape[-2]
        if not self.is_initialized:
            lazy_initialization(self, key_states, value_states)  # 4.57 takes the keys only
            self.keys, self.values = key_states[:, :, :0], value_states[:, :, :0]
            self._reallocate(max(self.capacity, new))
        elif self.length + new > self.capacity:
            self._reallocate(max(2 * self.capacity, self.length + new))
        self._key_buffer[:, :, self.length : self.length + new] = key_states
        self._value_buffer[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._set_buffers(self._key_buffer, self._value_buffer)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (and repeat) the batch rows ``indices``."""
        if self.is_initialized:
            self._reallocate(self.capacity, rows=indices.to(self.keys.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row ``repeats`` times."""
        if self.is_initialized:
            rows = torch.arange(self.keys.shape[0], device=self.keys.device).repeat_interleave(repeats)
            self.batch_select_indices(rows)

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` positions (transformers' convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of positions to remove, got {tokens_to_remove}")
        if self.is_initialized and tokens_to_remove < 0:
            self.length = max(self.length + tokens_to_remove, 0)
            self._set_buffers(self._key_buffer, self._value_buffer)


def new_cache(model: nn.Module, capacity: int) -> DynamicCache:
    """A DynamicCache for ``model``; plain full-attention layers get room for ``capacity`` positions.

    Other layer kinds keep transformers' own classes, as ``model.generate`` builds them. For a
    sliding-window layer (Mistral, Qwen2 with ``use_sliding_window``, Gemma 2 / 3) that is
    ``DynamicSlidingWindowLayer``: it keeps the last ``window - 1`` positions, so its per-step
    concatenation copies at most a window, not the whole prefix, and a reserved buffer would
    save little. Greedy decoding with this cache equals ``model.generate(do_sample=False)``
    token for token on left-padded batches longer than the window, for every family of
    ``lit_attn.models.ARCHITECTURES`` (``tests/test_family_rollouts.py``).
    """
    cache = DynamicCache(config=model.config)
    layers = getattr(cache, "layers", None)
    if layers:
        cache.layers = [ReservedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in layers]
    return cache
