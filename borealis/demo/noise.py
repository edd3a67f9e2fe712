"""Noise and room impulse responses for the demo's augmentation pools, synthesised with numpy.

What: `coloured_noise` (white, pink ~1/f, brown ~1/f^2, held flat below 20 Hz), `band_noise`
(white noise kept between two frequencies 1-2 octaves apart), `mains_hum` (50 or 60 Hz, 3-8
harmonics, brown noise 20-35 dB under it), `babble` (4-6 training speech
clips, each looped through the clip from a random offset, at -8..0 dB) and
`impulse_response` (a direct-path impulse at t=0, a 3-20 ms pre-delay, then Gaussian noise
decaying 60 dB over its RT60 of 0.15-0.9 s, peaking at 0.2-0.7 of the direct path, so the
`ImpulseResponse` effect's peak alignment keeps speech in place). `render_clip` turns a
planned `Clip` into audio; `add_noise` gives the noisy benchmark its white or pink noise.

Why: the demo runs the augmentation curriculum (`BackgroundNoise`, `ImpulseResponse` in
configs/demo.yaml) without downloading MUSAN or RIR corpora. The training pool's kinds
(`NOISE_TYPES`) and the noisy benchmark's (`BENCH_NOISE`: white, pink) are disjoint, so
`demo_en_noisy` measures robustness to noise the model never heard. Every waveform draws from a
generator passed in, so a clip depends only on its own seed.

Cost: the default pools (100 clips, 6.4 min of audio, 9.7 MB as FLAC) take < 1 s of numpy
FFTs; babble reuses speech already synthesised for training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from borealis.demo.speech import ESPEAK_RATE, PEAK, SynthJob

CLIP_RATE = 16_000  # noise and IRs are synthesised at the shard rate (babble mixes espeak audio)
NOISE_TYPES = ("brown", "band", "hum", "babble")  # the training pool; none is a benchmark kind
NOISE_SECONDS = (4.0, 8.0)
NOISE_FLOOR_HZ = 20.0  # pink/brown spectra are held flat below: no sub-audio drift
HUM_HZ = (50.0, 60.0)  # mains fundamentals (Europe/Asia, Americas)
HUM_HARMONICS = (3, 8)  # partials, the fundamental included
HUM_NOISE_DB = (20.0, 35.0)  # hum power over the brown noise under it
BAND_LOW_HZ = (150.0, 3000.0)  # band noise: lower edge
BAND_OCTAVES = (1.0, 2.0)  # band noise: width (the upper edge stays under 7.5 kHz)
BABBLE_TALKERS = (4, 6)  # training speech clips per babble clip
BABBLE_LEVEL_DB = (-8.0, 0.0)  # per talker, relative to unit RMS
IR_RT60 = (0.15, 0.9)  # seconds: small room to hall
IR_PREDELAY_MS = (3.0, 20.0)  # gap between the direct path and the reverberant tail
IR_REVERB_PEAK = (0.2, 0.7)  # tail peak relative to the direct path (always the IR's peak)
IR_DIRECT = 0.9  # direct-path amplitude at t=0
NOISE_SNR_DB = (15.0, 25.0)  # demo_en_noisy's SNR range
BENCH_NOISE = ("white", "pink")  # demo_en_noisy's noise kinds
assert not set(NOISE_TYPES) & set(BENCH_NOISE), "the noisy benchmark's noise kinds must be unheard in training"


@dataclass
class Clip:
    """One noise or impulse-response clip to synthesise: its key, metadata (every planned
    parameter) and duration; a babble clip also lists the training speech it mixes."""

    key: str
    meta: dict
    seconds: float
    talkers: tuple[SynthJob, ...] = ()


def coloured_noise(n: int, colour: str, rng: np.random.Generator, *, floor_bin: float = 1.0) -> np.ndarray:
    """`n` samples (float64) of white, pink (power ~ 1/f) or brown (~ 1/f^2) Gaussian noise.

    Shaped in the frequency domain; bins below `floor_bin` (at least bin 1) get the gain of
    `floor_bin`, so a floor of 20 Hz keeps brown noise from turning into a slow drift.
    """
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    if colour not in ("pink", "brown"):
        raise ValueError(f"noise colour {colour!r} is not one of white, pink, brown")
    spectrum = np.fft.rfft(white)
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    f = np.maximum(f, floor_bin)
    return np.fft.irfft(spectrum / (np.sqrt(f) if colour == "pink" else f), n)


def band_noise(n: int, low_hz: float, high_hz: float, rng: np.random.Generator) -> np.ndarray:
    """`n` samples (float64) at `CLIP_RATE` of Gaussian noise kept between `low_hz` and
    `high_hz` (a brick-wall band in the frequency domain)."""
    if not 0 < low_hz < high_hz <= CLIP_RATE / 2:
        raise ValueError(f"band noise needs 0 < low < high <= {CLIP_RATE // 2} Hz, got {low_hz}-{high_hz}")
    spectrum = np.fft.rfft(rng.standard_normal(n))
    hz = np.fft.rfftfreq(n, 1 / CLIP_RATE)
    spectrum[(hz < low_hz) | (hz > high_hz)] = 0
    return np.fft.irfft(spectrum, n)


def add_noise(audio: np.ndarray, kind: str, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus white or pink (1/f power) noise at `snr_db` dB relative to its mean power."""
    if kind not in BENCH_NOISE:
        raise ValueError(f"noise kind {kind!r} is not one of {', '.join(BENCH_NOISE)}")
    noise = coloured_noise(audio.size, kind, rng)
    signal_power = float(np.mean(audio.astype(np.float64) ** 2))
    noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / max(float(np.mean(noise ** 2)), 1e-20))
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def _power(x: np.ndarray) -> float:
    return max(float(np.mean(np.square(x, dtype=np.float64))), 1e-20)


