"""lit_attn: reinforcement learning of language-model reasoning, with attention as the guide.

Public names: :class:`PolicyModule` (LightningModule) and its setting groups
(:class:`SamplingSettings`, :class:`UpdateSettings`, :class:`OptimizerSettings`,
:class:`RewardsSettings`, :class:`EvaluationSettings`, :class:`LoraSettings`, all in
:mod:`lit_attn.settings`),
:class:`PromptDataModule`; callbacks in
``lit_attn.callbacks``. Run ``python -m lit_attn fit`` for the embedded default.
"""

from lit_attn.data import PromptDataModule
from lit_attn.policy import PolicyModule
from lit_attn.settings import (
    EvaluationSettings,
    LoraSettings,
    OptimizerSettings,
    RewardsSettings,
    SamplingSettings,
    UpdateSettings,
)

__all__ = [
    "EvaluationSettings", "LoraSettings", "OptimizerSettings", "PolicyModule", "PromptDataModule",
    "RewardsSettings", "SamplingSettings", "UpdateSettings",
]
__version__ = "0.1.0"
