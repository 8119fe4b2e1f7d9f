"""Lightning callbacks of lit_attn, installed as ``lit_attn.callbacks``.

Callbacks import the core (``lit_attn``); the core never imports callbacks.
"""

from lit_attn.callbacks.attribution import AttributionCallback
from lit_attn.callbacks.branching import AttentionBranchCallback, BranchingCallback, EntropyBranchCallback
from lit_attn.callbacks.export import ExportPolicy
from lit_attn.callbacks.predictions import PredictionWriter
from lit_attn.callbacks.progress import RichProgressBar

__all__ = [
    "AttentionBranchCallback",
    "AttributionCallback",
    "BranchingCallback",
    "EntropyBranchCallback",
    "ExportPolicy",
    "PredictionWriter",
    "RichProgressBar",
]
