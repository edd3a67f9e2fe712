"""Speech for the demo: espeak-ng voices, and synthesis run several processes at a time.

What: `SynthJob` names one utterance and how it is spoken (voice, speed, pitch);
`synthesize` runs espeak-ng once and returns trimmed, peak-normalised float32 audio at
22050 Hz; `synthesize_many` keeps `workers` espeak-ng processes busy and yields the audio in
job order. `check_espeak` fails early when espeak-ng or one of the voice variants is missing.

Why: espeak-ng is a Debian package that speaks English and Russian offline, with dozens of
voice variants, so the demo needs no download and can hold out voices for its benchmarks
(`BENCH_VARIANTS` are never heard in training).

Cost: ~11 ms per call, mostly process start-up. Threads, not processes, drive the pool: each
call is its own espeak-ng process, so `workers` threads already keep `workers` cores busy,
without pickling audio between processes or forking a parent that may have torch's thread
pools running (as under pytest).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import io
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

ESPEAK = "espeak-ng"
ESPEAK_RATE = 22_050  # espeak-ng's output rate; ShardWriter resamples to 16 kHz
PEAK = 0.7  # clip peak after synthesis: headroom for resampling overshoot and added noise

# espeak variants (voices/!v) that stay intelligible; case matters, and an unknown name is
# silently ignored by espeak, so `check_espeak` verifies every one. "" is the plain voice.
TRAIN_VARIANTS = ("", "m1", "m2", "m4", "m5", "m7", "f1", "f3", "f5", "klatt", "klatt3", "Alex",
                  "Annie", "adam", "belinda", "benjamin", "david", "edward", "john", "max",
                  "Michael", "paul", "robert", "steph", "victor", "norbert", "quincy", "zac")
# Never used in training, in either language: the benchmarks hear only these.
BENCH_VARIANTS = ("m3", "m6", "f2", "f4", "klatt2", "Andy", "linda", "travis")
TRAIN_SPEED, BENCH_SPEED = (130, 200), (140, 185)  # words per minute (espeak default 175)
TRAIN_PITCH, BENCH_PITCH = (25, 75), (35, 65)  # 0-99 (espeak default 50)


@dataclass(frozen=True)
class SynthJob:
    """One espeak-ng call: the words and how they are spoken."""

    text: str
    voice: str  # espeak voice, optionally "+variant"
    speed: int  # words per minute
    pitch: int  # 0-99


def voice_name(base: str, variant: str) -> str:
    """The espeak voice `base+variant`, or `base` for the plain variant ""."""
    return f"{base}+{variant}" if variant else base


def check_espeak(variants: Sequence[str] = TRAIN_VARIANTS + BENCH_VARIANTS) -> None:
    """Fail early when espeak-ng or one of the variants is missing (espeak would fall back
    silently to the plain voice, and the held-out voices would no longer be held out)."""
    if shutil.which(ESPEAK) is None:
        raise RuntimeError(f"{ESPEAK} is not on PATH; install the Debian package: apt-get install espeak-ng "
                           "(or `make espeak`)")
    listing = subprocess.run([ESPEAK, "--voices=variant"], capture_output=True, text=True, check=True).stdout
    known = {line.split("!v/", 1)[1].strip() for line in listing.splitlines() if "!v/" in line}
    missing = sorted(v for v in variants if v and v not in known)
    if missing:
        raise RuntimeError(f"{ESPEAK} lacks the voice variants {missing}; the demo needs espeak-ng >= 1.50 "
                           "with its standard voices/!v data")


def synthesize(text: str, voice: str, speed: int = 160, pitch: int = 50, *, max_seconds: float = 5.5,
               keep_silence: float = 0.1) -> np.ndarray:
    """Speak `text` with espeak-ng; mono float32 at 22050 Hz (`ESPEAK_RATE`).

    Leading and trailing silence beyond `keep_silence` seconds is cut (espeak appends ~0.5 s),
    and the peak is set to `PEAK` (espeak peaks at full scale; resampling would then clip).
    A clip longer than `max_seconds` is spoken again 25% faster, up to three times.

    Raises:
        RuntimeError: espeak-ng failed, or the text cannot be said within `max_seconds`.
    """
    import soundfile as sf

    for _ in range(4):
        cmd = [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
        proc = subprocess.run(cmd, capture_output=True, check=False)  # the return code is checked below
        if proc.returncode != 0 or not proc.stdout:
            raise RuntimeError(f"{ESPEAK} failed on {text!r} with voice {voice!r} (rc {proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace').strip()}")
        audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"{ESPEAK} wrote {rate} Hz for voice {voice!r}, expected {ESPEAK_RATE}")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        loud = np.flatnonzero(np.abs(audio) > 2e-3)
        if loud.size == 0:
            raise RuntimeError(f"{ESPEAK} produced silence for {text!r} with voice {voice!r}")
        pad = int(keep_silence * rate)
        audio = audio[max(0, loud[0] - pad):loud[-1] + pad + 1] * (PEAK / float(np.abs(audio).max()))
        if audio.size <= max_seconds * rate:
            return np.ascontiguousarray(audio)
        speed = int(speed * 1.25)
    raise RuntimeError(f"{text!r} with voice {voice!r} is longer than {max_seconds} s even at {speed} wpm")


def synthesize_many(jobs: Sequence[SynthJob], workers: int, *, max_seconds: float = 5.5) -> Iterator[np.ndarray]:
    """Audio of `jobs`, in order, from `workers` concurrent espeak-ng processes.

    At most `8 * workers` clips are in flight, so memory stays flat when writing is slower.
    """
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(job: SynthJob) -> cf.Future:
            return pool.submit(synthesize, job.text, job.voice, job.speed, job.pitch, max_seconds=max_seconds)

        pending: collections.deque[cf.Future] = collections.deque()
        todo = iter(jobs)
        for job in todo:
            pending.append(submit(job))
            if len(pending) >= 8 * workers:
                break
        while pending:
            audio = pending.popleft().result()
            job = next(todo, None)
            if job is not None:
                pending.append(submit(job))
            yield audio
