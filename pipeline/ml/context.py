"""What one training run is about, handed down whole instead of nine arguments: the records
it reads, where the model and reports go, the ``train`` params, the seed, and the device."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.train import TrainParams
from pipeline.contracts import features


@dataclass(frozen=True)
class FitContext:
    records: Path  # a records folder (contracts.features)
    meta: dict  # its meta.json
    model_dir: Path  # where model.keras and input.json go
    reports_dir: Path  # history.csv, members.csv, metrics.json, tensorboard/
    params: TrainParams
    seed: int  # member 0's; member n's is seed + n
    strategy: object  # tf.distribute's strategy (train.distribute)
    device: str  # how the run computes, said once in the log

    def backup(self, seed: int) -> Path:
        """Where a member of ``seed`` keeps what a resumed run needs: a folder named by the
        params, the seed and the records, beside the model's folder."""
        key = hashlib.sha256(json.dumps([self.params.model_dump(), seed,
                                         features.meta_text(self.records)],
                                        sort_keys=True).encode()).hexdigest()[:16]
        return self.model_dir.parent / ".backup" / f"train-{key}"

    @property
    def global_batch(self) -> int:
        """train.batch_size on each replica of the strategy."""
        return self.params.batch_size * self.strategy.num_replicas_in_sync  # type: ignore[attr-defined]
