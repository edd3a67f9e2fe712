"""SpecAugment (borealis/spec_augment.py): masks are whole bands and spans within their bounds,
placed inside each row's frames, filled with the row's mean, and reproducible from the generator."""

from __future__ import annotations

import pytest
import torch

from borealis.spec_augment import SpecAugment

def min_spans(mask: torch.Tensor, width: int) -> int:
    """Fewest spans of `width` that cover the True entries of a 1-D mask (greedy is optimal)."""
    count, covered_to = 0, -1
    for i in torch.nonzero(mask).flatten().tolist():
        if i > covered_to:
            count, covered_to = count + 1, i + width - 1
    return count


@pytest.mark.parametrize("n_masks", [1, 2])
def test_spec_augment_masks_stay_within_their_bounds(n_masks):
    b, n_mels, t, freq_width, time_width = 64, 80, 300, 10, 30
    frames = torch.tensor([300, 250, 120, 40] * (b // 4))
    mel = torch.randn(b, n_mels, t, generator=torch.Generator().manual_seed(0))
    sa = SpecAugment(freq_masks=n_masks, freq_width=freq_width, time_masks=n_masks, time_width=time_width, p=1.0)
    out = sa(mel, frames, torch.Generator().manual_seed(1))
    masked = out != mel
    widest = [0, 0]
    for row in range(b):
        m = masked[row]
        bins = m.all(dim=1)    # a masked band covers every frame (2 x 10 bins cannot cover all 80)
        cols = m.all(dim=0)    # a masked span covers every bin (2 x 30 frames never cover a row)
        assert torch.equal(m, bins[:, None] | cols[None, :]), row  # masks are whole bands and spans
        assert min_spans(bins, freq_width) <= n_masks and min_spans(cols, time_width) <= n_masks, row
        assert not cols[frames[row]:].any(), row  # no time mask in the padding
        torch.testing.assert_close(out[row][m], mel[row].mean().expand(int(m.sum())))
        if n_masks == 1:
            widest = [max(widest[0], int(bins.sum())), max(widest[1], int(cols.sum()))]
    if n_masks == 1:  # widths are drawn up to the maximum, not far below it
        assert widest[0] >= freq_width - 1 and widest[1] >= time_width - 3, widest
    again = sa(mel, frames, torch.Generator().manual_seed(1))
    assert torch.equal(again, out)  # same generator seed, same masks
    assert not torch.equal(sa(mel, frames, torch.Generator().manual_seed(2)), out)


def test_spec_augment_off_leaves_the_mel_unchanged():
    mel = torch.randn(4, 80, 200)
    before = mel.clone()
    for sa in [SpecAugment(p=0.0), SpecAugment(freq_masks=0, time_masks=0), SpecAugment(freq_width=0, time_width=0)]:
        assert torch.equal(sa(mel, torch.tensor([200, 150, 100, 20]), torch.Generator().manual_seed(0)), mel)
    assert torch.equal(mel, before)  # masking returns a copy


@pytest.mark.parametrize("build, message", [
    (lambda: SpecAugment(time_width=-1), "time_width must be >= 0, got -1"),
    (lambda: SpecAugment(p=2.0), r"p must be in \[0, 1\], got 2.0"),
])
def test_bad_settings_raise_naming_the_problem(build, message):
    with pytest.raises(ValueError, match=message):
        build()
