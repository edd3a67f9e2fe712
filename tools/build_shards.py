"""Turn an audio corpus, a chat corpus or a folder of noise/IR clips into a Borealis shard pool.

What:
    python tools/build_shards.py manifest --input train.jsonl --output shards/my_asr --source my_corpus
    python tools/build_shards.py text --input chats.jsonl --output shards/my_chats
    python tools/build_shards.py audio-folder --input musan/noise --kind noise --output shards/noise
    python tools/build_shards.py audio-folder --input rirs/ --kind ir --max-seconds 2 --output shards/ir

`manifest` lines: {"audio": path, "text": ..., "language"?, "messages"?, "key"?, ...extra}.
Relative audio paths resolve against the manifest's folder; extra fields are kept in the
sample's JSON. With "messages" the sample is an instruction ("instruct"), else ASR ("asr").
`text` lines: {"messages": [...], "key"?, "language"?, ...extra}, stored without audio
("chat"). `audio-folder` reads every audio file below a folder (recursively, by extension;
hidden and other files are listed in the report as ignored) into a pool for
`augmentations.BackgroundNoise` / `ImpulseResponse`: {"kind": "noise"|"ir", "source": the
path relative to the folder, "duration"}, no text. Digitally silent clips are rejected
(an IR or a noise clip without signal is a no-op effect), and `--max-seconds` reads only the
head of long files (an IR's tail below -60 dB, or one window of a long noise recording).

Why: every input line (or file) ends as exactly one of written or rejected with a reason, so a
corpus never loses samples silently. The summary says how many of each, and `OUT/build_report.json`
keeps the counts and the first 20 rejections per reason. `--strict` turns any rejection into
a non-zero exit, for CI. Keys are deterministic (given, or derived from the audio path or the
chat's content), and so are the shards: the same input gives byte-identical pools.

Cost: one soundfile decode + soxr resample + FLAC encode per clip: ShardWriter alone takes
~2.5 ms per 5 s clip at 16 kHz and ~6 ms at 44.1 kHz stereo on one core (~800x real time).
`--max-seconds` decodes only a file's head, so an hour-long noise recording costs its window.
Whole-corpus importers (LibriSpeech, Common Voice, HF datasets), parallel workers and cutting
long audio into several clips are later subcommands: each adds a parser in `build_parser`
and an item source that feeds `build_pool`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout, without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from borealis.prompts import AUDIO_PLACEHOLDER  # noqa: E402
from borealis.shards import SAMPLE_RATE, ShardWriter, validate_key  # noqa: E402

log = logging.getLogger("build_shards")

REPORT_NAME = "build_report.json"
MAX_EXAMPLES = 20  # rejections kept per reason in the report
ROLES = ("system", "user", "assistant")
# Every reason an item can be rejected for; the report counts each.
REASONS = ("bad_json", "bad_field", "missing_file", "undecodable_audio", "empty_audio", "silent_audio",
           "empty_text", "missing_messages", "bad_messages", "duplicate_key")
Kind = Literal["manifest", "text", "noise", "ir"]
CLIP_KINDS = ("noise", "ir")  # augmentation pools: audio with {"kind", "source"}, no text
# Extensions `audio-folder` reads by default: libsndfile's formats (MP3 needs libsndfile >= 1.1).
AUDIO_SUFFIXES = ("wav", "flac", "ogg", "oga", "opus", "mp3", "aif", "aiff", "aifc", "au", "caf", "w64", "rf64")
SILENCE_PEAK = 1e-4  # -80 dBFS, ~3 LSB at 16 bit: a clip whose peak stays below is digital silence


class Rejected(Exception):
    """An input item that cannot become a sample: `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str, key: str | None = None) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.key = reason, detail, key


@dataclass
class Prepared:
    """A validated item: its key and metadata, and where its audio is (None: text-only)."""

    key: str
    meta: dict[str, Any]
    audio_path: Path | None = None


# ----------------------------------------------------------------------------- items
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_line(line: str) -> dict:
    """One JSONL line -> a dict; Rejected("bad_json") for anything else (NaN included)."""
    try:
        item = json.loads(line, parse_constant=_reject_constant)
    except ValueError as e:
        raise Rejected("bad_json", f"not a JSON line ({e})") from None
    if not isinstance(item, dict):
        raise Rejected("bad_json", f"expected a JSON object, got {type(item).__name__}")
    return item


def check_messages(messages: Any, *, with_audio: bool, key: str | None = None) -> list[dict]:
    """Check a chat: [{"role", "content"}], at least one assistant turn, and exactly one audio
    placeholder in a user turn for an audio sample (none without audio)."""
    if messages is None or messages == []:
        raise Rejected("missing_messages", "no 'messages'", key)
    if not isinstance(messages, list):
        raise Rejected("bad_messages", f"'messages' must be a list, got {type(messages).__name__}", key)
    problems = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            problems.append(f"messages[{i}] must be {{'role': one of {ROLES}, 'content': str}}, got {m!r:.80}")
    if problems:
        raise Rejected("bad_messages", "; ".join(problems), key)
    if not any(m["role"] == "assistant" for m in messages):
        raise Rejected("bad_messages", "no assistant turn to train on", key)
    holders = [(i, m["role"]) for i, m in enumerate(messages) for _ in range(m["content"].count(AUDIO_PLACEHOLDER))]
    if with_audio and (len(holders) != 1 or holders[0][1] != "user"):
        raise Rejected("bad_messages", f"an audio sample needs exactly one {AUDIO_PLACEHOLDER!r} in a user turn, "
                                       f"found {len(holders)} (turn, role): {holders}", key)
    if not with_audio and holders:
        raise Rejected("bad_messages", f"a text-only chat must not hold {AUDIO_PLACEHOLDER!r} "
                                       f"(found in turns {[i for i, _ in holders]})", key)
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


def _keyed_audio(item: dict) -> tuple[str, str]:
    """An audio item's key (given, or derived from the path) and its audio path as written."""
    key = _given_key(item)
    audio = item.get("audio")
    if not isinstance(audio, str) or not audio:
        raise Rejected("bad_field", f"'audio' must be a non-empty path string, got {audio!r}", key)
    return key or audio_key(audio), audio


def _resolve(audio: str, base_dir: Path | None) -> Path:
    path = Path(audio)
    return path if path.is_absolute() or base_dir is None else base_dir / path


def prepare_manifest_item(item: dict, *, base_dir: Path | None, source: str | None) -> Prepared:
    """Validate one manifest line and give its key, metadata and audio path (audio unread)."""
    key, audio = _keyed_audio(item)
    text, messages = item.get("text"), item.get("messages")
    if text is not None and not isinstance(text, str):
        raise Rejected("bad_field", f"'text' must be a string, got {type(text).__name__}", key)
    if messages is not None:
        check_messages(messages, with_audio=True, key=key)
        task = "instruct"
    elif not text or not text.strip():
        raise Rejected("empty_text", "an ASR line needs a non-empty 'text'", key)
    else:
        task = "asr"
    meta: dict[str, Any] = {} if text is None else {"text": text}
    meta.update(_common_meta(item, task, source, key))
    meta.update({k: v for k, v in item.items() if k not in ("audio", "key", "messages") and k not in meta})
    if messages is not None:
        meta["messages"] = messages
    return Prepared(key, meta, _resolve(audio, base_dir))


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
    meta: dict[str, Any] = {"kind": kind, "source": audio}
    meta.update({k: v for k, v in item.items() if k not in ("audio", "key") and k not in meta})
    return Prepared(key, meta, _resolve(audio, base_dir))


PREPARERS: dict[str, Callable[..., Prepared]] = {
    "manifest": prepare_manifest_item, "text": prepare_text_item,
    **{k: partial(prepare_clip_item, kind=k) for k in CLIP_KINDS}}


def load_audio(path: Path, key: str, max_seconds: float | None = None) -> tuple[np.ndarray, int, float]:
    """Read an audio file, or only its first `max_seconds`.

    Returns:
        (frames, channels) float32 audio, its rate, and the whole file's duration in seconds
        (longer than the audio when it was cut at `max_seconds`).

    Raises:
        Rejected: missing, undecodable, or empty (0 bytes or 0 frames); the detail names the file.
    """
    if not path.is_file():
        raise Rejected("missing_file", f"audio file {path} does not exist", key)
    if path.stat().st_size == 0:
        raise Rejected("empty_audio", f"{path}: empty file (0 bytes)", key)
    try:
        with sf.SoundFile(path) as f:
            rate, frames = f.samplerate, f.frames
            limit = -1 if max_seconds is None else round(max_seconds * rate)
            audio = f.read(limit, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise Rejected("undecodable_audio", f"{path}: {e}", key) from None
    if audio.shape[0] == 0:
        raise Rejected("empty_audio", f"{path}: no audio frames", key)
    cut = audio.shape[0] == limit and frames > limit  # `frames` is the header's count: trusted only here
    return audio, rate, (frames if cut else audio.shape[0]) / rate


def check_clip(audio: np.ndarray, rate: int, seconds: float, p: Prepared) -> bool:
    """Reject a digitally silent noise/IR clip; note in its metadata when it was cut.

    Returns:
        Whether the clip is shorter than its file (cut at `--max-seconds`).
    """
    peak = float(np.max(np.abs(audio)))
    if peak < SILENCE_PEAK:  # NaN passes here and is rejected by the writer
        raise Rejected("silent_audio", f"{p.audio_path}: silent (peak {peak:.1e} < {SILENCE_PEAK:.0e}, "
                                       f"i.e. below -80 dBFS): a {p.meta['kind']} clip needs signal", p.key)
    cropped = audio.shape[0] < round(seconds * rate)
    if cropped:
        p.meta["cropped_from"] = round(seconds, 3)
    return cropped


# ----------------------------------------------------------------------------- building
def build_pool(items: Iterable[dict | str], out_dir: str | Path, *, kind: Kind, base_dir: Path | None = None,
               max_samples: int = 2000, max_bytes: int = 512 * 2**20, source: str | None = None,
               max_seconds: float | None = None, ignored: Sequence[str] = (), progress: bool = True) -> dict:
    """Write one pool from manifest, chat or noise/IR items and return the build report.

    Args:
        items: dicts, or raw JSONL lines (str; parsed here so a bad line becomes a "bad_json"
            rejection). Blank lines are skipped and not counted; "line" in the report is the
            1-based position in `items`, so it is the file's line number for `open(path)`.
        out_dir: the pool folder (see `ShardWriter`; an old pool there is replaced).
        kind: "manifest" (audio samples), "text" (chats without audio), or "noise" / "ir"
            (augmentation clips, items {"audio": path}; see `prepare_clip_item`).
        base_dir: folder that relative audio paths resolve against (None: the working dir).
        max_samples: samples per shard at most.
        max_bytes: bytes per shard at most.
        source: "source" for manifest/text items that carry none.
        max_seconds: noise/ir only: keep at most this many seconds of each clip (None: all).
        ignored: noise/ir only: files found beside the items but not read (not audio by
            extension, hidden); counted and listed in the report, so none vanishes unseen.
        progress: show a tqdm bar.

    Returns:
        {"kind", "output", "read", "written", "rejected": {reason: count}, "num_rejected",
        "rejections": {reason: [first 20 {"line", "key", "detail"} (+ "file" for noise/ir)]},
        "num_samples", "duration", "num_shards"}, for noise/ir also "max_seconds", "cropped"
        and "ignored" / "ignored_files" (the first 20); also written to `out_dir/build_report.json`.
    """
    clips = kind in CLIP_KINDS
    problems = []
    if kind not in PREPARERS:
        problems.append(f"kind must be one of {sorted(PREPARERS)}, got {kind!r}")
    if max_seconds is not None and not (clips and 0 < max_seconds < math.inf):
        problems.append(f"max_seconds must be finite and > 0, for kinds {CLIP_KINDS} only; got {max_seconds!r} "
                        f"for kind {kind!r}")
    if ignored and not clips:
        problems.append(f"ignored files are listed for kinds {CLIP_KINDS} only, got kind {kind!r}")
    if problems:
        raise ValueError("build_pool: " + "; ".join(problems))
    prepare = PREPARERS[kind]
    out_dir = Path(out_dir)
    read = written = cropped = 0
    rejected: Counter[str] = Counter()
    examples: dict[str, list[dict]] = {}
    seen: set[str] = set()
    (out_dir / REPORT_NAME).unlink(missing_ok=True)  # a report always describes the pool beside it

    with ShardWriter(out_dir, max_samples=max_samples, max_bytes=max_bytes) as writer:
        for line_no, item in enumerate(tqdm(items, desc=f"{kind} -> {out_dir.name}", unit="item",
                                            disable=not progress), start=1):
            if isinstance(item, str) and not item.strip():
                continue
            read += 1
            try:
                if isinstance(item, str):
                    item = parse_line(item)
                if not isinstance(item, dict):
                    raise Rejected("bad_json", f"expected a dict, got {type(item).__name__}")
                p = prepare(item, base_dir=base_dir, source=source)
                if p.key in seen:
                    raise Rejected("duplicate_key", f"key {p.key!r} was already written", p.key)
                try:
                    json.dumps(p.meta, allow_nan=False)
                except (TypeError, ValueError) as e:
                    raise Rejected("bad_field", f"metadata is not JSON-serialisable ({e})", p.key) from None
                audio, rate, was_cropped = None, SAMPLE_RATE, False
                if p.audio_path is not None:
                    audio, rate, seconds = load_audio(p.audio_path, p.key, max_seconds)
                    was_cropped = clips and check_clip(audio, rate, seconds, p)
                try:
                    writer.write(p.key, p.meta, audio, sample_rate=rate)
                except ValueError as e:  # the key and metadata were checked above: the audio is unusable
                    raise Rejected("undecodable_audio", f"{p.audio_path}: {e}", p.key) from None
            except Rejected as r:
                rejected[r.reason] += 1
                bucket = examples.setdefault(r.reason, [])
                if len(bucket) < MAX_EXAMPLES:
                    where = {"file": item.get("audio")} if clips and isinstance(item, dict) else {}
                    bucket.append({"line": line_no, **where, "key": r.key, "detail": r.detail})
                log.debug("line %d rejected (%s): %s", line_no, r.reason, r.detail)
                continue
            seen.add(p.key)
            written += 1
            cropped += was_cropped
        index = writer.close()

    num_rejected = sum(rejected.values())
    assert written + num_rejected == read, (written, num_rejected, read)
    assert index["num_samples"] == written, (index["num_samples"], written)
    report = {
        "kind": kind, "output": str(out_dir), "read": read, "written": written,
        "rejected": {r: rejected[r] for r in REASONS if rejected[r]}, "num_rejected": num_rejected,
        "rejections": {r: examples[r] for r in REASONS if r in examples},
        "num_samples": index["num_samples"], "duration": index["duration"], "num_shards": len(index["shards"]),
    }
    if clips:
        report.update({"max_seconds": max_seconds, "cropped": cropped, "ignored": len(ignored),
                       "ignored_files": list(ignored[:MAX_EXAMPLES])})
    (out_dir / REPORT_NAME).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return report


def list_audio_files(root: Path, suffixes: Sequence[str] = AUDIO_SUFFIXES) -> tuple[list[str], list[str]]:
    """Files below `root`, recursively, as sorted POSIX paths relative to it: (audio, ignored).

    Audio files have one of `suffixes` (case-insensitive); the rest, and anything hidden (a
    name or folder starting with '.', e.g. macOS `._x.wav` resource forks), are ignored.
    Sorting makes keys, shard order and so the pool's bytes independent of the file system.
    """
    wanted = {x.lower().lstrip(".") for x in suffixes}
    audio, ignored = [], []
    for rel in sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()):
        hidden = any(part.startswith(".") for part in rel.split("/"))
        is_audio = not hidden and Path(rel).suffix.lower().lstrip(".") in wanted
        (audio if is_audio else ignored).append(rel)
    return audio, ignored


def summary_line(report: dict) -> str:
    """'read 10, written 7, rejected 3 (missing_file 1, ...)' plus the audio total (and, for
    noise/IR pools, how many clips were cropped and files ignored)."""
    reasons = ", ".join(f"{r} {n}" for r, n in report["rejected"].items())
    line = (f"{report['output']}: read {report['read']}, written {report['written']}, "
            f"rejected {report['num_rejected']}{f' ({reasons})' if reasons else ''}; "
            f"{report['duration']:.1f} s of audio in {report['num_shards']} shard(s)")
    if report.get("max_seconds") is not None:
        line += f"; cropped {report['cropped']} to {report['max_seconds']:g} s"
    if report.get("ignored"):
        line += f"; ignored {report['ignored']} non-audio or hidden file(s)"
    return line


# ----------------------------------------------------------------------------- CLI
def _size(text: str) -> int:
    """'536870912', '512M', '1G' -> bytes."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 536870912, 512M, 1G)")
    return int(m.group(1)) * units[m.group(2).upper()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def _suffixes(text: str) -> tuple[str, ...]:
    """'wav,flac,.MP3' -> ('wav', 'flac', 'mp3')."""
    out = tuple(x.strip().lower().lstrip(".") for x in text.split(",") if x.strip().lstrip("."))
    if not out:
        raise argparse.ArgumentTypeError(f"no extensions in {text!r} (use e.g. wav,flac)")
    return out


def _run_jsonl(args: argparse.Namespace, kind: Kind) -> dict:
    path: Path = args.input
    with open(path, encoding="utf-8") as f:
        return build_pool(f, args.output, kind=kind, base_dir=path.resolve().parent,
                          max_samples=args.max_samples, max_bytes=args.max_bytes, source=args.source,
                          progress=not args.no_progress)


def _run_folder(args: argparse.Namespace) -> dict:
    files, ignored = list_audio_files(args.input, args.extensions)
    if not files:
        raise FileNotFoundError(f"no audio files ({','.join(args.extensions)}) below --input {args.input}; "
                                f"{len(ignored)} other file(s), e.g. {ignored[:3]}")
    return build_pool([{"audio": f} for f in files], args.output,  # a list: the bar knows the total
                      kind=args.kind, base_dir=args.input, max_samples=args.max_samples,
                      max_bytes=args.max_bytes, max_seconds=args.max_seconds, ignored=ignored,
                      progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one subparser per corpus kind, sharing the pool options."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("pool")
    g.add_argument("--output", type=Path, required=True, help="pool folder to write (an old pool there is replaced)")
    g.add_argument("--max-samples", type=_positive, default=2000, help="samples per shard at most")
    g.add_argument("--max-bytes", type=_size, default=512 * 2**20, help="bytes per shard at most (e.g. 512M)")
    g.add_argument("--strict", action="store_true", help="exit 1 if any line or file is rejected")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("-v", "--verbose", action="store_true", help="log every rejection")
    jsonl = argparse.ArgumentParser(add_help=False)
    jsonl.add_argument("--source", default=None, help="'source' for lines that carry none")

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("manifest", parents=[common, jsonl], formatter_class=fmt,
                       help="audio + transcript (or chat) JSONL manifest -> asr/instruct samples")
    p.add_argument("--input", type=Path, required=True,
                   help='JSONL: {"audio": path, "text": ..., "language"?, "messages"?, "key"?, ...}')
    p.set_defaults(run=lambda a: _run_jsonl(a, "manifest"))
    p = sub.add_parser("text", parents=[common, jsonl], formatter_class=fmt,
                       help="chat JSONL -> text-only chat samples")
    p.add_argument("--input", type=Path, required=True, help='JSONL: {"messages": [...], "key"?, "language"?, ...}')
    p.set_defaults(run=lambda a: _run_jsonl(a, "text"))
    p = sub.add_parser(
        "audio-folder", parents=[common], formatter_class=fmt,
        help="folder of noise or impulse-response audio files -> a pool for BackgroundNoise/ImpulseResponse",
        description="Every audio file below --input (recursively, sorted) becomes one sample: 16 kHz mono FLAC "
                    '+ {"kind": --kind, "source": path relative to --input, "duration"} (+ "cropped_from": '
                    "seconds, when cut). Each file is written or rejected: missing_file, undecodable_audio, "
                    "empty_audio (0 bytes or 0 frames), silent_audio (peak below -80 dBFS). Files with "
                    "other extensions and hidden files are counted as ignored in build_report.json.")
    p.add_argument("--input", type=Path, required=True, metavar="DIR",
                   help="folder of audio files (searched recursively)")
    p.add_argument("--kind", choices=CLIP_KINDS, required=True,
                   help="'noise' (for augmentations.BackgroundNoise) or 'ir' (impulse responses, for "
                        "augmentations.ImpulseResponse), stored as the samples' 'kind'")
    p.add_argument("--max-seconds", type=_seconds, default=None, metavar="SECONDS",
                   help="keep only the first SECONDS of longer files (only that much is decoded) and report "
                        "how many were cropped; e.g. 2 for IRs, 30 for long noise recordings (None: whole files)")
    p.add_argument("--extensions", type=_suffixes, default=",".join(AUDIO_SUFFIXES), metavar="EXT,EXT",
                   help="comma-separated file extensions read as audio (case-insensitive)")
    p.set_defaults(run=_run_folder)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (1 under --strict when anything was rejected)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    folder = args.command == "audio-folder"
    if not (args.input.is_dir() if folder else args.input.is_file()):
        parser.error(f"--input {args.input} is not {'a folder' if folder else 'a file'}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = args.run(args)
    except FileNotFoundError as e:  # a folder without audio files
        parser.error(str(e))
    print(summary_line(report))
    for reason, rows in report["rejections"].items():
        first = rows[0]
        where = "" if "file" in first else f"line {first['line']}: "  # a file's detail names the file
        print(f"  {reason}: e.g. {where}{first['detail']}")
    if report.get("ignored"):
        print(f"  ignored (not read): e.g. {', '.join(report['ignored_files'][:5])}")
    print(f"  report: {Path(report['output']) / REPORT_NAME}")
    if args.strict and report["num_rejected"]:
        print(f"--strict: {report['num_rejected']} {'file' if folder else 'line'}(s) rejected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
