"""`ShardWriter`: build a pool of byte-deterministic tar shards plus its `index.json`.

What: samples are appended in order; a shard rolls over at `max_samples` or before it would
pass `max_bytes`; every shard is written as `.tmp` and renamed when complete, and the index
(sample counts, durations, sizes and sha256 per shard) is written last.

Why: shards are byte-deterministic (mtime 0, uid/gid 0, insertion order), so rebuilding the
same input gives the same sha256 and `index.json` doubles as a cache key and a corruption
check. The sha256 is computed while writing, so a shard is never read back.

Cost: ~400 clips/s written from 16 kHz, ~160 clips/s from 44.1 kHz stereo (one loaded CPU
core, 5 s noisy clips; the FLAC encode dominates, see `format.encode_flac`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from borealis.shards.format import (INDEX_FORMAT, INDEX_NAME, SAMPLE_RATE, SHARD_PATTERN, encode_flac, log,
                                    validate_key)

_TAR_BLOCK = 512


def _padded(size: int) -> int:
    return -(-size // _TAR_BLOCK) * _TAR_BLOCK


def _final_size(offset: int) -> int:
    """Size of a tar closed at `offset`: two zero blocks, then padding to tarfile's 10 kB record."""
    return -(-(offset + 2 * _TAR_BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _member_bytes(name: str, size: int) -> int:
    """Bytes a member takes in a PAX tar: header (+ an extended header for long or non-ASCII
    names) + data padded to 512."""
    extra = 0 if name.isascii() and len(name) <= 100 else 3 * _TAR_BLOCK
    return _TAR_BLOCK + extra + _padded(size)


class _HashingFile:
    """A write-only file wrapper that feeds every byte to sha256 (no second read of the shard)."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()



class ShardWriter:
    """Writes one pool: `shard-NNNNNN.tar` files plus `index.json`.

    Each shard is written as `shard-NNNNNN.tar.tmp` and renamed when complete, and the index
    is written last (tmp + rename), so readers never see a half-written pool file. A folder
    that already holds a pool has its `shard-*.tar` and `index.json` removed first (with a
    warning): stale shards from a larger earlier build would otherwise be picked up by globs.

    Args:
        out_dir: the pool folder; created if missing.
        max_samples: at most this many samples per shard.
        max_bytes: roll to a new shard before a shard would grow past this size (a single
            sample larger than this still gets a shard of its own).
    """

    def __init__(self, out_dir: str | Path, *, max_samples: int = 2000, max_bytes: int = 512 * 2**20) -> None:
        problems = []
        if not isinstance(max_samples, int) or max_samples < 1:
            problems.append(f"max_samples must be an int >= 1, got {max_samples!r}")
        if not isinstance(max_bytes, int) or max_bytes < tarfile.RECORDSIZE:
            problems.append(f"max_bytes must be an int >= {tarfile.RECORDSIZE} (one tar record), got {max_bytes!r}")
        if problems:
            raise ValueError("ShardWriter: " + "; ".join(problems))
        self.out_dir = Path(out_dir)
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stale = sorted(self.out_dir.glob(SHARD_PATTERN)) + sorted(self.out_dir.glob(SHARD_PATTERN + ".tmp"))
        if (self.out_dir / INDEX_NAME).exists():
            stale.append(self.out_dir / INDEX_NAME)
        if stale:
            log.warning("%s already holds a pool; removing %d old file(s) before writing", self.out_dir, len(stale))
            for p in stale:
                p.unlink()
        self._keys: set[str] = set()
        self._shards: list[dict[str, Any]] = []
        self._tasks: dict[str, int] = {}
        self._tar: tarfile.TarFile | None = None
        self._file: io.BufferedWriter | None = None
        self._hasher: _HashingFile | None = None
        self._shard_samples = 0
        self._shard_duration = 0.0
        self._index: dict[str, Any] | None = None

    @property
    def num_samples(self) -> int:
        """Samples written so far."""
        return len(self._keys)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            log.warning("closing pool %s after an error: the index lists the %d sample(s) written before it",
                        self.out_dir, self.num_samples)
        self.close()

    def write(self, key: str, meta: dict, audio: np.ndarray | None = None, sample_rate: int = SAMPLE_RATE) -> None:
        """Add one sample.

        Args:
            key: unique within the pool; no '.', '/', whitespace (see `validate_key`).
            meta: JSON-serialisable metadata ("text", "language", "task", "messages", ...).
                The stored copy gets "duration" in seconds (rounded to 1 ms; 0.0 without
                audio); the caller's dict is not modified.
            audio: float samples, (frames,) mono or (frames, channels), nominally in [-1, 1];
                channels are averaged, the rate converted to 16 kHz with soxr, values clipped
                to [-1, 1] and stored as FLAC PCM_16. None for a text-only sample.
            sample_rate: rate of `audio` in Hz.

        Raises:
            ValueError: bad or duplicate key, non-JSON metadata, or unusable audio; the
                message names the key.
            RuntimeError: the writer is closed.
        """
        flac, duration = None, 0.0
        if audio is not None:
            self._check_sample(key, meta)  # the cheap checks before the encode
            flac, duration = encode_flac(audio, sample_rate, key)
        self.write_encoded(key, meta, flac, duration)

    def write_encoded(self, key: str, meta: dict, flac: bytes | None = None, duration: float = 0.0) -> None:
        """Add one sample whose audio is already 16 kHz mono FLAC (from `encode_flac`, e.g.
        in a worker process), or a text-only sample (`flac=None`). Same checks as `write`;
        `duration` (seconds) is stored in the metadata."""
        self._check_sample(key, meta)
        meta = dict(meta)
        members: list[tuple[str, bytes]] = []
        duration = round(float(duration), 3) if flac is not None else 0.0
        meta["duration"] = duration
        try:
            members.append((f"{key}.json", json.dumps(meta, ensure_ascii=False, allow_nan=False).encode("utf-8")))
        except (TypeError, ValueError) as e:
            raise ValueError(f"sample {key!r}: meta is not JSON-serialisable ({e})") from e
        if flac is not None:
            members.append((f"{key}.flac", flac))

        size = sum(_member_bytes(name, len(data)) for name, data in members)
        if self._tar is not None and (self._shard_samples >= self.max_samples
                                      or _final_size(self._tar.offset + size) > self.max_bytes):
            self._finish_shard()
        if self._tar is None:
            self._open_shard()
        if self._shard_samples == 0 and _final_size(size) > self.max_bytes:
            log.warning("sample %r (%d bytes) alone exceeds max_bytes=%d; it gets a shard of its own",
                        key, size, self.max_bytes)
        assert self._tar is not None
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)
        self._shard_samples += 1
        self._shard_duration += duration
        task = str(meta.get("task", "unknown"))
        self._tasks[task] = self._tasks.get(task, 0) + 1

    def _check_sample(self, key: str, meta: dict) -> None:
        if self._index is not None:
            raise RuntimeError(f"ShardWriter for {self.out_dir} is closed; cannot write sample {key!r}")
        validate_key(key)
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in pool {self.out_dir}")
        if not isinstance(meta, dict):
            raise ValueError(f"sample {key!r}: meta must be a dict, got {type(meta).__name__}")

    def _open_shard(self) -> None:
        path = self.out_dir / f"shard-{len(self._shards):06d}.tar.tmp"
        self._file = open(path, "wb")  # noqa: SIM115 (closed in _finish_shard)
        self._hasher = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hasher, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]
        self._shard_samples, self._shard_duration = 0, 0.0

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._file is not None and self._hasher is not None
        self._tar.close()
        self._file.close()
        name = f"shard-{len(self._shards):06d}.tar"
        os.replace(self.out_dir / (name + ".tmp"), self.out_dir / name)
        self._shards.append({"name": name, "num_samples": self._shard_samples,
                             "duration": round(self._shard_duration, 3), "bytes": self._hasher.size,
                             "sha256": self._hasher.sha256.hexdigest()})
        self._tar = self._file = self._hasher = None

    def close(self) -> dict:
        """Finish the last shard and write `index.json`; returns the index (idempotent)."""
        if self._index is not None:
            return self._index
        if self._tar is not None:
            self._finish_shard()
        index = {
            "format": INDEX_FORMAT,
            "sample_rate": SAMPLE_RATE,
            "num_samples": sum(s["num_samples"] for s in self._shards),
            "duration": round(sum(s["duration"] for s in self._shards), 3),
            "tasks": dict(sorted(self._tasks.items())),
            "shards": self._shards,
        }
        tmp = self.out_dir / (INDEX_NAME + ".tmp")
        tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.out_dir / INDEX_NAME)
        self._index = index
        log.info("wrote pool %s: %d samples, %.1f s of audio, %d shard(s)", self.out_dir,
                 index["num_samples"], index["duration"], len(self._shards))
        return index

