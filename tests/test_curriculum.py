"""The augmentation curriculum end to end: the scheduler's switch reaches persistent workers.

A real Lightning Trainer runs a probe module on BorealisDataModule with 2 persistent
DataLoader workers. The curriculum is `clean` (epoch 0) then `loud` (epoch 1: +20 dB gain),
so every waveform the workers ship says which stage they were in.
"""

import lightning as L
import numpy as np
import pytest
import torch
from borealis.testing import build_tokenizer, make_pool, tone
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from borealis.augmentations import AugmentationPipeline, AugmentationStage, BackgroundNoise, Gain, SpecAugment
from borealis.callbacks import AugmentationScheduler
from borealis.data import Batching, BorealisDataModule, MixtureStream, Pool
from borealis.prompts import PromptBuilder
from borealis.shards import ShardWriter

TONE_PEAK = 0.3  # borealis.testing.tone amplitude


class Probe(L.LightningModule):
    """Records the peak of every training waveform row and the SpecAugment it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.peaks: dict[int, list[float]] = {}
        self.spec: dict[int, object] = {}
        self.spec_augment = None  # set by AugmentationScheduler

    def training_step(self, batch, batch_idx):
        peaks = batch["waveforms"].abs().amax(dim=1).tolist()
        self.peaks.setdefault(self.current_epoch, []).extend(peaks)
        self.spec[self.current_epoch] = self.spec_augment
        return (self.w - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def curriculum() -> AugmentationPipeline:
    return AugmentationPipeline([
        AugmentationStage("clean"),
        AugmentationStage("loud", start_epoch=1, effects=[Gain(gain_db=(20.0, 20.0), p=1.0)],
                          spec_augment=SpecAugment(time_masks=1, time_width=5)),
    ])


def test_stage_switch_reaches_persistent_workers_and_tensorboard(tmp_path):
    make_pool(tmp_path / "a", "a", range(40), max_samples=5)
    prompts = PromptBuilder(build_tokenizer(), downsample_factor=4, max_source_positions=100)
    dm = BorealisDataModule(train_pools=[Pool("a", str(tmp_path / "a"))], batching=Batching(batch_size=4),
                            batches_per_epoch=6, shuffle_buffer=8, num_workers=2, augmentation=curriculum(),
                            prompt_builder=prompts)
    probe = Probe()
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb", version="v")
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=logger, callbacks=[AugmentationScheduler(2)],
                        enable_checkpointing=False, enable_progress_bar=False, log_every_n_steps=1,
                        enable_model_summary=False)
    trainer.fit(probe, datamodule=dm)

    assert trainer.train_dataloader.persistent_workers and trainer.train_dataloader.num_workers == 2
    clean, loud = np.array(probe.peaks[0]), np.array(probe.peaks[1])
    assert len(clean) == len(loud) == 24  # 6 batches x 4 rows per epoch
    np.testing.assert_allclose(clean, TONE_PEAK, rtol=1e-3)  # stage 0: untouched tones
    np.testing.assert_allclose(loud, TONE_PEAK * 10, rtol=1e-3)  # stage 1 in the same workers: +20 dB
    assert probe.spec[0] is None and isinstance(probe.spec[1], SpecAugment)

    events = EventAccumulator(str(tmp_path / "tb" / "v"), size_guidance={"audio": 0, "images": 0}).Reload()
    audio, images = set(events.Tags()["audio"]), set(events.Tags()["images"])
    for stage in ("clean", "loud"):
        for i in range(2):
            assert {f"augment/{stage}/{i}_before", f"augment/{stage}/{i}_after"} <= audio
            assert f"augment/{stage}/{i}_after_logmel" in images
    stages = [e.value for e in events.Scalars("train/augment_stage")]
    assert stages[0] == 0 and stages[-1] == 1


def test_workers_draw_different_augmentations_and_reruns_repeat(tmp_path):
    """Same seed, rank and worker -> same audio; different workers -> different draws."""
    with ShardWriter(tmp_path / "a", max_samples=5) as w:  # 40 identical clips: only augmentation differs
        for i in range(40):
            w.write(f"a-{i}", {"text": "one", "language": "en"}, tone(1, 0.5))
    make_pool(tmp_path / "noise", "n", range(8), seconds=lambda i: 1.0)
    prompts = PromptBuilder(build_tokenizer(), downsample_factor=4, max_source_positions=100)
    pipeline = AugmentationPipeline([AugmentationStage("noisy", effects=[
        BackgroundNoise(str(tmp_path / "noise"), snr_db=(0.0, 30.0), p=1.0), Gain(p=1.0)])])

    def run(num_workers: int) -> dict[str, list[np.ndarray]]:
        stream = MixtureStream([Pool("a", str(tmp_path / "a"))], prompts, Batching(batch_size=2, bucket_size=2),
                               batches_per_epoch=8, shuffle_buffer=4, seed=5, augmentation=pipeline)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers)
        out: dict[str, list[np.ndarray]] = {}
        for batch in loader:
            for key, wave, n in zip(batch["keys"], batch["waveforms"], batch["audio_lengths"]):
                out.setdefault(key, []).append(wave[:n].numpy())
        return out

    first, again = run(2), run(2)
    assert first.keys() == again.keys()
    for key in first:
        for a, b in zip(first[key], again[key]):
            np.testing.assert_array_equal(a, b)
    # The two workers stream identical clips; had they drawn the same augmentation sequence,
    # worker 0's k-th clip would equal worker 1's k-th clip.
    waves = [w.tobytes() for ws in first.values() for w in ws]
    assert len(waves) == 16 and len(set(waves)) == 16


@pytest.mark.parametrize("bad", ["missing"])
def test_missing_noise_pool_fails_at_setup(tmp_path, bad):
    make_pool(tmp_path / "a", "a", range(10))
    prompts = PromptBuilder(build_tokenizer(), downsample_factor=4, max_source_positions=100)
    pipeline = AugmentationPipeline([AugmentationStage("clean"), AugmentationStage(
        "noisy", start_epoch=1, effects=[BackgroundNoise(str(tmp_path / bad))])])
    dm = BorealisDataModule(train_pools=[Pool("a", str(tmp_path / "a"))], augmentation=pipeline,
                            prompt_builder=prompts)
    with pytest.raises(FileNotFoundError, match=r"stage 'noisy', BackgroundNoise: .*missing"):
        dm.setup("fit")
