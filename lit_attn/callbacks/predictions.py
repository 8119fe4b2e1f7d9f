"""PredictionWriter: write ``predict`` outputs (one dict per prompt) as JSONL.

Works with any LightningModule whose ``predict_step`` returns a list of JSON-serialisable
dicts, as :class:`lit_attn.PolicyModule` does (``prompt``, ``completion``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_attn.records import write_jsonl


class PredictionWriter(BasePredictionWriter):
    """Write every prediction of a ``predict`` run to one JSONL file, atomically.

    With several processes each rank writes its own ``predictions.rank<N>.jsonl``.

    Args:
        path: output file; None = ``<run log dir>/predictions.jsonl``.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path
        self.written: Path | None = None

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        target = Path(self.path) if self.path else Path(trainer.log_dir or trainer.default_root_dir) / "predictions.jsonl"
        if trainer.world_size > 1:
            target = target.with_suffix(f".rank{trainer.global_rank}.jsonl")
        write_jsonl(target, (row for batch in predictions for row in batch))
        self.written = target
        print(f"predictions written to {target}")
