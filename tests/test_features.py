import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from borealis.features import WhisperLogMel, num_mel_frames, window_frames


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


def test_batch_window_features_equal_the_full_windows_first_frames():
    mel = WhisperLogMel(num_mel_bins=80, max_source_positions=100)  # 2 s window
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([4321, 9000, 12_345])  # not whole frames; the loudest sample at the very end
    waves = torch.nn.utils.rnn.pad_sequence([torch.randn(n, generator=g) * 0.1 for n in lengths.tolist()],
                                            batch_first=True)
    waves[2, 12_344] = 1.0
    frames = window_frames(waves.shape[-1], downsample_factor=4, max_source_positions=100)
    assert frames == 80 and frames * 160 >= 12_345 and frames % 8 == 0  # whole LLM positions (2k frames)
    full, short = mel(waves, lengths), mel(waves, lengths, frames)
    assert short.shape == (3, 80, 80) and full.shape == (3, 80, 200)
    torch.testing.assert_close(short, full[..., :frames], rtol=0, atol=1e-6)
    assert window_frames(10 ** 9, 4, 100) == 200 and window_frames(1, 4, 100) == 8


def test_window_geometry_and_buffers_rebuilt_after_meta_init():
    """The window follows the encoder config; `reset_buffers` restores what a meta-device build left empty."""
    from transformers import WhisperConfig

    mel = WhisperLogMel.from_encoder_config(WhisperConfig(num_mel_bins=80, max_source_positions=100))
    assert (mel.num_frames, mel.num_samples, mel.max_seconds) == (200, 32_000, 2.0)
    assert num_mel_frames(12_345) == 77 and num_mel_frames(torch.tensor([159, 160])).tolist() == [0, 1]
    with torch.device("meta"):
        empty = WhisperLogMel(num_mel_bins=80, max_source_positions=100)
    empty = empty.to_empty(device="cpu")
    empty.reset_buffers()
    assert torch.equal(empty.mel_filters, mel.mel_filters) and torch.equal(empty.window, mel.window)
    assert not dict(mel.state_dict())  # derived from the config: never saved with the weights
