"""Item audio, in worker processes: decode, check, cut long recordings at silences, encode FLAC.

What: `encode_item` turns one `Prepared` item into its samples (key, metadata, FLAC bytes,
duration): the audio is decoded with soundfile (a segment of it for NeMo offsets), checked
against the duration `Limits`, cut into chunks at the quietest 10 ms between two timestamped
segments when it is longer than `max_seconds` (`plan_chunks`), and encoded as 16 kHz mono
FLAC (`shards.encode_flac`). `ordered` runs it in `workers` processes and gives the results
in input order.

Why: the parent writes shards in input order whatever finishes first, so the same input gives
byte-identical pools for any number of workers. Long recordings are cut only where the
transcript says where, never truncated.

Cost: per clip one soundfile decode, one soxr resample (HQ) and one FLAC encode: ~6 ms per
5 s of 44.1 kHz stereo on one core; up to 4 x workers items are in flight.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from borealis.ingest.items import Prepared, Rejected
from borealis.shards import encode_flac

SILENCE_PEAK = 1e-4  # -80 dBFS, ~3 LSB at 16 bit: a clip whose peak stays below is digital silence
CUT_FRAME = 0.01  # seconds: the energy frame a cut between two segments is placed by


@dataclass(frozen=True)
class Limits:
    """Duration rules. Speech: shorter than `min_seconds` is rejected; longer than
    `max_seconds` is cut at segment gaps or rejected. Noise/IR (`crop=True`): only the first
    `max_seconds` are read (reported as cropped)."""

    min_seconds: float = 0.0
    max_seconds: float | None = None
    crop: bool = False


@dataclass
class Encoded:
    """What a worker returns for one item: its samples (key, meta, flac, duration) in order."""

    samples: list[tuple[str, dict, bytes | None, float]] = field(default_factory=list)
    cropped: bool = False
    split: str | None = None


def _name(p: Prepared) -> str:
    return str(p.audio) if isinstance(p.audio, Path) else f"the audio bytes of {p.key!r}"


def load_audio(p: Prepared, max_seconds: float | None = None) -> tuple[np.ndarray, int, float]:
    """Read an item's audio (its `offset`/`seconds` segment), or only its first `max_seconds`.

    Returns:
        (frames, channels) float32 audio, its rate, and the whole file's (or segment's)
        duration in seconds (longer than the audio when it was cut at `max_seconds`).

    Raises:
        Rejected: missing, undecodable, or empty (0 bytes or 0 frames); the detail names the file.
    """
    if isinstance(p.audio, Path):
        if not p.audio.is_file():
            raise Rejected("missing_file", f"audio file {p.audio} does not exist", p.key)
        if p.audio.stat().st_size == 0:
            raise Rejected("empty_audio", f"{p.audio}: empty file (0 bytes)", p.key)
    source = p.audio if isinstance(p.audio, Path) else io.BytesIO(p.audio)
    try:
        with sf.SoundFile(source) as f:
            rate, frames = f.samplerate, f.frames
            start = round(p.offset * rate)
            if start:
                f.seek(min(start, frames))
            available = max(0, frames - start) if p.seconds is None else min(max(0, frames - start),
                                                                               round(p.seconds * rate))
            limit = available if max_seconds is None else min(available, round(max_seconds * rate))
            audio = f.read(limit, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise Rejected("undecodable_audio", f"{_name(p)}: {e}", p.key) from None
    if audio.shape[0] == 0:
        where = f" at offset {p.offset} s" if p.offset else ""
        raise Rejected("empty_audio", f"{_name(p)}: no audio frames{where}", p.key)
    cut = audio.shape[0] < available  # `frames` is the header's count: trusted only for this
    return audio, rate, (available if cut else audio.shape[0]) / rate


def _check_clip(audio: np.ndarray, p: Prepared) -> None:
    peak = float(np.max(np.abs(audio)))
    if peak < SILENCE_PEAK:  # NaN passes here and is rejected by the encoder
        raise Rejected("silent_audio", f"{_name(p)}: silent (peak {peak:.1e} < {SILENCE_PEAK:.0e}, i.e. below "
                                       f"-80 dBFS): a {p.meta['kind']} clip needs signal", p.key)


def quietest_point(audio: np.ndarray, rate: int, lo: float, hi: float) -> float:
    """The centre (seconds) of the lowest-energy `CUT_FRAME` window in [lo, hi] of mono
    `audio`; the midpoint when the gap is shorter than one window."""
    frame = max(1, round(CUT_FRAME * rate))
    a, b = round(lo * rate), min(round(hi * rate), audio.shape[0])
    if b - a < frame:
        return (lo + hi) / 2
    n = (b - a) // frame
    energy = np.square(audio[a:a + n * frame].astype(np.float64)).reshape(n, frame).sum(axis=1)  # (n,)
    return (a + (int(np.argmin(energy)) + 0.5) * frame) / rate


def plan_chunks(segments: Sequence[tuple[float, float, str]], total: float, max_seconds: float,
                mono: np.ndarray, rate: int, key: str) -> list[tuple[float, float, list[tuple[float, float, str]]]]:
    """Group timestamped segments into chunks of at most `max_seconds` and place the cuts.

    Greedy in order: a chunk takes segments while last.end - first.start <= max_seconds. Cuts
    between chunks lie at the quietest 10 ms of the gap between two segments; a chunk spans
    from its cut to the next, trimmed evenly around its speech when that would exceed the limit.

    Returns:
        [(start, end, segments)] in seconds of the source.

    Raises:
        Rejected("too_long"): one segment alone is longer than `max_seconds`.
    """
    for i, (s, e, _) in enumerate(segments):
        if e - s > max_seconds:
            raise Rejected("too_long", f"segment {i} ({s:.2f}-{e:.2f} s) alone is longer than max_seconds="
                                       f"{max_seconds:g}: it cannot be cut at a segment boundary", key)
    groups: list[list[tuple[float, float, str]]] = [[segments[0]]]
    for seg in segments[1:]:
        if seg[1] - groups[-1][0][0] <= max_seconds:
            groups[-1].append(seg)
        else:
            groups.append([seg])
    cuts = [0.0] + [quietest_point(mono, rate, a[-1][1], b[0][0]) for a, b in zip(groups, groups[1:])] + [total]
    chunks = []
    for i, g in enumerate(groups):
        pad = (max_seconds - (g[-1][1] - g[0][0])) / 2
        lo, hi = max(cuts[i], g[0][0] - pad), min(cuts[i + 1], g[-1][1] + pad)
        chunks.append((lo, hi, g))
    return chunks


def encode_item(p: Prepared, limits: Limits) -> Encoded:
    """Load, check, cut and FLAC-encode one prepared item (runs in a worker process).

    Raises:
        Rejected: for any reason in REASONS that needs the audio.
    """
    encoded = _encode_samples(p, limits)
    encoded.split = p.split
    return encoded


def _encode_samples(p: Prepared, limits: Limits) -> Encoded:
    if p.audio is None:
        return Encoded([(p.key, p.meta, None, 0.0)])
    audio, rate, seconds = load_audio(p, limits.max_seconds if limits.crop else None)
    if limits.crop:
        _check_clip(audio, p)
        meta, cropped = dict(p.meta), audio.shape[0] < round(seconds * rate)
        if cropped:
            meta["cropped_from"] = round(seconds, 3)
        return Encoded([(p.key, meta, *_encode(audio, rate, p))], cropped)
    if seconds < limits.min_seconds:
        raise Rejected("too_short", f"{_name(p)}: {seconds:.3f} s is shorter than min_seconds={limits.min_seconds:g}",
                       p.key)
    if limits.max_seconds is None or seconds <= limits.max_seconds:
        return Encoded([(p.key, p.meta, *_encode(audio, rate, p))])
    if not p.segments or p.meta.get("task") != "asr":
        why = "too long and no timestamps" if p.meta.get("task") == "asr" else "too long (an instruction is not cut)"
        raise Rejected("too_long", f"{_name(p)}: {why} ({seconds:.1f} s > max_seconds={limits.max_seconds:g}; "
                                   f"give 'segments' with start/end times to cut it)", p.key)
    mono = audio.mean(axis=1)
    out = []
    base = {k: v for k, v in p.meta.items() if k not in ("text", "segments")}
    for i, (lo, hi, group) in enumerate(plan_chunks(p.segments, seconds, limits.max_seconds, mono, rate, p.key)):
        meta = {"text": " ".join(t for _, _, t in group if t), **base, "source_key": p.key, "chunk": i,
                "start": round(lo, 3), "end": round(hi, 3),
                "segments": [{"start": round(s - lo, 3), "end": round(e - lo, 3), "text": t} for s, e, t in group]}
        if not meta["text"]:
            raise Rejected("empty_text", f"chunk {i} ({lo:.2f}-{hi:.2f} s) has no text in its segments", p.key)
        piece = audio[round(lo * rate):round(hi * rate)]
        out.append((f"{p.key}-{i:04d}", meta, *_encode(piece, rate, p)))
    return Encoded(out)


def _encode(audio: np.ndarray, rate: int, p: Prepared) -> tuple[bytes, float]:
    try:
        return encode_flac(audio, rate, p.key)
    except ValueError as e:  # NaN/inf and the like: the file decodes but holds no usable audio
        raise Rejected("undecodable_audio", f"{_name(p)}: {e}", p.key) from None


def _encode_or_reject(p: Prepared, limits: Limits) -> Encoded | Rejected:
    try:
        return encode_item(p, limits)
    except Rejected as r:
        return r


def ordered(jobs: Iterator[Prepared | Rejected], limits: Limits, workers: int) -> Iterator[Encoded | Rejected]:
    """encode_item over `jobs` in input order; up to 4 * workers items in flight. A Rejected
    job passes through unchanged (it keeps its place in the order)."""
    if workers <= 1:
        for job in jobs:
            yield job if isinstance(job, Rejected) else _encode_or_reject(job, limits)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[cf.Future | Rejected] = deque()
        for job in jobs:
            pending.append(job if isinstance(job, Rejected) else pool.submit(_encode_or_reject, job, limits))
            while len(pending) > 4 * workers or (pending and not isinstance(pending[0], cf.Future)):
                head = pending.popleft()
                yield head.result() if isinstance(head, cf.Future) else head
        while pending:
            head = pending.popleft()
            yield head.result() if isinstance(head, cf.Future) else head
