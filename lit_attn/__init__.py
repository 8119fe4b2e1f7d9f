"""lit_attn: reinforcement learning of language-model reasoning, with attention as the guide.

Public names: :class:`PolicyModule` (LightningModule) and its setting groups
(:class:`SamplingSettings`, :class:`PPOSettings`, :class:`OptimizerSettings`,
:class:`RewardSettings`, :class:`EvaluationSettings`, :class:`LoraSettings`),
:class:`PromptDataModule`; callbacks in
``lit_attn.callbacks``. Run ``python -m lit_attn fit`` for the embedded default.
"""

from lit_attn.data import PromptDataModule
from lit_attn.lora import LoraSettings
from lit_attn.policy import PolicyModule
from lit_attn.ppo import PPOSettings
from lit_attn.settings import EvaluationSettings, OptimizerSettings, RewardSettings, SamplingSettings

__all__ = [
    "EvaluationSettings", "LoraSettings", "OptimizerSettings", "PPOSettings", "PolicyModule", "PromptDataModule",
    "RewardSettings", "SamplingSettings",
]
__version__ = "0.1.0"
