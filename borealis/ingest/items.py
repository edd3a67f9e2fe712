"""Input items: the checks that turn a corpus item into a keyed sample, or a `Rejected` naming why.

What: `Item` is what a reader in `borealis.corpora` gives; `PREPARERS[kind]` checks one item's
fields and gives a `Prepared` (key, metadata, where its audio is) or raises `Rejected` with
one of `REASONS`. Keys are deterministic: from the item's own key, from its audio path
(`audio_key`), or from the chat (`chat_key`); `split_of` assigns held-out splits by a stable
hash of the key.

Why: every item must end as written or rejected for a named reason, and the same input must
give the same keys (and so byte-identical pools) on any machine and worker count.

Cost: microseconds per item (JSON parsing and field checks; no audio is read here).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from borealis.shards import validate_key

# Every reason an item can be rejected for; the report counts each.
REASONS = ("bad_json", "non_utf8", "bad_field", "missing_file", "undecodable_audio", "empty_audio", "silent_audio",
           "too_short", "too_long", "empty_text", "missing_messages", "bad_messages", "duplicate_key")
CLIP_KINDS = ("noise", "ir")  # augmentation pools: audio with {"kind", "source"}, no text


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