"""The augmentation curriculum: the seed's dozen effects, staged from clean to harsh.

What:
  * `Effect`s act on one 16 kHz mono float32 clip. Each has its own probability `p` and
    the seed's ranges as defaults: background noise from noise pools, impulse responses from
    IR pools, EQ, gain, band-pass, resample round-trip, telephony, MP3/Opus codec, clipping,
    pitch shift and speed. `SpecAugment` masks the log-mel on the device, in the module.
  * An `AugmentationStage` (name, start_epoch, start_step, effects, spec_augment) is one
    step of the curriculum; `AugmentationPipeline` holds the stages and knows which is active.
  * The active stage index lives in a shared-memory tensor, so when the
    `callbacks.AugmentationScheduler` switches it in the trainer process the DataLoader
    workers (persistent ones too) see it on their next clip.

Randomness: every parameter is drawn from the `numpy.random.Generator` the caller passes
(the data stream seeds one per seed, epoch, rank and worker), so a run reproduces and no
two workers draw the same sequence. audiomentations draws from Python's global `random` and
NumPy's global state; `_seeded` reseeds both from the caller's generator around each call and
restores them after.

Backends (figures: `tools/bench_augment.py`, BENCHMARKS.md): audiomentations for EQ, gain,
the Butterworth filters and pitch shift (signalsmith-stretch, its default in 0.43); soxr for resampling and speed; scipy's overlap-add convolution
for impulse responses; libsndfile (soundfile) for MP3 and Opus, in memory.
"""

from __future__ import annotations

import io
import random
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import audiomentations as am
import numpy as np
import soundfile as sf
import soxr
import torch
from scipy.signal import oaconvolve

from borealis.shards import (
    INDEX_NAME,
    SAMPLE_RATE,
    SampleRef,
    index_samples,
    list_shards,
    read_index,
    read_sample,
)
from borealis.spec_augment import SpecAugment

Range = tuple[float, float]


def _check_range(name: str, value: Sequence[float], low: float = -np.inf, high: float = np.inf) -> Range:
    lo, hi = (float(v) for v in value)
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name} must be an increasing pair within [{low}, {high}], got {list(value)}")
    return lo, hi


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


@contextmanager
def _seeded(rng: np.random.Generator):
    """Python's `random` and NumPy's global state (audiomentations draws from both: the filter
    cutoffs and EQ centres come from `np.random`) reseeded from `rng`, then restored."""
    state, np_state = random.getstate(), np.random.get_state()
    random.seed(int(rng.integers(2**63)))
    np.random.seed(int(rng.integers(2**32)))
    try:
        yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


