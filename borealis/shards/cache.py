"""The node-local shard cache: shards fetched from URLs, kept by sha256, verified on every use.

What: `ShardCache(cache_dir, max_gb)` stores each fetched shard as `<sha256>.tar`, the digest
its pool's index.json gives. `open(sha256, fetch)` returns the cached copy when its bytes
still hash to that digest; otherwise (absent, corrupt, cut short) it fetches the shard again
into a temporary file, renames it into place and evicts the least recently used shards past
the size cap.

Why: a shard fetched once is reused in later epochs (and by every pool or run naming the same
bytes: the digest is the key). Several DataLoader workers and ranks of one node share the
folder: a per-shard `flock` makes one of them fetch while the others wait and then reuse it,
renames are atomic, and a reader holds its file open, so an eviction by another process
(an unlink) never takes bytes from under it. Last use is recorded in the file's atime, set
explicitly, so it works on noatime mounts.

Cost: one sha256 pass per use (~1 GB/s on one core; the page cache usually serves it), one
folder listing per fetched shard for the size cap.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from borealis.shards.format import log

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def file_sha256(f: IO[bytes]) -> str:
    """The sha256 of an open file's bytes; leaves it at offset 0."""
    h = hashlib.sha256()
    f.seek(0)
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        h.update(chunk)
    f.seek(0)
    return h.hexdigest()


class ShardCache:
    """A folder of verified shards shared by the processes of one node.

    Args:
        cache_dir: the folder (created if missing); on a node-local disk.
        max_gb: size cap in GB (10^9 bytes); past it the least recently used shards are
            removed (never one just fetched).
    """

    def __init__(self, cache_dir: str | Path, max_gb: float = 100.0) -> None:
        if not isinstance(max_gb, (int, float)) or not max_gb > 0:
            raise ValueError(f"cache_max_gb must be > 0, got {max_gb!r}")
        self.dir = Path(cache_dir)
        self.max_bytes = int(max_gb * 1e9)
        try:
            (self.dir / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cache_dir {str(cache_dir)!r} cannot be created: {e}") from e

    def path(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.tar"

    def open(self, sha256: str, fetch: Callable[[IO[bytes]], object]) -> IO[bytes]:
        """An open, verified copy of the shard with digest `sha256`, at offset 0: the cached
        one, or fetched with `fetch(file)` (which writes the bytes and raises on failure)."""
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        path = self.path(sha256)
        with open(self.dir / "locks" / f"{sha256}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process fetches, the others wait and reuse
            try:
                f = open(path, "rb")  # noqa: SIM115 (returned open)
            except FileNotFoundError:
                f = None
            if f is not None:
                if file_sha256(f) == sha256:
                    self._touch(path)
                    return f
                f.close()
                log.warning("cached shard %s does not match its sha256 (corrupt or cut short); fetching it again",
                            path)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{sha256[:16]}-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w+b") as out:
                    fetch(out)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            f = open(path, "rb")  # noqa: SIM115 (returned open)
            self._touch(path)
        self.evict(keep=path)
        return f

    @staticmethod
    def _touch(path: Path) -> None:
        st = path.stat()
        os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))  # atime = last use

    def size(self) -> int:
        """Bytes of the cached shards."""
        return sum(p.stat().st_size for p in self.dir.glob("*.tar") if p.is_file())

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used shards until the cache fits its cap; returns them.
        A shard another process is fetching or checking (its lock held) is skipped."""
        entries = []
        for p in self.dir.glob("*.tar"):
            try:
                st = p.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            entries.append((st.st_atime_ns, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, p in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            with open(self.dir / "locks" / f"{p.stem}.lock", "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                p.unlink(missing_ok=True)
            total -= size
            removed.append(p)
        if removed:
            log.info("shard cache %s: evicted %d least recently used shard(s) to stay under %.3g GB", self.dir,
                     len(removed), self.max_bytes / 1e9)
        return removed
