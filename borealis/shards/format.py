"""The shard format: constants, sample keys, audio as a pool stores it, one sample's decoding,
and a pool's `index.json` and shard list.

What: a pool is a folder of `shard-000000.tar ...` plus `index.json`. One sample is
`<key>.flac` (16 kHz mono, PCM_16) + `<key>.json` (its metadata); a text-only sample is the
`.json` alone. `shards/README.md` documents the layout; `writer.py` writes pools, `reader.py`
streams and randomly accesses them, `verify.py` checks them.

Why: tar shards are read sequentially, so training streams large files instead of millions
of small ones, and a plain `webdataset.WebDataset(url)` or `tar -x` still reads them: keys
follow webdataset's member-name rule (the key is the name before the first dot).

Cost: FLAC at 16 kHz PCM_16 is ~1-1.6 MB per minute of speech (WAV is 1.9 MB). Decoding a
5 s clip from memory takes ~2 ms on one loaded CPU core; encoding one from 44.1 kHz stereo
(soxr HQ resample + FLAC) ~6 ms.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Sequence
from glob import glob, has_magic
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger("borealis.shards")

SAMPLE_RATE = 16000
INDEX_NAME = "index.json"
REPORT_NAME = "build_report.json"  # beside index.json in pools built by `borealis shards build`
INDEX_FORMAT = "borealis-shards/1"
SHARD_PATTERN = "shard-*.tar"
AUDIO_EXTS = ("flac", "wav")  # members read as audio, in order of preference

_BAD_KEY = re.compile(r"[./\\\s]")


class ShardError(ValueError):
    """A shard or one of its samples cannot be read or written.

    Args:
        problem: what is wrong.
        shard: the shard path, when known.
        key: the sample key, when known.
    """

    def __init__(self, problem: str, *, shard: str | Path | None = None, key: str | None = None) -> None:
        self.problem, self.shard, self.key = problem, None if shard is None else str(shard), key
        where = []
        if self.shard is not None:
            where.append(f"shard {self.shard}")
        if key is not None:
            where.append(f"sample {key!r}")
        super().__init__(": ".join([*where, problem]))


def validate_key(key: str) -> None:
    """Raise ValueError unless `key` can name a sample in a webdataset tar.

    webdataset splits member names at the first dot, so a key must hold no '.', no path
    separator and no whitespace; keys starting with '__' are reserved for its metadata.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"sample key must be a non-empty string, got {key!r}")
    if _BAD_KEY.search(key):
        raise ValueError(f"sample key {key!r} contains '.', '/', '\\' or whitespace; "
                         "webdataset splits keys at the first dot, use e.g. '-' or '_' instead")
    if key.startswith("__"):
        raise ValueError(f"sample key {key!r} starts with '__', which webdataset reserves for metadata")