class Effect:
    """One augmentation of a 16 kHz mono float32 clip.

    Args:
        p: probability that a stage applies this effect to a clip.

    `apply(audio, rng)` always applies it, with parameters drawn from `rng`, and records them
    in `self.last` (for tests and logs). Subclasses keep the dtype float32. `keeps_length`
    declares that `apply` returns as many samples as it gets (the training stream then defers
    the effect to the batch: `AugmentationStage.keeps_length`); false unless declared.
    """

    keeps_length: bool = False

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1], got {p}")
        self.p = p
        self.last: dict = {}

    def apply(self, audio: np.ndarray, rng: np.random.Generator, max_samples: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def check(self) -> None:
        """Fail now, with a clear message, on anything that would fail mid-training (missing pools)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "last")
        return f"{type(self).__name__}({args})"


class _PoolClips:
    """Random access to the clips of a shard pool (noise, impulse responses), with an LRU cache."""

    def __init__(self, pool: str, cache_size: int) -> None:
        self.pool, self.cache_size = pool, cache_size
        self._refs: list[SampleRef] | None = None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def check(self) -> None:
        """Raise FileNotFoundError (no shards) or ValueError (no audio clips), naming the pool."""
        self._index()

    def _index(self) -> list[SampleRef]:
        # Lazy: in the worker that uses it, unless `check` ran first (tar headers only, so cheap).
        if self._refs is None:
            try:
                shards = list_shards(self.pool)
            except FileNotFoundError:
                index = Path(self.pool) / INDEX_NAME
                if index.is_file() and not read_index(index)["shards"]:  # a pool written with no samples
                    raise ValueError(f"augmentation pool {self.pool!r} holds no audio clips (empty index)") from None
                raise
            refs = [r for r in index_samples(shards) if "flac" in r.members or "wav" in r.members]
            if not refs:
                raise ValueError(f"augmentation pool {self.pool!r} holds no audio clips")
            self._refs = refs
        return self._refs

    def draw(self, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        refs = self._index()
        i = int(rng.integers(len(refs)))
        clip = self._cache.get(i)
        if clip is None:
            clip = read_sample(refs[i])["audio"]
            self._cache[i] = clip
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return refs[i].key, clip


class BackgroundNoise(Effect):
    """Mix a clip from a noise pool (cafe, street, A/C hum ...) in at a drawn SNR.

    Args:
        pool: noise shard pool (folder with index.json, or a glob of .tar shards).
        snr_db: signal-to-noise ratio range in dB, by mean power over the clip.
        cache_size: decoded noise clips kept in memory per worker.
        p: probability of applying.
    """

    keeps_length = True

    def __init__(self, pool: str, snr_db: Range = (18.0, 28.0), cache_size: int = 128, p: float = 0.5) -> None:
        super().__init__(p)
        self.pool, self.snr_db = pool, _check_range("snr_db", snr_db)
        self._clips = _PoolClips(pool, cache_size)

    def check(self) -> None:
        self._clips.check()

    def apply(self, audio, rng, max_samples=None):
        key, noise = self._clips.draw(rng)
        n = len(audio)
        if len(noise) < n:  # loop short noise
            noise = np.tile(noise, -(-n // len(noise)))
        start = int(rng.integers(len(noise) - n + 1))
        noise = noise[start:start + n]
        snr = float(rng.uniform(*self.snr_db))
        signal_power, noise_power = _rms(audio) ** 2, _rms(noise) ** 2
        scale = np.sqrt(signal_power / (noise_power * 10 ** (snr / 10))) if noise_power > 0 else 0.0
        self.last = {"noise": key, "snr_db": snr}
        return (audio + scale * noise).astype(np.float32)


class ImpulseResponse(Effect):
    """Convolve with a room or hall impulse response from an IR pool.

    The IR is aligned on its peak (the direct path), so speech does not shift in time; the
    output keeps the input's length and RMS level.

    Args:
        pool: impulse-response shard pool.
        cache_size: decoded IRs kept in memory per worker.
        p: probability of applying.
    """

    keeps_length = True

    def __init__(self, pool: str, cache_size: int = 128, p: float = 0.3) -> None:
        super().__init__(p)
        self.pool = pool
        self._clips = _PoolClips(pool, cache_size)

    def check(self) -> None:
        self._clips.check()

    def apply(self, audio, rng, max_samples=None):
        key, ir = self._clips.draw(rng)
        ir = ir[int(np.argmax(np.abs(ir))):]
        wet = oaconvolve(audio, ir)[:len(audio)]
        level = _rms(wet)
        self.last = {"ir": key, "ir_seconds": len(ir) / SAMPLE_RATE}
        return (wet * (_rms(audio) / level) if level > 0 else wet).astype(np.float32)


class _Audiomentations(Effect):
    """An audiomentations transform applied with p=1 under `_seeded`; parameters recorded."""

    keeps_length = True  # filters and gains act sample by sample; PitchShift fits its output to the input

    def _run(self, audio: np.ndarray, rng: np.random.Generator, *transforms) -> np.ndarray:
        with _seeded(rng):
            for t in transforms:
                audio = t(audio, SAMPLE_RATE)
        self.last = {k: v for t in transforms for k, v in t.parameters.items() if k != "should_apply"}
        return audio.astype(np.float32, copy=False)


class Equalizer(_Audiomentations):
    """Seven-band parametric EQ (audiomentations), each band's gain drawn in `gain_db`.

    Args:
        gain_db: per-band gain range in dB.
        p: probability of applying.
    """

    def __init__(self, gain_db: Range = (-6.0, 6.0), p: float = 0.3) -> None:
        super().__init__(p)
        self.gain_db = _check_range("gain_db", gain_db)
        self._eq = am.SevenBandParametricEQ(min_gain_db=self.gain_db[0], max_gain_db=self.gain_db[1], p=1.0)

    def apply(self, audio, rng, max_samples=None):
        out = self._run(audio, rng, self._eq)
        self.last = {"gains_db": [f.parameters.get("gain_db") for f in
                                  [self._eq.low_shelf_filter, *self._eq.peaking_filters, self._eq.high_shelf_filter]]}
        return out


class Gain(_Audiomentations):
    """Scale by a gain drawn in `gain_db` (audiomentations `Gain`).

    Args:
        gain_db: gain range in dB.
        p: probability of applying.
    """

    def __init__(self, gain_db: Range = (-3.0, 3.0), p: float = 0.5) -> None:
        super().__init__(p)
        self.gain_db = _check_range("gain_db", gain_db)
        self._gain = am.Gain(min_gain_db=self.gain_db[0], max_gain_db=self.gain_db[1], p=1.0)

    def apply(self, audio, rng, max_samples=None):
        out = self._run(audio, rng, self._gain)
        self.last["gain_db"] = float(20 * np.log10(self.last["amplitude_ratio"]))
        return out


class BandPass(_Audiomentations):
    """Butterworth high-pass at a drawn low cut, then low-pass at a drawn high cut (audiomentations).

    Args:
        low_cut_hz: range of the high-pass cutoff.
        high_cut_hz: range of the low-pass cutoff.
        rolloff_db: filter slope per octave (fixed, so the band edges are predictable).
        p: probability of applying.
    """

    def __init__(self, low_cut_hz: Range = (150.0, 350.0), high_cut_hz: Range = (3200.0, 5200.0),
                 rolloff_db: int = 24, p: float = 0.3) -> None:
        super().__init__(p)
        self.low_cut_hz = _check_range("low_cut_hz", low_cut_hz, 1.0, SAMPLE_RATE / 2)
        self.high_cut_hz = _check_range("high_cut_hz", high_cut_hz, self.low_cut_hz[1], SAMPLE_RATE / 2)
        self.rolloff_db = rolloff_db
        self._filters = _band(self.low_cut_hz, self.high_cut_hz, rolloff_db)

    def apply(self, audio, rng, max_samples=None):
        out = self._run(audio, rng, *self._filters)
        hp, lp = self._filters
        self.last = {"low_cut_hz": hp.parameters["cutoff_freq"], "high_cut_hz": lp.parameters["cutoff_freq"]}
        return out


def _band(low: Range, high: Range, rolloff_db: int) -> tuple[am.HighPassFilter, am.LowPassFilter]:
    return (am.HighPassFilter(min_cutoff_freq=low[0], max_cutoff_freq=low[1], min_rolloff=rolloff_db,
                              max_rolloff=rolloff_db, p=1.0),
            am.LowPassFilter(min_cutoff_freq=high[0], max_cutoff_freq=high[1], min_rolloff=rolloff_db,
                             max_rolloff=rolloff_db, p=1.0))


def _fit_length(out: np.ndarray, n: int) -> np.ndarray:
    """`out` cropped or zero-padded to exactly `n` samples (resamplers and codecs drift by a few)."""
    return out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))


def _round_trip(audio: np.ndarray, rate: int) -> np.ndarray:
    """Down to `rate` and back to 16 kHz with soxr, keeping the length exactly."""
    return _fit_length(soxr.resample(soxr.resample(audio, SAMPLE_RATE, rate), rate, SAMPLE_RATE), len(audio))


class ResampleRoundTrip(Effect):
    """Resample to a drawn rate and back (soxr): the band above rate/2 is lost.

    Args:
        rate_hz: intermediate sample-rate range.
        p: probability of applying.
    """

    keeps_length = True

    def __init__(self, rate_hz: Range = (14000.0, 20000.0), p: float = 0.3) -> None:
        super().__init__(p)
        self.rate_hz = _check_range("rate_hz", rate_hz, 1000.0)

    def apply(self, audio, rng, max_samples=None):
        rate = int(rng.uniform(*self.rate_hz))
        self.last = {"rate_hz": rate}
        return _round_trip(audio, rate).astype(np.float32)


class Telephony(_Audiomentations):
    """A phone line: resample round-trip at a drawn narrow-band rate, then a fixed voice band.

    Args:
        rate_hz: intermediate sample-rate range (8-12 kHz).
        band_hz: the pass band kept after the round-trip.
        p: probability of applying.
    """

    def __init__(self, rate_hz: Range = (8000.0, 12000.0), band_hz: Range = (180.0, 4200.0), p: float = 0.2) -> None:
        super().__init__(p)
        self.rate_hz = _check_range("rate_hz", rate_hz, 1000.0)
        self.band_hz = _check_range("band_hz", band_hz, 1.0, SAMPLE_RATE / 2)
        self._filters = _band((self.band_hz[0],) * 2, (self.band_hz[1],) * 2, 24)

    def apply(self, audio, rng, max_samples=None):
        rate = int(rng.uniform(*self.rate_hz))
        out = self._run(_round_trip(audio, rate), rng, *self._filters)
        self.last = {"rate_hz": rate, "band_hz": list(self.band_hz)}
        return out


# libsndfile maps compression_level linearly onto the bitrate: MPEG-2 layer III (16 kHz) spans
# 160 -> 8 kbps over levels 0 -> 1; Opus spans 256 -> 6 kbps (measured: tests/test_augmentations.py).
# MP3 CBR snaps to the MPEG-2 table (8, 16, ..., 144, 160 kbps).
_CODECS = {"mp3": ("MP3", "MPEG_LAYER_III", 160.0, 8.0), "opus": ("OGG", "OPUS", 256.0, 6.0)}


def _encode(audio: np.ndarray, codec: str, kbps: float) -> bytes:
    """`audio` encoded in memory with `codec` at about `kbps` (see `_CODECS`)."""
    fmt, subtype, top, bottom = _CODECS[codec]
    level = float(np.clip((top - kbps) / (top - bottom), 0.0, 1.0))
    if codec == "mp3":
        # libsndfile rejects exactly 1.0 for MP3 (first applied as LAME VBR quality 10, out of
        # range); 0.999 still gives 8 kbps CBR.
        level = min(level, 0.999)
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format=fmt, subtype=subtype, compression_level=level,
             bitrate_mode="CONSTANT" if codec == "mp3" else None)
    return buf.getvalue()


class Codec(Effect):
    """Encode and decode in memory with MP3 or Opus (libsndfile) at a drawn bitrate.

    Args:
        codecs: codecs to draw from (`mp3`, `opus`).
        bitrate_kbps: bitrate range; within every chosen codec's span (MP3 8-160, Opus 6-256 kbps).
        p: probability of applying.
    """

    keeps_length = True

    def __init__(self, codecs: Sequence[str] = ("mp3", "opus"), bitrate_kbps: Range = (96.0, 160.0),
                 p: float = 0.3) -> None:
        super().__init__(p)
        unknown = set(codecs) - set(_CODECS)
        if unknown or not codecs:
            raise ValueError(f"codecs must be a non-empty subset of {sorted(_CODECS)}, got {list(codecs)}")
        low = max(_CODECS[c][3] for c in codecs)  # a range no codec can reach would be silently capped
        high = min(_CODECS[c][2] for c in codecs)
        self.codecs, self.bitrate_kbps = list(codecs), _check_range(f"bitrate_kbps (codecs {list(codecs)})",
                                                                    bitrate_kbps, low, high)

    def apply(self, audio, rng, max_samples=None):
        codec = self.codecs[int(rng.integers(len(self.codecs)))]
        kbps = float(rng.uniform(*self.bitrate_kbps))
        out, rate = sf.read(io.BytesIO(_encode(audio, codec, kbps)), dtype="float32")
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"{codec} round-trip came back at {rate} Hz")
        self.last = {"codec": codec, "bitrate_kbps": kbps}
        return _fit_length(out, len(audio))


class Clipping(Effect):
    """Hard-clip at a drawn fraction of the clip's peak.

    Args:
        threshold: range of the clip level, as a fraction of the peak amplitude.
        p: probability of applying.
    """

    keeps_length = True

    def __init__(self, threshold: Range = (0.82, 0.95), p: float = 0.2) -> None:
        super().__init__(p)
        self.threshold = _check_range("threshold", threshold, 0.0, 1.0)

    def apply(self, audio, rng, max_samples=None):
        fraction = float(rng.uniform(*self.threshold))
        level = fraction * float(np.max(np.abs(audio), initial=0.0))
        self.last = {"threshold": fraction}
        return np.clip(audio, -level, level)


class PitchShift(_Audiomentations):
    """Shift pitch by drawn semitones, keeping the duration (audiomentations, signalsmith-stretch).

    Args:
        semitones: shift range.
        p: probability of applying.
    """

    def __init__(self, semitones: Range = (-4.0, 4.0), p: float = 0.2) -> None:
        super().__init__(p)
        self.semitones = _check_range("semitones", semitones, -24.0, 24.0)
        self._shift = am.PitchShift(min_semitones=self.semitones[0], max_semitones=self.semitones[1],
                                    method="signalsmith_stretch", p=1.0)

    def apply(self, audio, rng, max_samples=None):
        return _fit_length(self._run(audio, rng, self._shift), len(audio))


class Speed(Effect):
    """Play faster or slower (pitch moves with tempo): the duration divides by the factor.

    A soxr resample, so it is cheap. With `max_samples` (the encoder window), the factor
    is raised as needed so the result still fits.

    Args:
        factor: speed range (0.8-1.2x).
        p: probability of applying.
    """

    keeps_length = False  # the duration divides by the factor

    def __init__(self, factor: Range = (0.8, 1.2), p: float = 0.3) -> None:
        super().__init__(p)
        self.factor = _check_range("factor", factor, 0.1, 10.0)

    def apply(self, audio, rng, max_samples=None):
        factor = float(rng.uniform(*self.factor))
        if max_samples:
            factor = max(factor, len(audio) / max_samples)
        self.last = {"factor": factor}
        return soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)


class Delay(Effect):
    """Start later: prepend a drawn stretch of silence (the clip gets longer by it).

    Corpora cut clips at the speech onset (espeak, forced alignment), so a model trained on
    them learns where speech starts in the window; at inference a segmenter or a recording
    starts it anywhere. Drawn delays teach it not to care. With `max_samples`, the delay
    shrinks so the clip still fits.

    Args:
        seconds: delay range in seconds.
        p: probability of applying.
    """

    keeps_length = False  # the delay is prepended

    def __init__(self, seconds: Range = (0.0, 0.25), p: float = 0.5) -> None:
        super().__init__(p)
        self.seconds = _check_range("seconds", seconds, 0.0, 30.0)

    def apply(self, audio, rng, max_samples=None):
        pad = round(float(rng.uniform(*self.seconds)) * SAMPLE_RATE)
        if max_samples:
            pad = max(0, min(pad, max_samples - len(audio)))
        self.last = {"seconds": pad / SAMPLE_RATE}
        return np.concatenate([np.zeros(pad, np.float32), audio.astype(np.float32, copy=False)])


class AugmentationStage:
    """One step of the curriculum.

    Args:
        name: shown in logs and TensorBoard (`clean`, `mild`, `harsh`, `none` ...).
        start_epoch: the stage becomes active at this epoch ...
        start_step: ... or, if set, at this global step (whichever the schedule reaches later
            of epoch and step is the rule: both must be reached).
        effects: waveform effects, tried in order, each with its own p.
        spec_augment: log-mel masking applied in the module while this stage is active.
    """

    def __init__(self, name: str, start_epoch: int = 0, start_step: int | None = None,
                 effects: list[Effect] | None = None, spec_augment: SpecAugment | None = None) -> None:
        if start_epoch < 0 or (start_step is not None and start_step < 0):
            raise ValueError(f"stage {name!r}: start_epoch/start_step must be >= 0")
        self.name, self.start_epoch, self.start_step = name, start_epoch, start_step
        self.effects, self.spec_augment = list(effects or []), spec_augment

    @property
    def keeps_length(self) -> bool:
        """Whether every effect of the stage keeps a clip's length (see `Effect.keeps_length`)."""
        return all(e.keeps_length for e in self.effects)

    def reached(self, epoch: int, step: int) -> bool:
        return epoch >= self.start_epoch and (self.start_step is None or step >= self.start_step)

    def __call__(self, audio: np.ndarray, rng: np.random.Generator, max_samples: int | None = None,
                 record: list[dict] | None = None) -> np.ndarray:
        """Apply each effect with its probability; `record` collects what was applied."""
        if audio.size == 0:
            return audio
        draws = rng.random(len(self.effects))
        for effect, u in zip(self.effects, draws):
            if u < effect.p:
                audio = effect.apply(audio, rng, max_samples)
                if record is not None:
                    record.append({"effect": type(effect).__name__, **effect.last})
        return audio

    def __repr__(self) -> str:
        return (f"AugmentationStage({self.name!r}, start_epoch={self.start_epoch}, start_step={self.start_step}, "
                f"effects={self.effects}, spec_augment={'on' if self.spec_augment else 'off'})")


class AugmentationPipeline:
    """The curriculum: ordered stages and the index of the active one, shared with workers.

    Args:
        stages: ordered by start; the first must start at epoch 0 (use an empty `none`
            stage for clean audio first). The active stage is the last one reached.
    """

    def __init__(self, stages: list[AugmentationStage]) -> None:
        if not stages:
            raise ValueError("AugmentationPipeline needs at least one stage (an empty `none` stage for none)")
        if not stages[0].reached(0, 0):
            raise ValueError(f"the first stage ({stages[0].name!r}) must start at epoch 0, step 0")
        starts = [(s.start_epoch, s.start_step or 0) for s in stages]
        if starts != sorted(starts):
            raise ValueError(f"stages must be ordered by start (epoch, step): {starts}")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        self.stages = stages
        self._active = torch.zeros(1, dtype=torch.long).share_memory_()  # written by the scheduler

    @property
    def active_index(self) -> int:
        return int(self._active.item())

    @property
    def active(self) -> AugmentationStage:
        return self.stages[self.active_index]

    def stage_at(self, epoch: int, step: int) -> int:
        """Index of the stage the curriculum is in at (epoch, global step)."""
        return max(i for i, s in enumerate(self.stages) if s.reached(epoch, step) or i == 0)

    def problems(self) -> list[tuple[str, Exception]]:
        """Every effect whose noise/IR pool is missing or empty: (`stages[i].effects[j]`, error)."""
        found = []
        for i, stage in enumerate(self.stages):
            for j, effect in enumerate(stage.effects):
                try:
                    effect.check()
                except (FileNotFoundError, ValueError) as err:
                    where = f"augmentation stage {stage.name!r}, {type(effect).__name__}"
                    found.append((f"stages[{i}].effects[{j}]", type(err)(f"{where}: {err}")))
        return found

    def check(self) -> None:
        """Raise the first of `problems` (noise/IR pools exist), before training starts."""
        for _, err in self.problems()[:1]:
            raise err

    def set_stage(self, index: int) -> None:
        if not 0 <= index < len(self.stages):
            raise IndexError(f"stage {index} out of range (0..{len(self.stages) - 1})")
        self._active.fill_(index)

    def __call__(self, audio: np.ndarray, rng: np.random.Generator, max_samples: int | None = None) -> np.ndarray:
        return self.active(audio, rng, max_samples)


def none_stage() -> AugmentationStage:
    """The no-augmentation stage, for ablations."""
    return AugmentationStage("none")

