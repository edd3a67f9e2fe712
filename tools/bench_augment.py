"""Decode + augment throughput of the harshest augmentation stage, per CPU core, against audiomentations.

What:
    python tools/bench_augment.py                      # synthetic pools, the built-in harsh stage
    python tools/bench_augment.py --pool shards/tone_speak --noise-pool shards/noise/cafe --ir-pool shards/ir/rooms
    python tools/bench_augment.py --config configs/it_fresh.yaml --stage harsh --noise-pool N --ir-pool I

Every clip is decoded from its tar shard (`shards.iter_shard`: FLAC from the tar bytes) and
passed through `AugmentationStage.__call__` with a seeded generator, as a DataLoader worker
does. The baseline is the naive way, measured in the same run on the same shards: an
`audiomentations.Compose` of the same effects, probabilities and ranges with audiomentations'
default backends (`baseline_transform` maps each effect and says where it differs). The
baseline replays ours' per-clip on/off draws (common random numbers), so both sides apply the
same effects to the same clips and the ratio compares implementations, not luck: with p = 0.2
on a few hundred clips, which clips draw the codec moves the stage cost by tens of percent.
A per-effect table (each effect forced on for every clip; Codec also per codec) says where
the time goes: p x cost is what an effect adds to the stage on average.

Why: the issue's acceptance is >= 100x real time per CPU core on the harshest stage; if it
is missed the report says by how much and which effects bound it.

How it measures: one thread (OMP/MKL/OpenBLAS/numba threads set to 1 before numpy loads when
run as a script; `threadpoolctl` and `torch.set_num_threads(1)` in `main`), and *process CPU
time* (`time.process_time`, all threads of the process), so the figure is audio-seconds per
CPU-second = x real time per core. Trust the CPU figures, not wall time: on a shared machine
other jobs stretch the wall clock but not this process's CPU time. Throughput is counted on
the *input* audio (Speed changes the output length). Library loading and the first pool
reads happen in an untimed warm-up call per effect. The synthetic noise and IR pools (12 clips
each) fit the effects' caches; a real pool larger than `cache_size` (128) decodes a whole
noise clip or IR on most draws, which this run does not see. The default run (200 clips of
2-12 s, ~24 min of audio) takes ~100 s of CPU (two thirds of it in the codecs), ~2 min.

Input: by default speech-like clips are synthesised into a temp dir (harmonic tones with
moving formants, syllable envelopes and fricative noise), plus a noise pool (pink noise, mains
hum, babble) and an IR pool (exponentially decaying noise, RT60 0.2-1.0 s), all written as
FLAC shards with `ShardWriter`; no espeak, no downloads. The baseline reads noise and IRs as
WAV files exported from the same pools, as audiomentations requires.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one core: before numpy/torch load (not when imported by a test)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                 "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import audiomentations as am  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402  (comes with librosa, via scikit-learn)
from tqdm import tqdm  # noqa: E402


from borealis import augmentations as aug  # noqa: E402
from borealis.shards import SAMPLE_RATE, ShardWriter, iter_shard, list_shards  # noqa: E402

log = logging.getLogger("bench_augment")

TARGET_X_REALTIME = 100.0  # the issue's acceptance: >= 100x real time per core on the harshest stage
MAX_SAMPLES = 30 * SAMPLE_RATE  # configs/it_fresh.yaml max_seconds: Speed may not push a clip past it
NOISE_CLIPS, NOISE_SECONDS = 12, 8.0  # synthetic noise pool: 4 each of pink, hum, babble
IR_CLIPS, IR_RT60 = 12, (0.2, 1.0)  # synthetic IR pool: small rooms to halls
HOP = 160  # 10 ms control frames of the speech synthesiser


def harsh_stage(noise_pool: str, ir_pool: str) -> aug.AugmentationStage:
    """The reference curriculum's harsh stage: every effect, source -> room -> channel -> codec order.

    Ranges are the effects' defaults (the reference code's); the probabilities are the harsh stage's
    (configs/it_fresh.yaml mirrors this; `tests/test_bench_augment.py` checks they agree):

    | effect            | p   | range                                       |
    |-------------------|-----|---------------------------------------------|
    | Speed             | 0.3 | factor 0.8-1.2                              |
    | PitchShift        | 0.2 | -4..+4 semitones                            |
    | ImpulseResponse   | 0.3 | IR pool                                     |
    | BackgroundNoise   | 0.5 | noise pool, SNR 18-28 dB                    |
    | Equalizer         | 0.3 | 7 bands, -6..+6 dB                          |
    | BandPass          | 0.2 | high-pass 150-350 Hz, low-pass 3.2-5.2 kHz  |
    | ResampleRoundTrip | 0.2 | via 14-20 kHz                               |
    | Telephony         | 0.1 | via 8-12 kHz, band 180-4200 Hz              |
    | Codec             | 0.2 | MP3 or Opus, 96-160 kbps                    |
    | Clipping          | 0.1 | at 82-95% of the peak                       |
    | Gain              | 0.5 | -3..+3 dB                                   |

    SpecAugment (2 x 27 mel bins, 2 x 100 frames) runs on the GPU in the module: not benchmarked here.
    """
    return aug.AugmentationStage("harsh", start_epoch=5, effects=[
        aug.Speed(factor=(0.8, 1.2), p=0.3),
        aug.PitchShift(semitones=(-4.0, 4.0), p=0.2),
        aug.ImpulseResponse(pool=ir_pool, p=0.3),
        aug.BackgroundNoise(pool=noise_pool, snr_db=(18.0, 28.0), p=0.5),
        aug.Equalizer(gain_db=(-6.0, 6.0), p=0.3),
        aug.BandPass(low_cut_hz=(150.0, 350.0), high_cut_hz=(3200.0, 5200.0), p=0.2),
        aug.ResampleRoundTrip(rate_hz=(14000.0, 20000.0), p=0.2),
        aug.Telephony(rate_hz=(8000.0, 12000.0), band_hz=(180.0, 4200.0), p=0.1),
        aug.Codec(codecs=("mp3", "opus"), bitrate_kbps=(96.0, 160.0), p=0.2),
        aug.Clipping(threshold=(0.82, 0.95), p=0.1),
        aug.Gain(gain_db=(-3.0, 3.0), p=0.5),
    ], spec_augment=aug.SpecAugment(freq_masks=2, freq_width=27, time_masks=2, time_width=100))


def load_stage(path: str | Path, stage: str | None = None, noise_pool: str | None = None,
               ir_pool: str | None = None) -> aug.AugmentationStage:
    """An `AugmentationStage` from YAML/JSON in `class_path`/`init_args` form.

    The file holds one stage (`name`, `effects`, ...), a `stages:` list, or a whole training
    config (`data.augmentation.stages`); from a list, `stage` picks by name (default: the last,
    the harshest). `noise_pool`/`ir_pool`, when given, replace the pools of BackgroundNoise /
    ImpulseResponse effects (logged).
    """
    from jsonargparse import ArgumentParser

    cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping (a stage, `stages:` or a training config)")
    stages = cfg.get("stages")
    if "data" in cfg:
        stages = ((cfg["data"] or {}).get("augmentation") or {}).get("stages")
        if not stages:
            raise ValueError(f"{path}: data.augmentation.stages is missing or empty")
    if stages is not None:
        names = [s.get("name") for s in stages]
        if stage is None:
            cfg = stages[-1]
        elif stage in names:
            cfg = stages[names.index(stage)]
        else:
            raise ValueError(f"{path}: no stage named {stage!r}; stages are {names}")
    elif stage is not None and cfg.get("name") != stage:
        raise ValueError(f"{path}: holds stage {cfg.get('name')!r}, not {stage!r}")
    cfg = copy.deepcopy(cfg)
    for effect in cfg.get("effects") or []:
        kind = str(effect.get("class_path", "")).rsplit(".", 1)[-1]
        new = {"BackgroundNoise": noise_pool, "ImpulseResponse": ir_pool}.get(kind)
        if new is not None:
            log.info("%s: pool %r replaced by %r", kind, (effect.get("init_args") or {}).get("pool"), new)
            effect.setdefault("init_args", {})["pool"] = new
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--stage", type=aug.AugmentationStage)
    return parser.instantiate(parser.parse_object({"stage": cfg})).stage


# ---------------------------------------------------------------------------------------------
# Synthetic material


def speech_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """n samples of speech-like audio at 16 kHz: a voiced source with a wandering f0, harmonics
    shaped by three moving formants, a 3-5 Hz syllable envelope with pauses, and fricative noise."""
    t = np.arange(n) / SAMPLE_RATE
    frames = n // HOP + 2
    tf = np.arange(frames) * HOP / SAMPLE_RATE
    base = rng.uniform(90.0, 230.0)
    f0 = base * (1 + 0.12 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * tf + rng.uniform(0, 2 * np.pi))
                 + 0.03 * np.sin(2 * np.pi * 5.5 * tf))
    centres, spread = np.array([550.0, 1500.0, 2600.0]), np.array([200.0, 500.0, 250.0])  # F1-F3, Hz
    bw = np.array([90.0, 120.0, 160.0])
    formants = centres[:, None] + spread[:, None] * np.sin(
        2 * np.pi * rng.uniform(1.5, 4.0, (3, 1)) * tf + rng.uniform(0, 2 * np.pi, (3, 1)))  # (3, frames)
    k = np.arange(1, int(5000 // base) + 1)[:, None]
    hf = k * f0[None]  # (K, frames) harmonic frequencies
    amp = np.exp(-0.5 * ((hf[None] - formants[:, None]) / bw[:, None, None]) ** 2).sum(0) + 0.02  # (K, frames)
    amp /= np.sqrt(k)
    rotor = np.exp(2j * np.pi * np.cumsum(np.interp(t, tf, f0)) / SAMPLE_RATE)
    harmonic, voiced = np.ones(n, dtype=complex), np.zeros(n)
    idx, w = np.arange(n) // HOP, (np.arange(n) % HOP) / HOP  # linear interpolation between control frames
    for a in amp:
        harmonic *= rotor  # exp(i k phase): a multiply per harmonic instead of a sin
        voiced += (a[idx] * (1 - w) + a[idx + 1] * w) * harmonic.imag
    gate = np.repeat(rng.random(-(-n // 4800) + 1) > 0.2, 4800)[:n].astype(float)  # 0.3 s segments, 20% pauses
    gate = np.convolve(gate, np.hanning(801) / np.hanning(801).sum(), mode="same")
    syllable = np.clip(np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 0.7
    fricative = np.diff(rng.normal(size=n + 1)) * (1 - syllable) * (rng.random() * 0.05 + 0.02)
    x = gate * (voiced * syllable + fricative) + 3e-4 * rng.normal(size=n)
    x *= 0.1 / max(np.sqrt(np.mean(x ** 2)), 1e-9)  # -20 dBFS RMS
    return np.clip(x, -0.99, 0.99).astype(np.float32)


def noise_like(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Background noise: pink noise, mains hum with harmonics, or babble (four talkers)."""
    if kind == "pink":
        spectrum = np.fft.rfft(rng.normal(size=n))
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        x = np.fft.irfft(spectrum, n)
    elif kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        mains = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * h * mains * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 8))
        x = x + 0.3 * rng.normal(size=n)
    else:
        x = sum(speech_like(rng, n).astype(np.float64) for _ in range(4))
    x *= 0.05 / np.sqrt(np.mean(x ** 2))
    return np.clip(x, -0.99, 0.99).astype(np.float32)