def _to_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames,) or (frames, channels) float audio -> float32 (frames',) at 16 kHz."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if sample_rate != SAMPLE_RATE:
        x = soxr.resample(x, sample_rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def encode_flac(audio: np.ndarray, sample_rate: int, key: str = "?") -> tuple[bytes, float]:
    """Audio as a pool stores it: (frames,) or (frames, channels) float -> 16 kHz mono FLAC PCM_16.

    Channels are averaged, the rate converted with soxr (HQ), values outside [-1, 1] clipped
    (with a warning). Returns the FLAC bytes and the duration in seconds (rounded to 1 ms).

    Raises:
        ValueError: unusable audio (not float, wrong shape, empty, NaN/inf, bad rate), naming `key`.
    """
    x = np.asarray(audio)
    problem = None
    if not np.issubdtype(x.dtype, np.floating):
        problem = f"audio must be a float array, got dtype {x.dtype}"
    elif x.ndim not in (1, 2):
        problem = f"audio must be (frames,) or (frames, channels), got shape {x.shape}"
    elif x.ndim == 2 and x.shape[1] > x.shape[0]:
        problem = f"audio of shape {x.shape} looks like (channels, frames); pass (frames, channels)"
    elif x.shape[0] == 0:
        problem = "audio is empty"
    elif not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        problem = f"sample_rate must be a positive int, got {sample_rate!r}"
    elif not np.isfinite(x).all():
        problem = "audio holds NaN or inf values"
    if problem:
        raise ValueError(f"sample {key!r}: {problem}")
    y = _to_mono_16k(x, int(sample_rate))
    clipped = int(np.count_nonzero(np.abs(y) > 1.0))
    if clipped:
        log.warning("sample %r: %d of %d samples outside [-1, 1] were clipped", key, clipped, y.size)
        y = np.clip(y, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, y, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue(), round(y.size / SAMPLE_RATE, 3)



def decode_sample(raw: dict, shard: str = "?") -> dict:
    """Decode one raw webdataset sample into metadata and 16 kHz mono audio.

    Args:
        raw: {"__key__": key, "json": bytes, "flac" or "wav": bytes (optional)}.
        shard: the shard it came from, for messages and the "shard" field.

    Returns:
        {"key", "meta", "audio" (float32 (T,) at 16 kHz, or None), "duration" (seconds:
        from the audio, else meta["duration"] or 0.0), "shard"}.

    Raises:
        ShardError: missing or invalid JSON, or undecodable or empty audio.
    """
    key = raw.get("__key__")
    if "json" not in raw:
        members = sorted(k for k in raw if not k.startswith("__"))
        raise ShardError(f"no .json member (has: {', '.join(members) or 'nothing'})", shard=shard, key=key)
    try:
        data = raw["json"]
        meta = json.loads(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"corrupt .json ({e})", shard=shard, key=key) from e
    if not isinstance(meta, dict):
        raise ShardError(f".json holds a {type(meta).__name__}, expected an object", shard=shard, key=key)
    ext = next((e for e in AUDIO_EXTS if e in raw), None)
    audio = None
    if ext is None:
        try:
            duration = float(meta.get("duration", 0.0))
        except (TypeError, ValueError):
            raise ShardError(f"'duration' is {meta.get('duration')!r}, not a number", shard=shard, key=key) from None
    else:
        try:
            x, sr = sf.read(io.BytesIO(raw[ext]), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise ShardError(f"undecodable .{ext} audio ({e})", shard=shard, key=key) from e
        if x.shape[0] == 0:
            raise ShardError(f".{ext} audio has no frames", shard=shard, key=key)
        audio = _to_mono_16k(x, sr)
        duration = audio.size / SAMPLE_RATE
    return {"key": key, "meta": meta, "audio": audio, "duration": duration, "shard": shard}



def read_index(pool_dir: str | Path) -> dict:
    """Load and check a pool's `index.json` (`pool_dir` may also be the index file itself, or a
    pool URL: see `remote.read_remote_index`).

    Raises:
        FileNotFoundError: no index.json there.
        ValueError: the file is not a valid index; the message names the path and every problem.
    """
    from borealis.shards import remote

    if remote.is_url(pool_dir):
        return remote.read_remote_index(str(pool_dir))
    path = Path(remote.local_path(pool_dir))
    if path.is_dir():
        path = path / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no shard index at {path} (expected {INDEX_NAME} written by ShardWriter)")
    return parse_index(path.read_bytes(), str(path))


def parse_index(data: bytes, path: str) -> dict:
    """Check the bytes of an `index.json` read from `path` (named in the errors); the index.

    Raises:
        ValueError: not a valid index; the message names the path and every problem.
    """
    try:
        index = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(index, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(index).__name__}")
    problems = []
    if index.get("format") != INDEX_FORMAT:
        problems.append(f"format is {index.get('format')!r}, expected {INDEX_FORMAT!r}")
    for k in ("num_samples", "duration"):
        if not isinstance(index.get(k), (int, float)):
            problems.append(f"{k!r} missing or not a number")
    shards = index.get("shards")
    if not isinstance(shards, list):
        problems.append("'shards' missing or not a list")
    else:
        for i, s in enumerate(shards):
            missing = [k for k in ("name", "num_samples", "sha256") if not isinstance(s, dict) or k not in s]
            if missing:
                problems.append(f"shards[{i}] lacks {', '.join(missing)}")
        if not problems and index["num_samples"] != sum(s["num_samples"] for s in shards):
            problems.append(f"num_samples {index['num_samples']} != sum over shards "
                            f"{sum(s['num_samples'] for s in shards)}")
    if problems:
        raise ValueError(f"{path}: invalid shard index: " + "; ".join(problems))
    return index



def list_shards(spec: str | Path, *, keep_missing: bool = False) -> list[Path] | list[str]:
    """Shard paths of a pool folder, a single tar, or a glob pattern; shard URLs of a URL.

    A folder with `index.json` gives the index's order (every listed shard must exist);
    without one, its sorted `shard-*.tar`. A glob gives its sorted matches. A URL
    (s3://, gs://, http(s)://, any fsspec protocol, `pipe:CMD`; see `remote.list_remote`) gives
    the shard URLs its index.json lists, unchecked: a shard that is not there is found when
    it is fetched (skipped and counted by the training stream, an error for a benchmark).

    Args:
        spec: a pool folder, a .tar file or a glob.
        keep_missing: return shards the index lists but that do not exist, with a warning,
            instead of raising: for a reader that skips and counts unreadable shards
            (`iter_shard(..., on_error=ReadErrors())`, the training stream).

    Raises:
        FileNotFoundError: naming `spec`, when nothing matches or listed shards are missing.
        OSError (`remote.FetchError`): a URL pool's index.json unreachable after the retries.
        ValueError: an invalid index.json.
    """
    from borealis.shards import remote

    if remote.is_url(spec):
        return remote.list_remote(str(spec))
    p = Path(remote.local_path(spec))
    if p.is_dir():
        if (p / INDEX_NAME).is_file():
            paths = [p / s["name"] for s in read_index(p)["shards"]]
            missing = [str(x) for x in paths if not x.is_file()]
            if missing and not keep_missing:
                raise FileNotFoundError(f"{p / INDEX_NAME} lists shards that do not exist: {', '.join(missing)}")
            if missing:
                log.warning("%s lists %d shard(s) that do not exist; they will be skipped and counted as "
                            "unreadable: %s", p / INDEX_NAME, len(missing), ", ".join(missing))
        else:
            paths = sorted(p.glob(SHARD_PATTERN))
        if not paths:
            raise FileNotFoundError(f"no shards in pool folder {str(spec)!r} (expected {SHARD_PATTERN})")
        return paths
    if p.is_file():
        return [p]
    paths = [Path(x) for x in sorted(glob(str(spec)))] if has_magic(str(spec)) else []
    paths = [x for x in paths if x.is_file()]
    if not paths:
        raise FileNotFoundError(f"no shards match {str(spec)!r} (give a pool folder, a .tar file or a glob)")
    return paths



def shard_entries(paths: Sequence[str | Path]) -> list[dict | None]:
    """Each shard's entry in its pool's index.json ({"name", "num_samples", "sha256", "bytes",
    ...}); None where no index lists it.

    Local shards: the index.json beside them (each folder's read once; an invalid index counts
    as none, with a warning). URLs: the entries `list_shards` read.
    """
    from borealis.shards import remote

    by_folder: dict[Path, dict[str, dict]] = {}
    entries: list[dict | None] = []
    for spec in paths:
        if remote.is_url(spec):
            entries.append(remote.index_entry(str(spec)))
            continue
        path = Path(spec)
        folder = path.parent
        if folder not in by_folder:
            by_folder[folder] = {}
            if (folder / INDEX_NAME).is_file():
                try:
                    by_folder[folder] = {s["name"]: s for s in read_index(folder)["shards"]}
                except (ValueError, TypeError) as e:
                    log.warning("%s; damaged shards in %s report no lost-sample count", e, folder)
        entries.append(by_folder[folder].get(path.name))
    return entries


def shard_sample_counts(paths: Sequence[str | Path]) -> list[int | None]:
    """Each shard's `num_samples` from its pool's index.json (`shard_entries`); None where no
    index lists it. A skipping reader passes them to `iter_shard(expected=...)` to count what
    a damaged shard lost."""
    return [None if e is None else int(e["num_samples"]) for e in shard_entries(paths)]
