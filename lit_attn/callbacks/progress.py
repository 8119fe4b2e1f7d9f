"""RichProgressBar: Lightning's rich progress bar, without a negative epoch count.

With ``trainer.max_steps`` set and ``trainer.max_epochs`` left null (how lit_attn's configs
count RL steps), Lightning sets ``max_epochs`` to -1, "no limit", and its RichProgressBar
prints the last epoch as ``max_epochs - 1``: "Epoch 0/-2". This bar prints "Epoch 0" when
there is no epoch limit, and is Lightning's otherwise.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar


class RichProgressBar(LightningRichProgressBar):
    """Lightning's :class:`~lightning.pytorch.callbacks.RichProgressBar` (same arguments) whose
    training bar reads ``Epoch N`` rather than ``Epoch N/-2`` when the run has no epoch limit."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 1:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        if len(self.validation_description) > len(description):  # as Lightning pads it: no flicker
            description = f"{description:{len(self.validation_description)}}"
        return description
