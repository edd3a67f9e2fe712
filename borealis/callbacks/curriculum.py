"""The augmentation curriculum's clock: the active stage from training progress, shown in TensorBoard.

`AugmentationScheduler` reads training progress (epoch, global step), picks the active
stage of the DataModule's `AugmentationPipeline` and writes it into the pipeline's
shared-memory index, which the DataLoader workers (persistent ones too) read per clip. It
hands the stage's SpecAugment to the LightningModule, logs the stage index every step, and
when a stage starts, writes a few before/after clips and log-mel images to TensorBoard.

Switches at an epoch boundary take effect for the whole epoch, because the hook runs
before the workers start the epoch. A `start_step` switch inside an epoch reaches the
batches the workers assemble after it; up to `num_workers * prefetch_factor` batches
already queued still carry the previous stage. (A resumed run sets the stage of its first
epoch before its workers start: see `data.resume.ResumableLoader`.)
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from borealis.augmentations import AugmentationPipeline
from borealis.features import WhisperLogMel, num_mel_frames
from borealis.shards import SAMPLE_RATE, ReadErrors, iter_shard, list_shards


class AugmentationScheduler(L.Callback):
    """Switch the augmentation stage from training progress and show each stage in TensorBoard.

    Args:
        log_examples: clips written to TensorBoard (audio + log-mel, before and after) when a
            stage starts; 0 turns it off.
        example_seconds: the examples are cut to at most this long.
    """

    def __init__(self, log_examples: int = 3, example_seconds: float = 8.0) -> None:
        self.log_examples, self.example_seconds = log_examples, example_seconds
        self._logged: set[str] = set()

    @staticmethod
    def _pipeline(trainer: L.Trainer) -> AugmentationPipeline | None:
        return getattr(getattr(trainer, "datamodule", None), "augmentation", None)

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pipeline = self._pipeline(trainer)
        if pipeline is None:
            return
        index = pipeline.stage_at(trainer.current_epoch, trainer.global_step)
        stage = pipeline.stages[index]
        pipeline.set_stage(index)
        pl_module.spec_augment = stage.spec_augment
        if stage.name not in self._logged:  # first time this stage is active in this process
            self._logged.add(stage.name)
            rank_zero_info(f"augmentation stage {index} '{stage.name}' from epoch {trainer.current_epoch}, "
                           f"step {trainer.global_step}: {stage.effects or 'no waveform effects'}"
                           f"{', SpecAugment' if stage.spec_augment else ''}")
            if trainer.is_global_zero:
                self._log_examples(trainer, pipeline, index)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._update(trainer, pl_module)
        pipeline = self._pipeline(trainer)
        if pipeline is not None:
            pl_module.log("train/augment_stage", float(pipeline.active_index), batch_size=1)

    # ------------------------------------------------------------------ TensorBoard
    def _example_clips(self, trainer: L.Trainer) -> list[tuple[str, np.ndarray]]:
        clips: list[tuple[str, np.ndarray]] = []
        limit = int(self.example_seconds * SAMPLE_RATE)
        for pool in getattr(trainer.datamodule, "train_pools", []):
            errors = ReadErrors()  # a damaged shard must not stop training for a TensorBoard example
            for shard in list_shards(pool.shards, keep_missing=True):
                for sample in iter_shard(shard, on_error=errors):
                    if sample["audio"] is not None:
                        clips.append((sample["key"], sample["audio"][:limit]))
                    if len(clips) >= self.log_examples:
                        return clips
        return clips

    def _log_examples(self, trainer: L.Trainer, pipeline: AugmentationPipeline, index: int) -> None:
        writer = getattr(trainer.logger, "experiment", None)
        if self.log_examples <= 0 or writer is None or not hasattr(writer, "add_audio"):
            return
        stage = pipeline.stages[index]
        rng = np.random.default_rng([index, 7])  # the same examples every run
        mel = WhisperLogMel()
        step = trainer.global_step
        for i, (key, before) in enumerate(self._example_clips(trainer)):
            record: list[dict] = []
            after = stage(before, rng, record=record)
            pair = {"before": before, "after": after}
            for tag, audio in pair.items():
                wave = torch.from_numpy(np.clip(audio, -1.0, 1.0)).float()
                writer.add_audio(f"augment/{stage.name}/{i}_{tag}", wave[None], step, sample_rate=SAMPLE_RATE)
                spec = mel(wave[None], torch.tensor([len(wave)]))[0, :, : int(num_mel_frames(len(wave)))]
                if tag == "after" and stage.spec_augment is not None:
                    gen = torch.Generator().manual_seed(index)
                    spec = stage.spec_augment(spec[None], generator=gen)[0]
                image = (spec - spec.min()) / (spec.max() - spec.min()).clamp(min=1e-6)
                writer.add_image(f"augment/{stage.name}/{i}_{tag}_logmel", image.flip(0)[None], step)
            writer.add_text(f"augment/{stage.name}/{i}", f"`{key}`: {record or 'clean'}", step)
