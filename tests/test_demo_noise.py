"""Tests for borealis/demo/noise.py: benchmark noise at a given SNR, coloured noise spectra,
mains hum and synthetic room impulse responses."""

from __future__ import annotations

import numpy as np
import pytest

from borealis.demo import noise


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_add_noise_hits_the_snr(kind):
    t = np.arange(22050) / 22050
    clean = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    noisy = noise.add_noise(clean, kind, 20.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert noisy.dtype == np.float32 and abs(snr - 20.0) < 0.5
    with pytest.raises(ValueError, match="brown"):
        noise.add_noise(clean, "brown", 20.0, np.random.default_rng(0))


def band_db(x: np.ndarray, low: tuple[float, float], high: tuple[float, float], rate: int = 16_000) -> float:
    """Power in band `low` over power in band `high`, in dB."""
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / rate)
    return float(10 * np.log10(power[(f >= low[0]) & (f < low[1])].sum() / power[(f >= high[0]) & (f < high[1])].sum()))


@pytest.mark.parametrize(("colour", "slope_db"), [("white", -12.0), ("pink", 0.0), ("brown", 12.0)])
def test_coloured_noise_spectra(colour, slope_db):
    """100-200 Hz against 1600-3200 Hz (16x the bandwidth): white -12 dB, pink (1/f) flat per
    octave, brown (1/f^2) +12 dB."""
    n = 16_000 * 6
    x = noise.coloured_noise(n, colour, np.random.default_rng(0), floor_bin=20 * n / 16_000)
    assert band_db(x, (100, 200), (1600, 3200)) == pytest.approx(slope_db, abs=1.5)
    assert np.array_equal(x, noise.coloured_noise(n, colour, np.random.default_rng(0), floor_bin=20 * n / 16_000))
    with pytest.raises(ValueError, match="violet"):
        noise.coloured_noise(n, "violet", np.random.default_rng(0))


def test_mains_hum_and_impulse_response():
    hum = noise.mains_hum(16_000 * 4, 60.0, 5, 30.0, np.random.default_rng(0))
    power = np.abs(np.fft.rfft(hum)) ** 2
    f = np.fft.rfftfreq(hum.size, 1 / 16_000)
    peaks = f[np.argsort(power)[-5:]]
    assert sorted(np.round(peaks).tolist()) == [60, 120, 180, 240, 300]  # the fundamental and 4 harmonics

    ir = noise.impulse_response(0.6, 10.0, 0.5, np.random.default_rng(0))
    assert ir.size == 1 + 160 + 9600 == noise.ir_frames(0.6, 10.0)  # direct path, 10 ms pre-delay, RT60
    assert int(np.argmax(np.abs(ir))) == 0 and ir[0] == noise.IR_DIRECT  # the direct path is the peak
    assert not ir[1:161].any() and np.abs(ir[161:]).max() == pytest.approx(0.5 * noise.IR_DIRECT)
    tail = ir[161:] ** 2
    first, last = tail[:2400].sum(), tail[-2400:].sum()  # first and last quarter of the tail
    assert 10 * np.log10(last / first) < -35  # 60 dB over the RT60: ~45 dB between the quarters


def test_render_clip_depends_only_on_its_generator():
    clip = noise.Clip("noise_pink-000000", {"kind": "noise", "source": "synthetic", "noise": "pink"}, 4.0)
    meta, audio, rate = noise.render_clip(clip, np.random.default_rng(5), {})
    again = noise.render_clip(clip, np.random.default_rng(5), {})[1]
    assert rate == noise.CLIP_RATE and audio.size == 4 * noise.CLIP_RATE and np.array_equal(audio, again)
    assert np.abs(audio).max() == pytest.approx(noise.PEAK) and meta == clip.meta


def test_band_noise_stays_in_its_band_and_names_a_bad_one():
    x = noise.band_noise(16_000, 500.0, 1500.0, np.random.default_rng(0))
    power = np.abs(np.fft.rfft(x)) ** 2
    hz = np.fft.rfftfreq(x.size, 1 / noise.CLIP_RATE)
    inside = power[(hz >= 500) & (hz <= 1500)].sum()
    assert inside / power.sum() > 0.999
    with pytest.raises(ValueError, match="900.0-300.0"):
        noise.band_noise(100, 900.0, 300.0, np.random.default_rng(0))