def room_ir(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """A room impulse response: a direct path, a few early reflections, then a noise tail
    decaying 60 dB over `rt60` seconds."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = 0.3 * rng.normal(size=n) * np.exp(-6.91 * t / rt60)
    ir[rng.integers(int(0.003 * SAMPLE_RATE), int(0.03 * SAMPLE_RATE), 6)] += rng.uniform(-0.6, 0.6, 6)
    ir[0] = 1.0  # the direct path is the peak
    return (ir / np.max(np.abs(ir))).astype(np.float32)


def synthesise_speech(out: Path, clips: int, seconds: tuple[float, float], seed: int) -> str:
    """A shard pool of `clips` speech-like clips, each a whole number of samples in `seconds`."""
    rng = np.random.default_rng([seed, 1])
    lo, hi = round(seconds[0] * SAMPLE_RATE), round(seconds[1] * SAMPLE_RATE)
    with ShardWriter(out, max_samples=100) as w:
        for i in tqdm(range(clips), desc="synthesise speech", unit="clip", file=sys.stderr, disable=None, leave=False):
            w.write(f"speech-{i:05d}", {"task": "asr", "text": "", "source": "synthetic"},
                    speech_like(rng, int(rng.integers(lo, hi + 1))))
    return str(out)


def synthesise_noise(out: Path, seed: int) -> str:
    """A noise shard pool: NOISE_CLIPS clips of NOISE_SECONDS, pink / hum / babble in turn."""
    rng = np.random.default_rng([seed, 2])
    with ShardWriter(out) as w:
        for i in range(NOISE_CLIPS):
            kind = ("pink", "hum", "babble")[i % 3]
            w.write(f"noise-{kind}-{i:03d}", {"task": "noise", "source": kind},
                    noise_like(rng, kind, int(NOISE_SECONDS * SAMPLE_RATE)))
    return str(out)


def synthesise_irs(out: Path, seed: int) -> str:
    """An impulse-response shard pool: IR_CLIPS rooms with RT60 drawn in IR_RT60."""
    rng = np.random.default_rng([seed, 3])
    with ShardWriter(out) as w:
        for i in range(IR_CLIPS):
            w.write(f"ir-{i:03d}", {"task": "ir", "source": "synthetic"}, room_ir(rng, float(rng.uniform(*IR_RT60))))
    return str(out)


def export_wavs(pool: str, out_dir: Path) -> Path:
    """The audio clips of a shard pool as 16-bit WAV files (audiomentations reads folders of files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for shard in list_shards(pool):
        for sample in iter_shard(shard):
            if sample["audio"] is not None:
                sf.write(out_dir / f"{sample['key']}.wav", sample["audio"], SAMPLE_RATE, subtype="PCM_16")
    return out_dir


# ---------------------------------------------------------------------------------------------
# The baseline: audiomentations with its default backends


def mp3_backend() -> tuple[str, bool]:
    """audiomentations' default Mp3Compression backend and whether its package imports here."""
    default = inspect.signature(am.Mp3Compression).parameters["backend"].default
    module = {"fast-mp3-augment": "fast_mp3_augment", "lameenc": "lameenc", "pydub": "pydub"}.get(default, default)
    return default, importlib.util.find_spec(module) is not None


def baseline_transform(effect: aug.Effect, wav_dirs: dict[str, Path]) -> tuple[object | None, str, str]:
    """The closest audiomentations counterpart of `effect`, with the same p and ranges.

    Returns (transform or None, what it is, a note on how it differs; "" if it is the same).
    `wav_dirs` maps a pool (as in `effect.pool`) to a folder of its clips as WAV files.
    """
    p = effect.p
    if isinstance(effect, aug.Speed):  # resample, then read the result as 16 kHz: speed with pitch
        lo, hi = effect.factor
        return (am.Resample(min_sample_rate=int(np.ceil(SAMPLE_RATE / hi)), max_sample_rate=int(SAMPLE_RATE / lo), p=p),
                "Resample (read back as 16 kHz)", "librosa soxr_hq; uniform in rate, not in factor")
    if isinstance(effect, aug.PitchShift):
        method = inspect.signature(am.PitchShift).parameters["method"].default
        return (am.PitchShift(min_semitones=effect.semitones[0], max_semitones=effect.semitones[1], p=p),
                f"PitchShift ({method})", "" if method == "signalsmith_stretch" else "ours: signalsmith_stretch")
    if isinstance(effect, aug.ImpulseResponse):
        return (am.ApplyImpulseResponse(ir_path=str(wav_dirs[effect.pool]), p=p), "ApplyImpulseResponse",
                "WAV files, scipy convolve, no peak alignment")
    if isinstance(effect, aug.BackgroundNoise):
        return (am.AddBackgroundNoise(sounds_path=str(wav_dirs[effect.pool]), min_snr_db=effect.snr_db[0],
                                      max_snr_db=effect.snr_db[1], p=p),
                "AddBackgroundNoise", "reads a WAV file per call (no cache since 0.43)")
    if isinstance(effect, aug.Equalizer):
        return (am.SevenBandParametricEQ(min_gain_db=effect.gain_db[0], max_gain_db=effect.gain_db[1], p=p),
                "SevenBandParametricEQ", "")
    if isinstance(effect, aug.Gain):
        return am.Gain(min_gain_db=effect.gain_db[0], max_gain_db=effect.gain_db[1], p=p), "Gain", ""
    if isinstance(effect, aug.BandPass):
        return (am.Compose(list(aug._band(effect.low_cut_hz, effect.high_cut_hz, effect.rolloff_db)), p=p),
                "HighPassFilter + LowPassFilter", "")
    if isinstance(effect, aug.ResampleRoundTrip):
        return (am.Aliasing(min_sample_rate=int(effect.rate_hz[0]), max_sample_rate=int(effect.rate_hz[1]), p=p),
                "Aliasing", "linear interpolation down and back, no anti-alias filter")
    if isinstance(effect, aug.Telephony):
        band = aug._band((effect.band_hz[0],) * 2, (effect.band_hz[1],) * 2, 24)
        return (am.Compose([am.Aliasing(min_sample_rate=int(effect.rate_hz[0]), max_sample_rate=int(effect.rate_hz[1]),
                                        p=1.0), *band], p=p),
                "Aliasing + HighPass + LowPass", "linear interpolation down and back, no anti-alias filter")
    if isinstance(effect, aug.Codec):
        backend, importable = mp3_backend()
        if importable:
            lo, hi = effect.bitrate_kbps
            return (am.Mp3Compression(min_bitrate=int(lo), max_bitrate=int(hi), p=p), f"Mp3Compression ({backend})",
                    "MP3 only: audiomentations has no Opus")
        stand_in = aug.Codec(codecs=effect.codecs, bitrate_kbps=effect.bitrate_kbps, p=1.0)
        codec = lambda x, sr: stand_in.apply(x, np.random.default_rng(random.getrandbits(64)))  # noqa: E731
        return (am.Lambda(transform=codec, p=p),
                "Lambda(ours: libsndfile)", f"stand-in: Mp3Compression's default backend {backend!r} is not "
                "installed (nor lameenc, pydub)")
    if isinstance(effect, aug.Clipping):
        return (am.ClippingDistortion(min_percentile_threshold=1, max_percentile_threshold=5, p=p),
                "ClippingDistortion", "clips the loudest 1-5% of samples (a percentile), not a share of the peak")
    return None, "-", "no audiomentations equivalent: left out of the baseline"



# ---------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Timing:
    """CPU and wall seconds spent on `audio_samples` input samples (16 kHz)."""

    cpu_s: float
    wall_s: float
    audio_samples: int

    @property
    def audio_seconds(self) -> float:
        return self.audio_samples / SAMPLE_RATE

    @property
    def x_realtime(self) -> float:
        """Audio-seconds per CPU-second: x real time on one core."""
        return self.audio_seconds / self.cpu_s if self.cpu_s > 0 else float("inf")

    @property
    def ms_per_audio_s(self) -> float:
        return 1000.0 * self.cpu_s / self.audio_seconds

    def to_dict(self) -> dict:
        return {**asdict(self), "audio_seconds": self.audio_seconds, "x_realtime": self.x_realtime,
                "x_realtime_wall": self.audio_seconds / self.wall_s if self.wall_s > 0 else float("inf"),
                "ms_per_audio_s": self.ms_per_audio_s}


def decoded(shards: Sequence[Path], limit: int) -> Iterator[np.ndarray]:
    """The first `limit` audio clips of the shards, decoded from the tar bytes (text-only samples skipped)."""
    n = 0
    for shard in shards:
        for sample in iter_shard(shard):
            if sample["audio"] is None:
                continue
            yield sample["audio"]
            n += 1
            if n == limit:
                return


def measure(clips: Callable[[], Iterator[np.ndarray]], repeat: int, work: Callable[[np.ndarray], object],
            desc: str, total: int) -> Timing:
    """Run `work` on every clip of `clips()`, `repeat` times over; time the whole loop (clip source included)."""
    samples = 0
    bar = tqdm(total=total * repeat, desc=desc, unit="clip", file=sys.stderr, disable=None, leave=False)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        for audio in clips():
            work(audio)
            samples += audio.size
            bar.update()
    timing = Timing(time.process_time() - cpu0, time.perf_counter() - wall0, samples)
    bar.close()
    return timing


class _ForcedOn:
    """An audiomentations transform (or Compose) with p = 1 inside the block."""

    def __init__(self, transform) -> None:
        self.transform, self.p = transform, transform.p

    def __enter__(self):
        self.transform.p = 1.0
        return self.transform

    def __exit__(self, *exc) -> None:
        self.transform.p = self.p


def applied_effects(effects: Sequence[aug.Effect], record: list[dict]) -> list[bool]:
    """Which of `effects` a stage call applied, from its `record` (entries come in effect order)."""
    on, j = [False] * len(effects), 0
    for entry in record:
        while type(effects[j]).__name__ != entry["effect"]:
            j += 1
        on[j], j = True, j + 1
    return on


def run(stage: aug.AugmentationStage, shards: Sequence[Path], clips: int, repeat: int, seed: int,
        wav_dirs: dict[str, Path]) -> dict:
    """Measure decode, every effect alone (ours and baseline), and decode + the whole stage (both).

    The whole-stage baseline replays ours' on/off decisions clip by clip (common random numbers):
    with p = 0.2 on a few hundred clips of 2-12 s, which clips draw the costly codec would
    otherwise move the ratio by tens of percent. Parameters are drawn independently.
    """
    source = lambda: decoded(shards, clips)  # noqa: E731
    audio = list(source())
    if not audio:
        raise ValueError(f"no audio clips in {[str(s) for s in shards]}")
    n = len(audio)
    in_memory = lambda: iter(audio)  # noqa: E731
    baseline = [baseline_transform(e, wav_dirs) for e in stage.effects]

    warm = audio[0][:SAMPLE_RATE]  # first calls load libraries and fill pool caches: untimed
    for i, (effect, (transform, _, _)) in enumerate(zip(stage.effects, baseline)):
        effect.apply(warm, np.random.default_rng([seed, 0, i]), MAX_SAMPLES)
        if transform is not None:
            with _ForcedOn(transform) as t:
                t(warm, SAMPLE_RATE)

    decode = measure(source, repeat, lambda a: None, "decode", n)
    rows = []
    for i, (effect, (transform, what, note)) in enumerate(zip(stage.effects, baseline)):
        name = type(effect).__name__
        rng = np.random.default_rng([seed, 2, i])
        ours = measure(in_memory, repeat, lambda a: effect.apply(a, rng, MAX_SAMPLES), f"{name} (ours)", n)
        row = {"effect": name, "p": effect.p, "ours": ours.to_dict(), "baseline": {"transform": what, "note": note}}
        if transform is not None:
            random.seed(seed + i)
            np.random.seed(seed + i)
            with _ForcedOn(transform) as t:
                base = measure(in_memory, repeat, lambda a: t(a, SAMPLE_RATE), f"{name} (baseline)", n)
            row["baseline"].update(base.to_dict())
        if isinstance(effect, aug.Codec) and len(effect.codecs) > 1:  # codecs differ ~3x in cost: one row each
            row["parts"] = []
            for codec in effect.codecs:
                alone = aug.Codec(codecs=[codec], bitrate_kbps=effect.bitrate_kbps, p=1.0)
                part = measure(in_memory, repeat, lambda a: alone.apply(a, rng, MAX_SAMPLES), f"{name} {codec}", n)
                row["parts"].append({"codec": codec, "p": effect.p / len(effect.codecs), "ours": part.to_dict()})
        rows.append(row)

    rng = np.random.default_rng([seed, 1])
    decisions: list[list[bool]] = []

    def ours_call(a: np.ndarray) -> None:
        record: list[dict] = []
        stage(a, rng, MAX_SAMPLES, record)
        decisions.append(applied_effects(stage.effects, record))

    ours = measure(source, repeat, ours_call, "decode + stage (ours)", n)
    present = [(t, i) for i, (t, _, _) in enumerate(baseline) if t is not None]
    compose = am.Compose([t for t, _ in present], p=1.0)
    replay = iter(decisions)

    def baseline_call(a: np.ndarray) -> None:
        on = next(replay)
        for t, i in present:
            t.p = 1.0 if on[i] else 0.0
        compose(samples=a, sample_rate=SAMPLE_RATE)

    saved = [(t, t.p) for t, _ in present]
    random.seed(seed)
    np.random.seed(seed)
    try:
        base = measure(source, repeat, baseline_call, "decode + stage (baseline)", n)
    finally:
        for t, p in saved:
            t.p = p

    for side in ("ours", "baseline"):  # what each effect adds to the stage on average: p x cost
        for r in rows:
            for entry in [r, *r.get("parts", [])]:
                if "ms_per_audio_s" in entry.get(side, {}):
                    entry[side]["expected_ms_per_audio_s"] = entry["p"] * entry[side]["ms_per_audio_s"]
    expected = decode.ms_per_audio_s + sum(r["ours"]["expected_ms_per_audio_s"] for r in rows)
    for i, r in enumerate(rows):
        r["applied"] = sum(d[i] for d in decisions)  # clips (x repeat) the stage applied it to
        for entry in [r, *r.get("parts", [])]:
            entry["ours"]["share"] = entry["ours"]["expected_ms_per_audio_s"] / expected
    ratio = ours.x_realtime / base.x_realtime
    return {
        "stage": stage.name, "clips": n, "repeat": repeat, "seed": seed,
        "clip_samples": int(sum(a.size for a in audio)), "audio_samples": ours.audio_samples,
        "audio_seconds": ours.audio_seconds,
        "decode": decode.to_dict(), "effects": rows,
        "stage_ours": ours.to_dict(), "stage_baseline": base.to_dict(), "ratio": ratio,
        "target_x_realtime": TARGET_X_REALTIME, "target_met": ours.x_realtime >= TARGET_X_REALTIME,
    }


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"


def report(result: dict) -> str:
    """The per-effect table, the whole-stage figures and the verdict (markdown-friendly)."""
    r = result
    decode, ours, base = r["decode"], r["stage_ours"], r["stage_baseline"]
    runs = r["clips"] * r["repeat"]
    expected = {side: decode["ms_per_audio_s"] + sum(e[side].get("expected_ms_per_audio_s", 0.0) for e in r["effects"])
                for side in ("ours", "baseline")}
    v = r["versions"]
    lines = [
        f"stage {r['stage']!r}: {len(r['effects'])} effects; {r['clips']} clips, {r['clip_samples'] / SAMPLE_RATE:.1f} "
        f"audio-s x {r['repeat']} repeat = {r['audio_seconds']:.1f} audio-s; seed {r['seed']}; 1 thread",
        f"audiomentations {v['audiomentations']}: PitchShift default method {v['PitchShift default']}, "
        f"Mp3Compression default backend {v['Mp3Compression default']}",
        "",
        "Per effect, forced on for every clip (p x ms: what it adds to the stage on average; share: of ours' "
        "expected):",
        "",
        "| row | p | applied | ours ms/audio-s | ours x RT | p x ms | share | audiomentations | base ms/audio-s "
        "| base x RT | base/ours CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| decode (FLAC in tar) | 1 | {runs}/{runs} | {decode['ms_per_audio_s']:.3f} | {decode['x_realtime']:,.0f} "
        f"| {decode['ms_per_audio_s']:.3f} | {decode['ms_per_audio_s'] / expected['ours']:.0%} | (same decode) "
        f"| {decode['ms_per_audio_s']:.3f} | {decode['x_realtime']:,.0f} | 1.00 |",
    ]
    for e in r["effects"]:
        o, b = e["ours"], e["baseline"]
        speedup = f"{b['ms_per_audio_s'] / o['ms_per_audio_s']:.2f}" if "ms_per_audio_s" in b else "-"
        lines.append(f"| {e['effect']} | {e['p']:g} | {e['applied']}/{runs} | {o['ms_per_audio_s']:.3f} "
                     f"| {o['x_realtime']:,.0f} | {o['expected_ms_per_audio_s']:.3f} | {o['share']:.0%} "
                     f"| {b['transform']} | {_fmt(b, 'ms_per_audio_s', '.3f')} | {_fmt(b, 'x_realtime', ',.0f')} "
                     f"| {speedup} |")
        for part in e.get("parts", []):
            o = part["ours"]
            lines.append(f"| {e['effect']}, {part['codec']} only | {part['p']:g} | | {o['ms_per_audio_s']:.3f} "
                         f"| {o['x_realtime']:,.0f} | {o['expected_ms_per_audio_s']:.3f} | {o['share']:.0%} | | | | |")
    lines += [
        f"| expected: decode + sum of p x ms | | | {expected['ours']:.3f} | {1000 / expected['ours']:,.0f} | | | "
        f"| {expected['baseline']:.3f} | {1000 / expected['baseline']:,.0f} | "
        f"{expected['baseline'] / expected['ours']:.2f} |",
        f"| **measured: decode + stage** | | | {ours['ms_per_audio_s']:.3f} | **{ours['x_realtime']:,.1f}** | | "
        f"| Compose | {base['ms_per_audio_s']:.3f} | **{base['x_realtime']:,.1f}** | {r['ratio']:.2f} |",
        *(["", "(Codec's own row mixes the codecs as drawn; its per-codec rows force one codec on every clip.)"]
          if any("parts" in e for e in r["effects"]) else []),
        "",
        "Whole stage, decode + augment, on one core (process CPU time; wall time, which other jobs on the machine "
        "stretch, in brackets;",
        "the baseline replays ours' per-clip on/off draws, so both apply the same effects to the same clips):",
        *(f"  {side:9s} {t['x_realtime']:8.1f}x real time per core  (cpu {t['cpu_s']:.2f} s "
          f"[wall {t['wall_s']:.2f} s] for {t['audio_seconds']:.1f} audio-s)"
          for side, t in (("ours", ours), ("baseline", base))),
        f"  ratio ours/baseline: {r['ratio']:.2f}x",
    ]
    costs = [("decode", decode["ms_per_audio_s"] / expected["ours"], "")]
    for e in r["effects"]:
        parts = ", ".join(f"{p['codec']} {p['ours']['share']:.0%}" for p in e.get("parts", []))
        costs.append((e["effect"], e["ours"]["share"], f" ({parts})" if parts else ""))
    top = ", ".join(f"{name} {share:.0%}{detail}" for name, share, detail in sorted(costs, key=lambda c: -c[1])[:4])
    target = r["target_x_realtime"]
    if r["target_met"]:
        lines.append(f"target >= {target:g}x real time per core: MET ({ours['x_realtime']:.1f}x, "
                     f"{ours['x_realtime'] / target:.2f}x the target); largest expected costs: {top}")
    else:
        lines.append(f"target >= {target:g}x real time per core: MISSED by {target / ours['x_realtime']:.2f}x "
                     f"({ours['x_realtime']:.1f}x: {ours['ms_per_audio_s']:.2f} ms per audio-second against "
                     f"{1000 / target:.2f}); bounded by {top} of the expected cost")
    notes = [f"{e['effect']} -> {e['baseline']['transform']}: {e['baseline']['note']}"
             for e in r["effects"] if e["baseline"]["note"]]
    if notes:
        lines += ["baseline notes:", *(f"  - {n}" for n in notes)]
    lines += ["", f"bench_augment {r['stage']}: ours {ours['x_realtime']:.1f}x real time per core, audiomentations "
              f"{base['x_realtime']:.1f}x, ratio {r['ratio']:.2f}x; target {target:g}x "
              f"{'met' if r['target_met'] else 'MISSED'}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pool", help="speech shard pool to decode (default: synthesise one in a temp dir)")
    parser.add_argument("--noise-pool", help="noise shard pool (default: synthetic; with --config: the config's)")
    parser.add_argument("--ir-pool", help="impulse-response shard pool (default: synthetic; with --config: the "
                                          "config's)")
    parser.add_argument("--config", help="YAML/JSON stage in class_path/init_args form, a `stages:` list or a "
                                         "training config (default: harsh_stage() in this file)")
    parser.add_argument("--stage", help="stage name to pick from --config (default: its last stage)")
    parser.add_argument("--clips", type=_positive, default=200, help="clips to decode and augment per pass")
    parser.add_argument("--seconds", type=float, nargs=2, default=(2.0, 12.0), metavar=("MIN", "MAX"),
                        help="length range of synthetic speech clips")
    parser.add_argument("--repeat", type=_positive, default=1, help="passes over the clips per measurement")
    parser.add_argument("--seed", type=int, default=0, help="seeds synthesis, our generators and audiomentations'")
    parser.add_argument("--json", help="also write the full result here")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; prints the table and a one-line summary, returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    lo, hi = args.seconds
    if not 0 < lo <= hi:
        parser.error(f"--seconds must be 0 < MIN <= MAX, got {lo} {hi}")
    if args.stage and not args.config:
        parser.error("--stage picks a stage from --config; give --config too")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")

    threads, py_state, np_state = torch.get_num_threads(), random.getstate(), np.random.get_state()
    try:
        with tempfile.TemporaryDirectory(prefix="bench_augment-") as tmp, threadpool_limits(1):
            torch.set_num_threads(1)
            root = Path(tmp)
            shards = list_shards(args.pool) if args.pool else None  # a missing pool fails before any work
            if args.config:
                stage = load_stage(args.config, args.stage, args.noise_pool, args.ir_pool)
            else:
                stage = harsh_stage(args.noise_pool or synthesise_noise(root / "noise", args.seed),
                                    args.ir_pool or synthesise_irs(root / "ir", args.seed))
            for effect in stage.effects:
                try:
                    effect.check()
                except (FileNotFoundError, ValueError) as err:
                    raise type(err)(f"stage {stage.name!r}, {type(effect).__name__}: {err}") from err
            pools = sorted({e.pool for e in stage.effects if isinstance(e, (aug.BackgroundNoise, aug.ImpulseResponse))})
            wav_dirs = {pool: export_wavs(pool, root / "wav" / str(i)) for i, pool in enumerate(pools)}
            if shards is None:
                shards = list_shards(synthesise_speech(root / "speech", args.clips, (lo, hi), args.seed))
            result = run(stage, shards, args.clips, args.repeat, args.seed, wav_dirs)
    finally:
        torch.set_num_threads(threads)
        random.setstate(py_state)
        np.random.set_state(np_state)
    backend, importable = mp3_backend()
    pool_default = "config" if args.config else "synthetic"
    result["inputs"] = {"speech": args.pool or "synthetic", "noise": args.noise_pool or pool_default,
                        "ir": args.ir_pool or pool_default, "config": args.config}
    result["versions"] = {"audiomentations": am.__version__,
                          "PitchShift default": inspect.signature(am.PitchShift).parameters["method"].default,
                          "Mp3Compression default": backend + ("" if importable else " (not installed)"),
                          "numpy": np.__version__, "torch threads": 1}
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