def mains_hum(n: int, hz: float, harmonics: int, noise_db: float, rng: np.random.Generator) -> np.ndarray:
    """Mains hum at `CLIP_RATE`: `harmonics` partials of `hz` (amplitudes ~ U(0.3, 1)/k, random
    phases) over brown noise `noise_db` dB below the hum's power."""
    k = np.arange(1, harmonics + 1)
    amplitudes = rng.uniform(0.3, 1.0, harmonics) / k
    phases = rng.uniform(0.0, 2 * np.pi, harmonics)
    t = np.arange(n)[:, None] / CLIP_RATE
    hum = np.sin(2 * np.pi * hz * k * t + phases) @ amplitudes  # (n, harmonics) @ (harmonics,) -> (n,)
    noise = coloured_noise(n, "brown", rng, floor_bin=NOISE_FLOOR_HZ * n / CLIP_RATE)
    return hum + noise * np.sqrt(_power(hum) / _power(noise) / 10 ** (noise_db / 10))


def babble(talkers: Sequence[np.ndarray], levels_db: Sequence[float], seconds: float,
           rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Sum of speech clips (at `ESPEAK_RATE`), each at unit RMS times its level, looped to fill
    `seconds` and rotated by a random offset, so every talker speaks throughout (placed once,
    4-6 clips of ~2 s leave most of a 4-8 s clip to one talker or none); returns the mix and
    the offsets in seconds."""
    n = round(seconds * ESPEAK_RATE)
    mix = np.zeros(n)
    offsets = []
    for speech, level in zip(talkers, levels_db):
        x = speech.astype(np.float64) * (10 ** (level / 20) / np.sqrt(_power(speech)))
        start = int(rng.integers(x.size))
        mix += np.tile(x, n // x.size + 2)[start:start + n]  # this talker's clip repeats from `start`
        offsets.append(round(start / ESPEAK_RATE, 3))
    return mix, offsets


def impulse_response(rt60: float, predelay_ms: float, reverb_peak: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room IR at `CLIP_RATE`: a direct-path impulse (`IR_DIRECT`) at t=0, silence
    for the pre-delay, then Gaussian noise decaying 60 dB over `rt60` seconds, whose peak is
    `reverb_peak` of the direct path (so `ImpulseResponse`'s peak alignment finds t=0)."""
    pre, tail_n = round(predelay_ms * CLIP_RATE / 1000), round(rt60 * CLIP_RATE)
    t = np.arange(tail_n) / CLIP_RATE
    tail = rng.standard_normal(tail_n) * 10 ** (-3 * t / rt60)  # amplitude -60 dB at rt60
    ir = np.zeros(ir_frames(rt60, predelay_ms))  # 1 + pre + tail_n
    ir[0] = IR_DIRECT
    ir[1 + pre:] = tail * (reverb_peak * IR_DIRECT / np.abs(tail).max())
    return ir


def ir_frames(rt60: float, predelay_ms: float) -> int:
    """Length in samples of `impulse_response(rt60, predelay_ms, ...)`: the direct path, the
    pre-delay and the tail."""
    return 1 + round(predelay_ms * CLIP_RATE / 1000) + round(rt60 * CLIP_RATE)


def render_clip(clip: Clip, rng: np.random.Generator, speech: dict[SynthJob, np.ndarray]) -> tuple[dict, np.ndarray, int]:
    """The metadata (with what was drawn here), audio and its rate of a planned noise/IR clip.

    Waveforms draw from `rng` alone, so with a generator per clip a clip does not depend on
    the others; `speech` holds the babble talkers' synthesised audio.
    """
    meta, rate = dict(clip.meta), CLIP_RATE
    n = round(clip.seconds * CLIP_RATE)
    kind = meta.get("noise")
    if meta["kind"] == "ir":
        return meta, impulse_response(meta["rt60_s"], meta["predelay_ms"], meta["reverb_peak"], rng), rate
    if kind == "hum":
        audio = mains_hum(n, meta["hum_hz"], meta["harmonics"], meta["noise_db"], rng)
    elif kind == "babble":
        audio, meta["offsets_s"] = babble([speech[j] for j in clip.talkers], meta["levels_db"], clip.seconds, rng)
        rate = ESPEAK_RATE
    elif kind == "band":
        audio = band_noise(n, meta["low_hz"], meta["high_hz"], rng)
    else:
        audio = coloured_noise(n, kind, rng, floor_bin=NOISE_FLOOR_HZ * n / CLIP_RATE)
    return meta, audio * (PEAK / np.abs(audio).max()), rate
