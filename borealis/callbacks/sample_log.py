"""Data accounting: which samples every training step trained on, exact across a kill and a resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L


class SampleLog(L.Callback):
    """Append the sample keys of every training batch to a JSONL file per rank.

    One line per batch, written when the batch has trained: `{"step": the optimizer step it
    counts toward (0-based), "epoch", "batch": its index in the epoch, "keys": [...]}`. When
    training starts the file is cut back to the lines of steps before the starting global
    step, so after a kill and `--ckpt_path` resume every trained batch appears exactly once
    (a fresh run starts an empty file). Cost: one small append per batch.

    Args:
        path: the file; `{rank}` becomes the global rank. A relative path is taken under the
            trainer's `default_root_dir`.
    """

    def __init__(self, path: str = "samples.rank{rank}.jsonl") -> None:
        self.path = path
        self._file: Path | None = None
        self._step = 0

    def _resolve(self, trainer: L.Trainer) -> Path:
        path = Path(self.path.format(rank=trainer.global_rank))
        return path if path.is_absolute() else Path(trainer.default_root_dir) / path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1 and "{rank}" not in self.path:
            raise ValueError(f"SampleLog path {self.path!r} needs a {{rank}} placeholder with "
                             f"{trainer.world_size} ranks (each rank writes its own file)")
        self._file = self._resolve(trainer)
        self._file.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self._file.exists():
            lines = self._file.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] < trainer.global_step]
        tmp = self._file.with_name(self._file.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self._file)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        row = {"step": self._step, "epoch": trainer.current_epoch, "batch": batch_idx, "keys": list(batch["keys"])}
        with self._file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
