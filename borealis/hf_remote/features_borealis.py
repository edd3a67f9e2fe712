"""Whisper log-mel features in torch, batched, on the model's device.

Why: `WhisperFeatureExtractor.__call__` pads and converts on the CPU, one numpy array at a
time. Training moves padded waveforms to the GPU once and computes the spectrogram there,
so the DataLoader workers only decode and augment. The filter bank is the extractor's own
(`mel_filters`), so there is one source of truth for the mel scale; the maths is the same
as its torch path, and `tests/test_features.py` holds it to 1e-4 of the extractor's output.

Cost: one STFT + one matmul per batch; 30 s of audio for 8 clips is ~10 ms on an H100.
Only the frames that touch audio are transformed (a 30 s window of 12 s clips: 40% of the STFT).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor

SAMPLE_RATE = 16_000
HOP_LENGTH = 160  # 10 ms per mel frame
N_FFT = 400


class WhisperLogMel(nn.Module):
    """Batched Whisper log-mel spectrogram of the encoder's window.

    The Whisper encoder takes `2 * max_source_positions` mel frames (3000 for 30 s), so every
    waveform is zero-padded (or cut) to `num_samples`, exactly as the extractor pads with
    `padding="max_length"`. The buffers are not saved with the weights: they follow from the
    two arguments.

    Args:
        num_mel_bins: 80 for Whisper up to v2, 128 for large-v3.
        max_source_positions: encoder positions; the input covers `2 * max_source_positions`
            mel frames (1500 -> 30 s).
    """

    def __init__(self, num_mel_bins: int = 128, max_source_positions: int = 1500) -> None:
        super().__init__()
        self.num_mel_bins = num_mel_bins
        self.num_frames = 2 * max_source_positions
        self.num_samples = self.num_frames * HOP_LENGTH
        self.register_buffer("mel_filters", self._filters(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT, dtype=torch.float32), persistent=False)

    @classmethod
    def from_encoder_config(cls, config: WhisperConfig) -> WhisperLogMel:
        return cls(num_mel_bins=config.num_mel_bins, max_source_positions=config.max_source_positions)

    @property
    def max_seconds(self) -> float:
        return self.num_samples / SAMPLE_RATE

    def _filters(self) -> torch.Tensor:
        extractor = WhisperFeatureExtractor(
            feature_size=self.num_mel_bins, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH, n_fft=N_FFT,
            chunk_length=max(1, math.ceil(self.num_samples / SAMPLE_RATE)))
        return torch.from_numpy(extractor.mel_filters).float().T  # (M, n_fft // 2 + 1)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute the buffers, e.g. after transformers built the model on the `meta` device."""
        self.mel_filters.copy_(self._filters())
        self.window.copy_(torch.hann_window(N_FFT, dtype=torch.float32))

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                num_frames: int | None = None) -> torch.Tensor:
        """Log-mel features of a padded batch.

        Args:
            waveforms: (B, S) float audio at 16 kHz, zero-padded on the right.
            lengths: (B,) valid samples per row; samples past it are zeroed, so padding
                written by augmentation or collation never leaks into the features.
            num_frames: mel frames to return (default: the full window). A shorter window
                (`encoder_window: batch`) must cover every clip (`window_frames`); its frames
                equal the full window's first `num_frames`, normalisation included: two extra
                frames are computed for the peak, and frames past them hold only padding
                (the floor, never the peak).

        Returns:
            (B, M, num_frames) features, scaled as Whisper expects.
        """
        frames = self.num_frames if num_frames is None else num_frames
        total = frames + (0 if frames >= self.num_frames else 2)  # frames the peak is taken over
        waveforms = waveforms.float()
        if lengths is not None:
            keep = torch.arange(waveforms.shape[-1], device=waveforms.device) < lengths[:, None]
            waveforms = waveforms * keep
        waveforms = waveforms[:, : total * HOP_LENGTH]
        # Only the frames that touch audio are transformed. A frame whose window lies wholly in the
        # zero padding past the batch's widest clip has power exactly 0, so its power is padded in as
        # 0: bit-identical to transforming the whole window (tests/test_features.py). `width` keeps
        # every transformed frame clear of the STFT's reflection at the right edge, as in the full window.
        live = min(total, -(-(waveforms.shape[-1] + N_FFT // 2) // HOP_LENGTH))
        width = min(total * HOP_LENGTH, -(-((live - 1) * HOP_LENGTH + N_FFT // 2) // HOP_LENGTH) * HOP_LENGTH)
        waveforms = nn.functional.pad(waveforms, (0, width - waveforms.shape[-1]))
        # .float(): the buffers follow a model-wide .to(bfloat16); the spectrogram stays float32
        stft = torch.stft(waveforms, N_FFT, HOP_LENGTH, window=self.window.float(), return_complex=True)
        power = nn.functional.pad(stft[..., :live].abs() ** 2, (0, total - live))  # (B, F, total)
        mel = self.mel_filters.float() @ power  # (B, M, total): the whole window's product, as BLAS rounds by shape
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec[..., :frames], peak - 8.0)
        return (log_spec + 4.0) / 4.0


def window_frames(longest_samples: int, downsample_factor: int, max_source_positions: int) -> int:
    """Mel frames of the shortest window that holds a clip of `longest_samples` (`encoder_window:
    batch`): whole LLM positions (2k mel frames each), at most the full window."""
    step = 2 * downsample_factor
    frames = -(-max(int(longest_samples), 1) // HOP_LENGTH)
    return min(-(-frames // step) * step, 2 * max_source_positions)


def num_mel_frames(num_samples: torch.Tensor | int) -> torch.Tensor | int:
    """Mel frames that real audio covers (the extractor's frame count before padding)."""
    return num_samples // HOP_LENGTH
