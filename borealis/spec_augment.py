"""SpecAugment: frequency and time masks on a batch of log-mels, on the device (Park et al., 2019).

A curriculum stage (`augmentations.AugmentationStage`) may carry one; the LightningModule
applies it to the training log-mel after the waveform effects, so it costs one batched draw
per step on the device and nothing in the DataLoader workers.
"""

from __future__ import annotations

import torch


class SpecAugment:
    """Frequency and time masks on a batch of log-mels, on the device (Park et al., 2019).

    Each row gets up to `freq_masks` bands of 0..`freq_width` bins and up to `time_masks`
    spans of 0..`time_width` frames, drawn independently per row and placed inside the row's
    valid frames; masked cells take the row's mean. One batched draw, no per-row loop.

    Args:
        freq_masks: frequency masks per row.
        freq_width: widest frequency mask, in mel bins.
        time_masks: time masks per row.
        time_width: widest time mask, in frames (10 ms each).
        p: probability that a row is masked at all.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 2, time_width: int = 100,
                 p: float = 1.0) -> None:
        counts = {"freq_masks": freq_masks, "freq_width": freq_width, "time_masks": time_masks,
                  "time_width": time_width}
        problems = [f"{k} must be >= 0, got {v}" for k, v in counts.items() if v < 0]
        if not 0 <= p <= 1:
            problems.append(f"p must be in [0, 1], got {p}")
        if problems:
            raise ValueError("SpecAugment: " + "; ".join(problems))
        self.freq_masks, self.freq_width, self.time_masks, self.time_width, self.p = (
            freq_masks, freq_width, time_masks, time_width, p)

    def __call__(self, mel: torch.Tensor, frames: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """mel: (B, n_mels, T); frames: (B,) valid frames per row (default T). Returns a masked copy."""
        b, bins, width = mel.shape
        dev = mel.device
        frames = torch.full((b,), width, device=dev) if frames is None else frames.to(dev).clamp(max=width)
        mask = self._spans(b, bins, torch.full((b,), bins, device=dev), self.freq_masks, self.freq_width,
                           generator)[:, :, None]
        mask = mask | self._spans(b, width, frames, self.time_masks, self.time_width, generator)[:, None, :]
        mask &= (torch.rand(b, 1, 1, generator=generator, device=dev) < self.p)
        fill = mel.mean(dim=(1, 2), keepdim=True)
        return torch.where(mask, fill, mel)

    @staticmethod
    def _spans(b: int, size: int, limit: torch.Tensor, count: int, max_width: int,
               generator: torch.Generator | None) -> torch.Tensor:
        """(b, size) bool: `count` spans per row of width U{0..max_width}, inside [0, limit)."""
        dev = limit.device
        if count == 0 or max_width == 0:
            return torch.zeros(b, size, dtype=torch.bool, device=dev)
        lim = limit[:, None].float()
        width = torch.floor(torch.rand(b, count, generator=generator, device=dev) * (max_width + 1))
        width = torch.minimum(width, lim)
        start = torch.floor(torch.rand(b, count, generator=generator, device=dev) * (lim - width + 1))
        pos = torch.arange(size, device=dev, dtype=torch.float32)[None, None, :]
        inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
        return inside.any(dim=1)
