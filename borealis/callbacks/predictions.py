"""Prediction files: `borealis predict` writes one JSONL file per rank.

Benchmark samples (`data.predict.sets`) give a line each, as their batch is generated:
`{key, prediction, reference?}`. Audio files (`data.predict.files`) are generated window by
window (`data.windows.WindowSet`); their texts are merged when prediction ends, one line per
file: `{file, prediction, duration, windows: [{start, end, text}], language?}` or
`{file, error, detail}`. Pad rows (`data.benchmarks.RankBatches`) are never written.

The LightningModule's `predict_step` returns one generated text per batch row; this
writer turns them into lines. Installed by `BorealisLightningModule.configure_callbacks`.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from borealis.metrics import report_dir


class PredictionWriter(BasePredictionWriter):
    """Write `predictions.rank{rank}.jsonl` under the report folder.

    Args:
        folder: the report folder (`model.report_dir`; null: the logger's folder).
    """

    def __init__(self, folder: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.folder = folder
        self._window_texts: dict[tuple[int, int], str] = {}  # (file, window) -> generated text

    def path(self, trainer: L.Trainer) -> Path:
        return report_dir(trainer, self.folder) / f"predictions.rank{trainer.global_rank}.jsonl"

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path(trainer).unlink(missing_ok=True)
        self._window_texts = {}

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: list[str],
                           batch_indices, batch: dict, batch_idx: int, dataloader_idx: int) -> None:
        pads = batch["is_pad"].tolist()
        if batch.get("windows") and batch["windows"][0] is not None:  # audio files: merged at the end
            for window, text, pad in zip(batch["windows"], prediction, pads):
                if not pad:
                    self._window_texts[window[:2]] = text
            return
        self._write(trainer, [{"key": k, "prediction": h, **({"reference": r} if r is not None else {})}
                              for k, h, r, pad in zip(batch["keys"], prediction, batch["references"], pads)
                              if not pad])

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write one line per audio file: the merged windows, or the file's error."""
        windows = getattr(getattr(trainer, "datamodule", None), "windows", None)
        if windows is None:
            return
        rows = windows.file_rows(self._window_texts)
        self._write(trainer, rows)
        failed = [r for r in rows if "error" in r]
        rank_zero_info(f"predicted {len(rows) - len(failed)} file(s) on rank {trainer.global_rank}"
                       + (f"; {len(failed)} failed: " + "; ".join(r["detail"] for r in failed[:5]) if failed else "")
                       + f"; written to {self.path(trainer)}")

    def _write(self, trainer: L.Trainer, rows: list[dict]) -> None:
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
