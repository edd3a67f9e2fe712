"""Read tar shards: stream one shard's samples (training) or index them for random access (validation).

What: `iter_shard` streams the decoded samples of one shard in file order; with
`on_error=ReadErrors()` it skips and counts damaged samples and shards instead of raising.
`index_samples` reads only tar headers and `read_sample` one sample by seek, for map-style
access. Tar members are grouped into samples by webdataset's own `group_by_keys`, so a
shard's samples are exactly those `webdataset.WebDataset` reads: consecutive members that
share the name before the first dot, the extension lower-cased.

Around that grouping this module keeps what webdataset does not do, and why:
- listing the members (`_members`, instead of webdataset's `tar_file_iterator`): the
  end-of-archive check needs the tar stream's offset, which `tar_file_iterator` keeps to
  itself (tarfile ends quietly at a missing header, so a tar cut at a member boundary would
  read as a shorter valid one); and a reader of one part of a shard reads the bytes of its
  own samples only, after `group_by_keys` has taken each member, which `tar_file_iterator`
  (reading every member first) cannot;
- a key that comes back later in a shard (not adjacent) is an error; webdataset yields two
  samples with that key;
- a duplicate member drops its whole sample; webdataset's error handler can only drop the
  member and keeps the rest of the sample;
- counting: readers that share a shard (`part`/`parts`) count only the positions they own,
  so a damaged shard's lost samples add up over all readers to those of a single reader.
The error handler passed to `group_by_keys` is explicit (`_Scan.handler`): it re-raises
unless the reader was given a `ReadErrors`, which counts each skipped sample once.

Why: one bad file among thousands must not stop a training run, but skipping is chosen on
purpose and stays visible (see `ReadErrors`).

Cost: 5 s noisy clips stream at ~500 clips/s on one loaded CPU core (~2 ms each, soundfile
from memory). A reader of one part of a shard passes over all of its bytes (a tar is a
stream) and copies and decodes only its own samples. `index_samples` reads one 512-byte
header per member, `read_sample` one seek + read per member.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from borealis.shards.format import ShardError, decode_sample, log

_TAR_BLOCK = 512


@dataclass
class ReadErrors:
    """What a skipping shard reader dropped, counted as it reads (`iter_shard(path, on_error=...)`).

    What: four counters, and one warning per damaged sample or shard naming it (when the same
    object meets it again, e.g. a pool read in a loop, the warning goes to debug: no flood).
    Why: one bad file among thousands must not stop a training run, but skipping is chosen on
    purpose and stays visible: DataLoader workers carry these counts in every batch
    (`batch["data_errors"]`) and the LightningModule logs their totals over all ranks.

    Attributes:
        skipped_samples: samples dropped one at a time while their shard read on: a member
            that does not decode (corrupt FLAC, invalid JSON), a duplicate key or member, or
            metadata that cannot be trained on (counted by the caller with `skip`).
        lost_samples: samples never reached because their shard stopped early (truncated tar,
            corrupt header) or could not be opened: the shard's index.json count minus the
            samples before the break; without a count, only the sample at the break.
        unreadable_shards: shards that could not be opened at all (missing, permission denied,
            not a tar).
        damaged_shards: shards read up to a truncation or a corrupt header.

    Readers sharing a shard (`iter_shard(part=, parts=)`) count only their own samples, and
    the shard only in part 0, so their counts add up to those of a single reader.
    """

    skipped_samples: int = 0
    lost_samples: int = 0
    unreadable_shards: int = 0
    damaged_shards: int = 0
    _warned: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    names = ("skipped_samples", "lost_samples", "unreadable_shards", "damaged_shards")  # order of `counts()`

    def counts(self) -> tuple[int, int, int, int]:
        """The counters, in the order of `ReadErrors.names`."""
        return self.skipped_samples, self.lost_samples, self.unreadable_shards, self.damaged_shards

    def skip(self, error: ShardError) -> None:
        """Count one skipped sample and warn, naming its shard and key (`error`'s message)."""
        self.skipped_samples += 1
        self.warn(f"{error.shard}:{error.key}", f"skipping sample: {error}")

    def warn(self, what: str, message: str) -> None:
        """Log `message` as a warning the first time this object warns about `what` (a shard,
        or shard:key), then at debug level."""
        if what in self._warned:
            log.debug("%s", message)
            return
        self._warned.add(what)
        log.warning("%s", message)



def _owned(start: int, stop: int, part: int, parts: int) -> int:
    """How many positions i in [start, stop) a reader of `part` owns (i % parts == part)."""
    return len(range(start + (part - start) % parts, stop, parts))


def _check_end(f: Any, offset: int) -> None:
    """Raise tarfile.ReadError unless the block at `offset`, where tarfile stopped, is the
    end-of-archive block. tarfile ends quietly at a missing or corrupt header past the first
    one, so a tar cut at a member boundary (e.g. between a sample's .json and its .flac)
    otherwise reads as a shorter, valid tar. One seek + one 512-byte read per shard."""
    f.seek(offset)
    if f.read(_TAR_BLOCK) != bytes(_TAR_BLOCK):
        raise tarfile.ReadError(f"no end-of-archive block at byte {offset}: truncated, or a header is corrupt")



@dataclass
class _Scan:
    """What the stages of one pass over a shard share: where it stands and what it dropped.

    `_members` ends each group with webdataset's end-of-group marker before the next key's
    first member, so when a member is read, `done` (samples grouped so far) is the position
    of the sample it belongs to, and `key`/`name` are that member's key and name.
    """

    shard: str
    on_error: ReadErrors | None = None
    part: int = 0
    parts: int = 1
    key: str | None = None
    name: str | None = None
    done: int = 0
    seen: set[str] = field(default_factory=set)  # keys of the samples begun so far
    dropped: set[int] = field(default_factory=set)  # positions already reported

    def keeps(self, position: int) -> bool:
        """Whether this reader reads the sample at `position`: it owns it and has not dropped it."""
        return position % self.parts == self.part and position not in self.dropped

    def drop(self, error: ShardError) -> None:
        """Raise `error`, or (skipping) count the sample being read as skipped, once."""
        if self.on_error is None:
            raise error
        self.dropped.add(self.done)
        self.on_error.skip(error)

    def begin(self, key: str) -> None:
        """A sample begins: a key met earlier in the shard drops it."""
        self.key = key
        if self.keeps(self.done) and key in self.seen:
            self.drop(ShardError("key appears twice in the shard (members not adjacent)", shard=self.shard, key=key))
        self.seen.add(key)

    def handler(self, exn: Exception) -> bool:
        """`group_by_keys`' error handler. Its one error here is a duplicate member, which drops
        the sample being read when this reader reads it; anything else is re-raised."""
        if not isinstance(exn, ValueError):
            raise exn
        if self.keeps(self.done):
            self.drop(ShardError(f"duplicate member {self.name!r}", shard=self.shard, key=self.key))
        return True


def _members(scan: _Scan, tar: tarfile.TarFile, f: Any, *, read: bool, base_plus_ext: Callable) -> Iterator[dict]:
    """The regular members of `tar` that have a key, as webdataset's {"fname", "data", "__url__"},
    with an empty dict (webdataset's end-of-group marker) before each new key, so the sample
    before it goes out before anything of the next is read. `data` is (data offset, size), or
    with `read` (a tar opened as a stream) a list that receives the bytes once `group_by_keys`
    has taken the member, for the samples this reader keeps. Ends with the end-of-archive
    check on `f`, the file under `tar`."""
    for member in tar:
        if not member.isreg():
            continue
        key, _ = base_plus_ext(member.name)
        if key is None:
            log.debug("%s: skipping member %r without an extension", scan.shard, member.name)
            continue
        if key != scan.key:
            yield {}
            scan.begin(key)
        scan.name = member.name
        if not read:
            yield {"fname": member.name, "data": (member.offset_data, member.size), "__url__": scan.shard}
            continue
        data: list[bytes] = []
        yield {"fname": member.name, "data": data, "__url__": scan.shard}
        if scan.keeps(scan.done):
            data.append(tar.extractfile(member).read())  # type: ignore[union-attr]
        tar.members = []  # tarfile keeps every TarInfo otherwise
    _check_end(f, tar.offset)


def _samples(scan: _Scan, tar: tarfile.TarFile, f: Any, *, read: bool) -> Iterator[dict]:
    """The samples this reader keeps, grouped by webdataset's `group_by_keys`, in file order:
    {"__key__", extension: bytes (`read`) or (data offset, size), ...}."""
    # Imported here: the webdataset package imports torch (seconds), which writing and
    # checking pools (`borealis shards ...`) do not need.
    from webdataset.tariterators import base_plus_ext, group_by_keys

    members = _members(scan, tar, f, read=read, base_plus_ext=base_plus_ext)
    for raw in group_by_keys(members, handler=scan.handler):
        position = scan.done
        scan.done += 1
        if scan.keeps(position):
            yield {k: v if k == "__key__" or not read else v[0] for k, v in raw.items() if k != "__url__"}


def _decoded(raw: dict, shard: str, on_error: ReadErrors | None) -> dict | None:
    try:
        return decode_sample(raw, shard)
    except ShardError as e:
        if on_error is None:
            raise
        on_error.skip(e)
        return None


def _open(path: str | Path, fetcher: Any, entry: dict | None) -> tuple[Any, str]:
    """(a binary file at offset 0, the shard's name): a local file, or for a URL a local,
    verified copy fetched against the sha256 and size of its index.json entry (`entry`, else
    the one `list_shards` read; `remote.ShardFetcher.open`)."""
    from borealis.shards import remote

    if remote.is_url(path):
        url = str(path)
        entry = entry or remote.index_entry(url) or {}
        fetcher = fetcher or remote.default_fetcher()
        return fetcher.open(url, sha256=entry.get("sha256"), size=entry.get("bytes")), url
    local = remote.local_path(path)
    return open(local, "rb"), str(path)  # noqa: SIM115 (the caller closes it)


def prefetch(executor: Executor, path: str | Path, *, fetcher: Any = None, entry: dict | None = None) -> Future | None:
    """For a URL, start fetching it on `executor` (the next shard while the current one is
    decoded) and return the future for `iter_shard(fetched=)`; None for a local path."""
    from borealis.shards import remote

    if not remote.is_url(path):
        return None
    return executor.submit(lambda: _open(path, fetcher, entry)[0])


def iter_shard(path: str | Path, *, on_error: ReadErrors | None = None, expected: int | None = None,
               part: int = 0, parts: int = 1, fetcher: Any = None, entry: dict | None = None,
               fetched: Future | None = None) -> Iterator[dict]:
    """Stream the decoded samples of one tar shard, in file order (see `decode_sample`).

    Members are grouped into samples by webdataset's `group_by_keys` (consecutive members
    sharing the name before the first dot). Reads the tar front to back once, then checks
    that it ends with an end-of-archive block (a tar cut at a member boundary otherwise parses
    as a valid, shorter one whose last sample may lack its audio).

    Args:
        path: the shard.
        on_error: None (the default) raises at the first problem. A `ReadErrors` skips
            instead, warns naming the shard (and key) and counts there: a sample that does not
            decode is dropped and the shard read on; a shard that cannot be opened, or stops
            at a truncation or a corrupt header, ends after the samples before the break (the
            sample being read at the break is lost with the rest).
        expected: the shard's sample count from index.json (`shard_sample_counts`), so a
            skipping reader can count and report the samples a damaged shard lost.
        part: with `parts`, read only the samples at positions i (in file order) with
            i % parts == part, for readers sharing a shard; the others are not decoded.
            Positions count damaged samples too, so the parts stay disjoint whatever is skipped.
        parts: the number of readers sharing the shard.
        fetcher: for a URL (`remote.is_url`), the `remote.ShardFetcher` that fetches it (None:
            the process default). The shard is fetched whole to a local file and verified
            against its index.json sha256 and size before its first sample is decoded; one
            that cannot be fetched after the retries is skipped like a local shard that
            cannot be opened, counted as damaged when bytes arrived before the last failure
            (a stream that broke or stalled mid-shard, a checksum mismatch), else unreadable.
        entry: for a URL, its index.json entry (`format.shard_entries`), whose sha256 and
            size the fetched bytes must match (None: the entry `list_shards` read, if any).
        fetched: for a URL, a future of its fetch started ahead (`prefetch`), used instead
            of fetching it now; its FetchError counts as the fetch's own would.

    Raises:
        ValueError: `part` is not in [0, parts).
        FileNotFoundError: the shard does not exist (other OSErrors of `open` pass too, and
            `remote.FetchError` for a URL); only with on_error=None.
        ShardError: a truncated or corrupt tar, a key that appears twice, or a sample that
            does not decode; the message names the shard and the key. Only with on_error=None.
    """
    if not 0 <= part < parts:
        raise ValueError(f"iter_shard: part must be in [0, parts), got part={part}, parts={parts}")
    shard = str(path)
    try:
        f, shard = (fetched.result(), str(path)) if fetched is not None else _open(path, fetcher, entry)
        try:
            stream = tarfile.open(fileobj=f, mode="r|")
        except BaseException:
            f.close()
            raise
    except (OSError, tarfile.TarError) as e:
        if on_error is None:
            if isinstance(e, OSError):
                raise
            raise ShardError(f"not a readable tar ({type(e).__name__}: {e})", shard=shard) from e
        lost = _owned(0, expected or 0, part, parts)
        broken = getattr(e, "partial", False)  # a fetch that broke mid-shard: damaged, not unreadable
        # readers sharing a shard count it once
        on_error.damaged_shards += int(part == 0 and broken)
        on_error.unreadable_shards += int(part == 0 and not broken)
        on_error.lost_samples += lost
        on_error.warn(shard, f"skipping shard {shard}: cannot read it ({type(e).__name__}: {e}); "
                      + (f"{lost} sample(s) lost" if expected is not None else "its samples are lost"))
        return
    scan = _Scan(shard, on_error, part, parts)
    try:
        with f, stream:
            for raw in _samples(scan, stream, f, read=True):
                if (sample := _decoded(raw, shard, on_error)) is not None:
                    yield sample
    except (tarfile.TarError, OSError, EOFError) as e:
        if on_error is None:
            raise ShardError(f"tar is truncated or corrupt near this sample ({type(e).__name__}: {e})",
                             shard=shard, key=scan.key) from e
        _count_break(on_error, scan, expected, e)


def _count_break(on_error: ReadErrors, scan: _Scan, expected: int | None, e: Exception) -> None:
    """Count and report a shard that stopped at a truncation or a corrupt header: the sample
    being read and the rest are lost (those this reader owns)."""
    done, part, parts, shard, key = scan.done, scan.part, scan.parts, scan.shard, scan.key
    lost = _owned(done, expected, part, parts) if expected is not None else _owned(done, done + 1, part, parts)
    on_error.damaged_shards += int(part == 0)
    on_error.lost_samples += lost
    share = f" (this reader's part {part + 1} of {parts})" if parts > 1 else ""
    total = f"{done} of {expected}" if expected is not None else f"{done} (of an unknown number)"
    on_error.warn(shard, f"shard {shard} ended after {total} samples, at sample {key!r} "
                         f"({type(e).__name__}: {e}): {lost} sample(s) lost{share}")


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's members lie in a tar, for random access with `read_sample`.

    Attributes:
        key: the sample key.
        shard: the tar path (as given to `index_samples`).
        members: extension -> (data offset, size in bytes) in the tar.
    """

    key: str
    shard: str
    members: dict[str, tuple[int, int]] = field(hash=False)


def index_samples(paths: Sequence[str | Path], *, fetcher: Any = None) -> list[SampleRef]:
    """Scan tar headers (no data is read) and return every sample's location, in file order.

    A URL is first fetched to a verified local copy (`remote.ShardFetcher.local_copy`: the
    node's cache, or this process's scratch folder), which the refs then point at.

    Raises:
        FileNotFoundError: a shard does not exist.
        OSError (`remote.FetchError`): a URL could not be fetched after the retries.
        ShardError: a corrupt or truncated tar (also one cut at a member boundary), a key that
            appears twice in one shard, a duplicate member, or a sample without `.json`.
    """
    from borealis.shards import remote

    refs: list[SampleRef] = []
    for path in paths:
        if remote.is_url(path):
            entry = remote.index_entry(str(path)) or {}
            path = (fetcher or remote.default_fetcher()).local_copy(str(path), sha256=entry.get("sha256"),
                                                                    size=entry.get("bytes"))
        path = remote.local_path(path)
        shard = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"shard {shard} does not exist")
        scan = _Scan(shard)
        groups: list[tuple[str, dict[str, tuple[int, int]]]] = []
        try:
            with tarfile.open(path, mode="r:") as tf:
                for raw in _samples(scan, tf, tf.fileobj, read=False):
                    groups.append((raw["__key__"], {k: v for k, v in raw.items() if k != "__key__"}))
        except tarfile.TarError as e:
            raise ShardError(f"unreadable tar ({type(e).__name__}: {e})", shard=shard, key=scan.key) from e
        for key, members in groups:
            if "json" not in members:
                raise ShardError(f"no .json member (has: {', '.join(sorted(members))})", shard=shard, key=key)
            refs.append(SampleRef(key, shard, members))
    return refs


def read_sample(ref: SampleRef) -> dict:
    """Read and decode one sample located by `index_samples`; same output as `iter_shard`."""
    raw: dict[str, Any] = {"__key__": ref.key}
    with open(ref.shard, "rb") as f:
        for ext, (offset, size) in ref.members.items():
            f.seek(offset)
            raw[ext] = f.read(size)
            if len(raw[ext]) != size:
                raise ShardError(f".{ext} member truncated: read {len(raw[ext])} of {size} bytes",
                                 shard=ref.shard, key=ref.key)
    return decode_sample(raw, ref.shard)
