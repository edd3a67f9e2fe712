import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from borealis.features import WhisperLogMel


@pytest.mark.parametrize("mels,positions", [(80, 100), (128, 1500)])
def test_logmel_matches_whisper_feature_extractor(mels, positions):
    seconds = 2 * positions * 160 / 16000
    ext = WhisperFeatureExtractor(feature_size=mels, chunk_length=int(seconds))
    ours = WhisperLogMel(num_mel_bins=mels, max_source_positions=positions)
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * min(seconds, 3.3))) / 16000
    clips = [
        rng.standard_normal(12345).astype(np.float32) * 0.1,                      # noise
        (0.5 * np.sin(2 * np.pi * 440 * t) * np.exp(-t)).astype(np.float32),       # decaying tone, speech-like level
        np.zeros(800, dtype=np.float32),                                           # silence
    ]
    ref = ext(clips, sampling_rate=16000, return_tensors="np", padding="max_length").input_features
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(c) for c in clips], batch_first=True)
    batch = torch.cat([batch, torch.randn(3, 50)], dim=1)  # garbage past each length must be ignored
    got = ours(batch, lengths).numpy()
    assert got.shape == ref.shape == (3, mels, 2 * positions)
    assert np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize("num_frames", [None, 96])
def test_logmel_transforms_only_frames_with_audio_and_stays_bit_identical(num_frames):
    """A batch narrower than the window skips the all-zero frames; the features must equal the
    whole window's bit for bit (the same input zero-padded to the full window transforms every frame)."""
    ours = WhisperLogMel(num_mel_bins=80, max_source_positions=150)  # 300 frames, 48,000 samples
    gen = torch.Generator().manual_seed(0)
    for width in (800, 12_345, 15_000, 47_700, 48_000):
        lengths = torch.tensor([width, width // 2, 1])
        batch = torch.randn(3, width, generator=gen) * 0.1
        full = torch.nn.functional.pad(batch, (0, ours.num_samples - width))
        frames = num_frames if num_frames is None or width <= num_frames * 160 else None
        got, want = ours(batch, lengths, frames), ours(full, lengths, frames)
        assert got.shape == want.shape == (3, 80, frames or 300)
        assert torch.equal(got, want), f"width {width}: max diff {(got - want).abs().max()}"
