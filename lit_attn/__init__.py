"""lit_attn: reinforcement learning of language-model reasoning, with attention as the guide.

Public names: :class:`PolicyModule` (LightningModule), :class:`PromptDataModule`; callbacks in
``lit_attn.callbacks``. Run ``python -m lit_attn fit`` for the embedded default.
"""

from lit_attn.data import PromptDataModule
from lit_attn.policy import PolicyModule

__all__ = ["PolicyModule", "PromptDataModule"]
__version__ = "0.1.0"
