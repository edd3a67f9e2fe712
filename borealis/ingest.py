"""Corpus items -> shard pools, with every item written or rejected for a named reason.

What: `build_pool(items, out_dir, kind=...)` takes the items a reader in `borealis.corpora`
gives (a JSONL line, a LibriSpeech utterance, a Common Voice row, a Hugging Face row, a noise
file), checks each one, decodes and resamples its audio to 16 kHz mono FLAC in `workers`
processes, cuts long recordings at silences between their timestamped segments, and writes
the pool (or one pool per `--split`) with `ShardWriter`. `borealis shards build` is its command
(`borealis/shards/cli.py`).

Why: a corpus must never lose samples silently. Every item ends as exactly one of written or
rejected (REASONS), so written + rejected = read always holds and is asserted; the report
(`build_report.json`) keeps the counts and the first 20 rejections per reason, each naming
where the item came from. Output is deterministic: workers encode, the parent writes in
input order, so the same input gives byte-identical shards whatever `workers` is. Long
recordings are cut only where the transcript says where (`segments` with start/end), at the
quietest 10 ms inside the gap between two segments; without timestamps they are rejected
("too long and no timestamps"), never truncated.

Cost: per clip one soundfile decode, one soxr resample (HQ) and one FLAC encode: ~6 ms per
5 s of 44.1 kHz stereo on one core (~800x real time); `workers` processes scale that until
the parent's tar writing (~0.1 ms per clip) or the disk is the limit. BENCHMARKS.md has the
measured hours per minute (`python tools/bench_shards.py`).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import logging
import math
import multiprocessing
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
from tqdm import tqdm

from borealis.shards import REPORT_NAME, ShardWriter, encode_flac, validate_key

log = logging.getLogger(__name__)

MAX_EXAMPLES = 20  # rejections kept per reason in the report
# Every reason an item can be rejected for; the report counts each.
REASONS = ("bad_json", "non_utf8", "bad_field", "missing_file", "undecodable_audio", "empty_audio", "silent_audio",
           "too_short", "too_long", "empty_text", "missing_messages", "bad_messages", "duplicate_key")
Kind = Literal["manifest", "text", "noise", "ir"]
CLIP_KINDS = ("noise", "ir")  # augmentation pools: audio with {"kind", "source"}, no text
SILENCE_PEAK = 1e-4  # -80 dBFS, ~3 LSB at 16 bit: a clip whose peak stays below is digital silence
CUT_FRAME = 0.01  # seconds: the energy frame a cut between two segments is placed by


class Rejected(Exception):
    """An input item that cannot become a sample: `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str, key: str | None = None) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.key = reason, detail, key

    def __reduce__(self):  # workers send rejections back to the parent
        return type(self), (self.reason, self.detail, self.key)


@dataclass
class Item:
    """One input item as a reader gives it.

    Attributes:
        where: where it came from, for the report: {"line": 5}, {"file": "a.wav"},
            {"file": "19/198/19-198.trans.txt", "line": 3}, {"row": 12}.
        data: a dict, a raw JSONL line (str or bytes, parsed here), or a `Rejected` the
            reader already decided on (e.g. a TSV row that is not UTF-8).
    """

    where: dict[str, Any]
    data: dict | str | bytes | Rejected


@dataclass
class Prepared:
    """A validated item: key, metadata, and where its audio is (None: text-only).

    `audio` is a path or the encoded file's bytes (Hugging Face rows); `offset`/`seconds`
    select a segment of it (NeMo manifests); `segments` are the transcript's timestamps,
    [(start, end, text)] in seconds, used to cut a recording longer than `max_seconds`.
    """

    key: str
    meta: dict[str, Any]
    audio: Path | bytes | None = None
    offset: float = 0.0
    seconds: float | None = None
    segments: list[tuple[float, float, str]] | None = None
    split: str | None = None


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


# ----------------------------------------------------------------------------- validation
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_line(line: str | bytes) -> dict:
    """One JSONL line -> a dict; Rejected("non_utf8" / "bad_json") for anything else."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Rejected("non_utf8", f"not UTF-8 (byte 0x{line[e.start]:02x} at offset {e.start}; "
                                       f"re-encode the file as UTF-8)") from None
    try:
        item = json.loads(line, parse_constant=_reject_constant)
    except ValueError as e:
        raise Rejected("bad_json", f"not a JSON line ({e})") from None
    if not isinstance(item, dict):
        raise Rejected("bad_json", f"expected a JSON object, got {type(item).__name__}")
    return item


def check_messages(messages: Any, *, with_audio: bool, key: str | None = None) -> list[dict]:
    """`messages` if it is a valid chat (`prompts.chat_problem`), else a `Rejected` naming why."""
    from borealis.prompts import chat_problem  # imports torch: only chat corpora need it

    if messages is None or messages == []:
        raise Rejected("missing_messages", "no 'messages'", key)
    problem = chat_problem(messages, has_audio=with_audio)
    if problem:
        raise Rejected("bad_messages", problem, key)
    return messages


def audio_key(audio: str) -> str:
    """Deterministic key for an audio path as written in the manifest: sanitised stem + hash.

    "clips/Hello World.wav" -> "Hello_World-<10 hex digits of sha1(path)>". The hash is of the
    path as written, so keys do not depend on where the corpus lies on disk.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(audio).stem).strip("_")[:48] or "audio"
    return f"{stem}-{hashlib.sha1(audio.encode('utf-8')).hexdigest()[:10]}"


def chat_key(messages: list[dict]) -> str:
    """Deterministic key of a chat from its content (identical chats collide as duplicates)."""
    canon = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return f"chat-{hashlib.sha1(canon.encode('utf-8')).hexdigest()[:16]}"


def split_of(key: str, splits: Sequence[tuple[str, float]]) -> str | None:
    """The held-out split a key falls in by a stable hash (sha1), or None for the rest.

    `splits` = [(name, fraction)]: key k goes to the first split whose cumulative fraction
    exceeds u(k) = sha1(k) / 2^64, so a key's split never depends on the other items, the
    order, or `workers`, and growing a fraction only moves keys into that split.
    """
    u = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    total = 0.0
    for name, fraction in splits:
        total += fraction
        if u < total:
            return name
    return None


def _given_key(item: dict) -> str | None:
    key = item.get("key")
    if key is None:
        return None
    try:
        validate_key(key)
    except ValueError as e:
        raise Rejected("bad_field", str(e), key if isinstance(key, str) else None) from None
    return key


def _common_meta(item: dict, task: str, source: str | None, key: str | None) -> dict:
    """language/source/task first, then the line's other fields (it may not contradict task)."""
    if "task" in item and item["task"] != task:
        raise Rejected("bad_field", f"'task' is {item['task']!r} but the line makes a {task!r} sample", key)
    language = item.get("language")
    if language is not None and not isinstance(language, str):
        raise Rejected("bad_field", f"'language' must be a string, got {language!r}", key)
    meta: dict[str, Any] = {}
    if language is not None:
        meta["language"] = language
    src = item.get("source", source)  # the line's own source wins over --source
    if src is not None:
        meta["source"] = src
    meta["task"] = task
    return meta


def _keyed_audio(item: dict) -> tuple[str, str | bytes]:
    """An audio item's key (given, or derived from the path) and its audio: the path as
    written ("audio" or NeMo's "audio_filepath"), or "audio_bytes" (a Hugging Face row)."""
    key = _given_key(item)
    data = item.get("audio_bytes")
    if isinstance(data, (bytes, bytearray)) and data:
        if key is None:
            raise Rejected("bad_field", "an item with 'audio_bytes' needs a 'key'")
        return key, bytes(data)
    audio = item.get("audio", item.get("audio_filepath"))
    if not isinstance(audio, str) or not audio:
        raise Rejected("bad_field", f"'audio' (or 'audio_filepath') must be a non-empty path string, got {audio!r}",
                       key)
    return key or audio_key(audio), audio


def _resolve(audio: str | bytes, base_dir: Path | None) -> Path | bytes:
    if isinstance(audio, bytes):
        return audio
    path = Path(audio)
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _seconds_field(item: dict, name: str, key: str) -> float | None:
    value = item.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise Rejected("bad_field", f"{name!r} must be a number of seconds >= 0, got {value!r}", key)
    return float(value)


def _segments(item: dict, key: str) -> list[tuple[float, float, str]] | None:
    """Timestamps: "segments": [{"start": s, "end": s, "text": str}], sorted, not overlapping."""
    raw = item.get("segments")
    if raw is None:
        return None
    out: list[tuple[float, float, str]] = []
    if not isinstance(raw, list) or not raw:
        raise Rejected("bad_field", f"'segments' must be a non-empty list of {{start, end, text}}, got {raw!r:.80}", key)
    for i, s in enumerate(raw):
        ok = (isinstance(s, dict) and isinstance(s.get("text"), str)
              and all(isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool) for k in ("start", "end")))
        if not ok or not 0 <= s["start"] < s["end"] < math.inf:
            raise Rejected("bad_field", f"segments[{i}] must be {{'start': s, 'end': s > start, 'text': str}}, "
                                        f"got {s!r:.80}", key)
        if out and s["start"] < out[-1][1] - 1e-6:
            raise Rejected("bad_field", f"segments[{i}] starts at {s['start']} s, before segments[{i - 1}] ends "
                                        f"({out[-1][1]} s): segments must be sorted and not overlap", key)
        out.append((float(s["start"]), float(s["end"]), s["text"].strip()))
    return out


def prepare_manifest_item(item: dict, *, base_dir: Path | None, source: str | None) -> Prepared:
    """Validate one manifest line and give its key, metadata and audio (unread).

    Accepts Borealis lines ({"audio", "text" | "messages"}), NeMo lines ({"audio_filepath",
    "text", "duration", "offset"?}: with "offset", the segment [offset, offset + duration] is
    read), instruction lines ({"audio", "instruction", "response", "system"?}), and
    "segments" timestamps. Other fields are kept in the metadata.
    """
    key, audio = _keyed_audio(item)
    text, messages = item.get("text"), item.get("messages")
    segments = _segments(item, key)
    if text is None and segments is not None:
        text = " ".join(t for _, _, t in segments if t)
    if text is not None and not isinstance(text, str):
        raise Rejected("bad_field", f"'text' must be a string, got {type(text).__name__}", key)
    if messages is None and "instruction" in item:
        instruction, response = item.get("instruction"), item.get("response")
        if not isinstance(instruction, str) or not isinstance(response, str) or not response.strip():
            raise Rejected("bad_messages", "an instruction line needs string 'instruction' and a non-empty "
                                           "'response'", key)
        from borealis.prompts import AUDIO_PLACEHOLDER  # imports torch: only instruction lines need it

        if AUDIO_PLACEHOLDER not in instruction:
            instruction = f"{instruction.strip()} {AUDIO_PLACEHOLDER}".strip()
        system = item.get("system")
        messages = ([{"role": "system", "content": system}] if isinstance(system, str) and system else []) + [
            {"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
    if messages is not None:
        check_messages(messages, with_audio=True, key=key)
        task = "instruct"
    elif not text or not text.strip():
        raise Rejected("empty_text", "an ASR line needs a non-empty 'text'", key)
    else:
        task = "asr"
    offset = _seconds_field(item, "offset", key)
    seconds = _seconds_field(item, "duration", key) if offset is not None else None
    meta: dict[str, Any] = {} if text is None else {"text": text}
    meta.update(_common_meta(item, task, source, key))
    skip = {"audio", "audio_filepath", "audio_bytes", "key", "messages", "instruction", "response", "system",
            "duration", "segments"}
    meta.update({k: v for k, v in item.items() if k not in skip and k not in meta})
    if messages is not None:
        meta["messages"] = messages
    if segments is not None:
        meta["segments"] = [{"start": s, "end": e, "text": t} for s, e, t in segments]
    return Prepared(key, meta, _resolve(audio, base_dir), offset or 0.0, seconds, segments)


def prepare_text_item(item: dict, *, base_dir: Path | None, source: str | None) -> Prepared:
    """Validate one chat line and give its key and metadata (no audio)."""
    key = _given_key(item)
    messages = check_messages(item.get("messages"), with_audio=False, key=key)
    key = key or chat_key(messages)
    meta = _common_meta(item, "chat", source, key)
    meta.update({k: v for k, v in item.items() if k not in ("key", "messages") and k not in meta})
    meta["messages"] = messages
    return Prepared(key, meta)


def prepare_clip_item(item: dict, *, base_dir: Path | None, source: str | None, kind: str) -> Prepared:
    """Validate one noise/IR item {"audio": path, "key"?, ...extra} and give its key and metadata.

    The metadata is {"kind": kind, "source": the path as given (relative to the folder for
    `audio-folder`), ...extra}; `source` (a corpus name) does not apply: the path is the source.
    """
    key, audio = _keyed_audio(item)
    meta: dict[str, Any] = {"kind": kind, "source": audio if isinstance(audio, str) else key}
    meta.update({k: v for k, v in item.items() if k not in ("audio", "audio_bytes", "key") and k not in meta})
    return Prepared(key, meta, _resolve(audio, base_dir))


PREPARERS: dict[str, Callable[..., Prepared]] = {
    "manifest": prepare_manifest_item, "text": prepare_text_item,
    **{k: partial(prepare_clip_item, kind=k) for k in CLIP_KINDS}}


# ----------------------------------------------------------------------------- audio (in workers)
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


def _ordered(jobs: Iterator[Prepared | Rejected], limits: Limits, workers: int) -> Iterator[Encoded | Rejected]:
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


# ----------------------------------------------------------------------------- building
def _as_item(position: int, raw: Item | dict | str | bytes, clips: bool) -> Item:
    if isinstance(raw, Item):
        return raw
    where: dict[str, Any] = {"line": position}
    if clips and isinstance(raw, dict):
        where["file"] = raw.get("audio")
    return Item(where, raw)


def build_pool(items: Iterable[Item | dict | str | bytes], out_dir: str | Path, *, kind: Kind,
               base_dir: Path | None = None, max_samples: int = 2000, max_bytes: int = 512 * 2**20,
               source: str | None = None, min_seconds: float = 0.0, max_seconds: float | None = None,
               splits: Sequence[tuple[str, float]] = (), rest: str = "train", workers: int = 1,
               ignored: Sequence[str] = (), total: int | None = None, progress: bool = True) -> dict:
    """Write one pool (or one per split) from corpus items and return the build report.

    Args:
        items: `Item`s from a reader in `borealis.corpora`, or bare dicts / raw JSONL lines
            (str or bytes; "line" in the report is then the 1-based position in `items`, so
            the file's line number for `open(path, "rb")`). Blank lines are skipped, uncounted.
        out_dir: the pool folder (see `ShardWriter`; an old pool there is replaced); with
            `splits`, pools `out_dir/<rest>` and `out_dir/<name>` for each split.
        kind: "manifest" (audio samples), "text" (chats without audio), or "noise" / "ir"
            (augmentation clips, items {"audio": path}; see `prepare_clip_item`).
        base_dir: folder that relative audio paths resolve against (None: the working dir).
        max_samples / max_bytes: shard size limits.
        source: "source" for manifest/text items that carry none.
        min_seconds: speech shorter than this is rejected ("too_short").
        max_seconds: speech: longer recordings are cut at their segment timestamps, or
            rejected ("too_long") without them. noise/ir: only the first max_seconds are read.
        splits: [(name, fraction)] held-out pools chosen by `split_of(key)` (the source key,
            so all chunks of a recording land in one split); the rest go to `rest`.
        workers: processes that decode and encode audio (1: in this process).
        ignored: noise/ir only: files found beside the items but not read (not audio by
            extension, hidden); counted and listed in the report, so none vanishes unseen.
        total: the number of items, for the progress bar, when `items` has no len().
        progress: show a tqdm bar.

    Returns:
        {"kind", "output", "read", "written", "rejected": {reason: count}, "num_rejected",
        "rejections": {reason: [first 20 {**where, "key", "detail"}]}, "num_samples" (chunks
        count one each), "duration", "num_shards", "splits" ({name: {"written", "num_samples",
        "duration", "num_shards"}}, with `splits` only), "min_seconds", "max_seconds",
        "chunked" (recordings cut into several samples), for noise/ir also "cropped" and
        "ignored" / "ignored_files" (the first 20); also written to `out_dir/build_report.json`.
    """
    clips = kind in CLIP_KINDS
    problems = []
    if kind not in PREPARERS:
        problems.append(f"kind must be one of {sorted(PREPARERS)}, got {kind!r}")
    if max_seconds is not None and not 0 < max_seconds < math.inf:
        problems.append(f"max_seconds must be finite and > 0, got {max_seconds!r}")
    if not 0 <= min_seconds < (max_seconds or math.inf):
        problems.append(f"min_seconds must be >= 0 and below max_seconds, got {min_seconds!r}")
    if ignored and not clips:
        problems.append(f"ignored files are listed for kinds {CLIP_KINDS} only, got kind {kind!r}")
    names = [n for n, _ in splits]
    if splits and (len(set(names + [rest])) != len(names) + 1 or sum(f for _, f in splits) >= 1
                   or any(not 0 < f < 1 for _, f in splits)):
        problems.append(f"splits must have distinct names other than {rest!r} and fractions in (0, 1) summing "
                        f"below 1, got {list(splits)}")
    if problems:
        raise ValueError("build_pool: " + "; ".join(problems))
    prepare = PREPARERS[kind]
    limits = Limits(0.0 if clips else min_seconds, max_seconds, crop=clips)
    out_dir = Path(out_dir)
    counts: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    examples: dict[str, list[dict]] = {}
    seen: set[str] = set()
    wheres: deque[dict] = deque()  # the items in flight, in order
    (out_dir / REPORT_NAME).unlink(missing_ok=True)  # a report always describes the pool beside it

    def jobs() -> Iterator[Prepared | Rejected]:
        for position, raw in enumerate(items, start=1):
            item = _as_item(position, raw, clips)
            if isinstance(item.data, (str, bytes)) and not item.data.strip():
                continue
            counts["read"] += 1
            wheres.append(item.where)
            try:
                data = item.data
                if isinstance(data, Rejected):
                    raise data
                if isinstance(data, (str, bytes)):
                    data = parse_line(data)
                if not isinstance(data, dict):
                    raise Rejected("bad_json", f"expected a dict, got {type(data).__name__}")
                p = prepare(data, base_dir=base_dir, source=source)
                if p.key in seen:
                    raise Rejected("duplicate_key", f"key {p.key!r} was already used by an earlier item", p.key)
                seen.add(p.key)  # a key is taken by its first item, written or not
                try:
                    json.dumps(p.meta, allow_nan=False)
                except (TypeError, ValueError) as e:
                    raise Rejected("bad_field", f"metadata is not JSON-serialisable ({e})", p.key) from None
                p.split = (split_of(p.key, splits) or rest) if splits else None
                yield p
            except Rejected as r:
                yield r

    def reject(r: Rejected, where: dict) -> None:
        rejected[r.reason] += 1
        bucket = examples.setdefault(r.reason, [])
        if len(bucket) < MAX_EXAMPLES:
            bucket.append({**where, "key": r.key, "detail": r.detail})
        log.debug("%s rejected (%s): %s", where, r.reason, r.detail)

    targets = {name: out_dir / name for name in [rest, *names]} if splits else {None: out_dir}
    writers = {name: ShardWriter(path, max_samples=max_samples, max_bytes=max_bytes) for name, path in targets.items()}
    written: Counter[str | None] = Counter()
    try:
        bar = tqdm(_ordered(jobs(), limits, workers), total=total if total is not None else
                   (len(items) if hasattr(items, "__len__") else None), desc=f"{kind} -> {out_dir.name}",
                   unit="item", disable=not progress)
        for result in bar:
            where = wheres.popleft()
            if isinstance(result, Rejected):
                reject(result, where)
                continue
            writer = writers[result.split]
            for key, meta, flac, duration in result.samples:
                writer.write_encoded(key, meta, flac, duration)
            written[result.split] += 1
            counts["written"] += 1
            counts["samples"] += len(result.samples)
            counts["chunked"] += len(result.samples) > 1
            counts["cropped"] += result.cropped
    finally:
        indexes = {name: w.close() for name, w in writers.items()}

    num_rejected = sum(rejected.values())
    assert counts["written"] + num_rejected == counts["read"], (counts, num_rejected)
    assert sum(i["num_samples"] for i in indexes.values()) == counts["samples"], (indexes, counts)
    report: dict[str, Any] = {
        "kind": kind, "output": str(out_dir), "read": counts["read"], "written": counts["written"],
        "rejected": {r: rejected[r] for r in REASONS if rejected[r]}, "num_rejected": num_rejected,
        "rejections": {r: examples[r] for r in REASONS if r in examples},
        "num_samples": counts["samples"], "duration": round(sum(i["duration"] for i in indexes.values()), 3),
        "num_shards": sum(len(i["shards"]) for i in indexes.values()),
    }
    if splits:
        report["splits"] = {name: {"written": written[name], "num_samples": i["num_samples"],
                                   "duration": i["duration"], "num_shards": len(i["shards"])}
                            for name, i in indexes.items()}
    if clips:
        report.update({"max_seconds": max_seconds, "cropped": counts["cropped"], "ignored": len(ignored),
                       "ignored_files": list(ignored[:MAX_EXAMPLES])})
    else:
        report.update({"min_seconds": min_seconds, "max_seconds": max_seconds, "chunked": counts["chunked"]})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_NAME).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return report


def summary_line(report: dict) -> str:
    """'read 10, written 7, rejected 3 (missing_file 1, ...)' plus the audio total (and, for
    noise/IR pools, how many clips were cropped and files ignored)."""
    reasons = ", ".join(f"{r} {n}" for r, n in report["rejected"].items())
    line = (f"{report['output']}: read {report['read']}, written {report['written']}, "
            f"rejected {report['num_rejected']}{f' ({reasons})' if reasons else ''}; "
            f"{report['duration'] / 3600:.2f} h ({report['duration']:.1f} s) of audio in "
            f"{report['num_samples']} sample(s), {report['num_shards']} shard(s)")
    if report.get("chunked"):
        line += f"; {report['chunked']} long recording(s) cut into chunks"
    if report.get("splits"):
        line += "; splits " + ", ".join(f"{n} {s['written']}" for n, s in report["splits"].items())
    if "cropped" in report and report.get("max_seconds") is not None:
        line += f"; cropped {report['cropped']} to {report['max_seconds']:g} s"
    if report.get("ignored"):
        line += f"; ignored {report['ignored']} non-audio or hidden file(s)"
    return line
