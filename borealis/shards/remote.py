"""Shards at URLs: s3://, gs://, http(s)://, any fsspec protocol, and webdataset's `pipe:CMD`.

What: `is_url` tells a URL from a local path (`file://` URLs are local paths); `list_remote`
lists a URL pool from its `index.json` (or a single `.tar` URL, a glob on a listing protocol,
a brace list); `ShardFetcher` fetches one shard to a local, sha256-verified file with bounded
retries, exponential backoff and a stall timeout, through the node's shared cache
(`shards.cache.ShardCache`) or a private temporary file; `publish_pool` writes a pool built
locally to a URL, `index.json` last; `mirror_pool` copies one to a local folder to check it.

Why: a corpus the size of IT-Fresh lives in object storage. Every byte goes through fsspec
(cloud back-ends are optional extras: `pip install borealis[s3]`, `borealis[gs]`) or, for
`pipe:`, the user's command; nothing here speaks HTTP or S3 itself. A shard is fetched whole
and verified before its first sample is decoded, so a stream that breaks mid-shard is
retried from the start of that shard and, past the retries, counted as damaged with all its
index.json samples lost: never silently shortened. The local file is then read by the same
code as a local pool, so damage accounting and exact mid-epoch resume are unchanged.

Timeouts: a transfer that delivers no byte for `timeout` seconds is abandoned (the copy runs
in a watchdogged thread, so this holds for every protocol; a `pipe:` command is killed), and
the protocol's own connect/read timeouts are set to the same value for http(s) and s3.

Cost: one extra local write + read of each shard (the page cache usually serves the read),
and with a cache one sha256 pass per use (~1 GB/s). On loopback HTTP, reading and decoding
stays within the figure in BENCHMARKS.md of a local pool (`tools/bench_remote.py`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from borealis.shards.format import INDEX_NAME, log

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_CHUNK = 1 << 20


class FetchError(OSError):
    """A shard or index could not be fetched after the retries.

    Attributes:
        url: what was fetched.
        partial: the last attempt's stream began and then broke, stalled or delivered the
            wrong bytes (counted as a damaged shard), as opposed to a shard that could not be
            opened at all (connection refused, HTTP 5xx: unreadable).
        missing: the source said the object does not exist (not retried).
    """

    def __init__(self, url: str, problem: str, *, partial: bool = False, missing: bool = False) -> None:
        super().__init__(f"{url}: {problem}")
        self.url, self.problem, self.partial, self.missing = url, problem, partial, missing


def is_url(spec: Any) -> bool:
    """Whether `spec` names remote shards: `pipe:CMD` or `PROTOCOL://...` other than `file://`."""
    if not isinstance(spec, str):
        return False
    if spec.startswith("pipe:"):
        return True
    m = _SCHEME.match(spec)
    return bool(m) and m.group(1).lower() != "file"


def local_path(spec: str | Path) -> str | Path:
    """`file://PATH` as PATH; anything else unchanged."""
    if isinstance(spec, str) and spec.lower().startswith("file://"):
        return spec[len("file://"):]
    return spec


def protocol(url: str) -> str:
    """The fsspec protocol of `url` ("pipe" for `pipe:`)."""
    if url.startswith("pipe:"):
        return "pipe"
    m = _SCHEME.match(url)
    if not m:
        raise ValueError(f"{url!r} is not a URL (expected PROTOCOL://... or pipe:CMD)")
    return m.group(1).lower()


def join(base: str, name: str) -> str:
    """The URL of file `name` of the pool at `base`: `pipe:` commands substitute `{name}`."""
    if base.startswith("pipe:"):
        return base.replace("{name}", name)
    return base.rstrip("/") + "/" + name


@dataclass
class RemoteSettings:
    """How shards at URLs are fetched (`data.remote`; `borealis shards` uses the defaults).

    Args:
        retries: further attempts after a failed fetch (connection error, HTTP 5xx, a stream
            that breaks or stalls, a sha256 mismatch), each from the start of the shard.
            Past them the shard is counted as unreadable (nothing arrived) or damaged, with
            all its index.json samples lost. A missing object (404, NoSuchKey) is not retried.
        timeout: seconds without a byte (or a connection) before an attempt is abandoned.
        backoff: seconds before the first retry, doubled for each further one (at most 60).
        storage_options: fsspec options per protocol, e.g.
            {"s3": {"endpoint_url": "https://minio:9000", "anon": false}}; credentials come from
            the usual places (environment, ~/.aws, metadata server) when not given here.
    """

    retries: int = 3
    timeout: float = 60.0
    backoff: float = 1.0
    storage_options: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.retries, int) or self.retries < 0:
            problems.append(f"retries must be an int >= 0, got {self.retries!r}")
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            problems.append(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if not isinstance(self.backoff, (int, float)) or self.backoff < 0:
            problems.append(f"backoff must be >= 0 seconds, got {self.backoff!r}")
        if not isinstance(self.storage_options, dict) or not all(
                isinstance(v, dict) for v in self.storage_options.values()):
            problems.append("storage_options must map a protocol to a dict of fsspec options, got "
                            f"{self.storage_options!r}")
        if problems:
            raise ValueError("remote settings: " + "; ".join(problems))

    def fs_options(self, proto: str) -> dict:
        """fsspec options for `proto`: the protocol's own timeouts set to `timeout` (its own
        retries off: `ShardFetcher` retries), then the user's `storage_options[proto]`."""
        opts: dict[str, Any] = {}
        if proto in ("http", "https"):
            import aiohttp

            opts["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, connect=self.timeout,
                                                                      sock_read=self.timeout)}
        elif proto in ("s3", "s3a"):
            opts["config_kwargs"] = {"connect_timeout": self.timeout, "read_timeout": self.timeout,
                                     "retries": {"max_attempts": 1}}
        return {**opts, **self.storage_options.get(proto, {})}


class _Source:
    """One attempt at reading a URL as a byte stream: fsspec, or a `pipe:` command's stdout."""

    def __init__(self, url: str, settings: RemoteSettings) -> None:
        self.url, self.proc, self.f = url, None, None
        if url.startswith("pipe:"):
            self.proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
            self.f = self.proc.stdout
            return
        import fsspec

        proto = protocol(url)
        fs, path = fsspec.core.url_to_fs(url, **settings.fs_options(proto))
        # block_size=0: one streaming GET over http(s) (no range requests, no size probe)
        self.f = fs.open(path, "rb", block_size=0) if proto in ("http", "https") else fs.open(path, "rb")

    def read(self, n: int) -> bytes:
        return self.f.read(n)  # type: ignore[union-attr]

    def finish(self) -> None:
        """After the last byte: a `pipe:` command must have exited 0."""
        if self.proc is not None:
            err = self.proc.stderr.read().decode(errors="replace").strip()  # type: ignore[union-attr]
            if self.proc.wait() != 0:
                raise OSError(f"command exited with status {self.proc.returncode}: {err[-300:] or 'no stderr'}")

    def cancel(self) -> None:
        """From another thread, unblock a read that stalls: kill a `pipe:` command's process
        group (a shell's children hold its stdout too); close an fsspec stream in the
        background (a close can wait on the blocked read)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
        elif self.f is not None:
            threading.Thread(target=self.abort, daemon=True).start()

    def abort(self) -> None:
        """Close the stream (kill a `pipe:` command still running); safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
        try:
            if self.f is not None:
                self.f.close()
        except Exception:  # noqa: BLE001 (a half-dead connection may fail to close; it is dropped anyway)
            pass
        if self.proc is not None:
            self.proc.wait()


def _copy(url: str, out: IO[bytes], settings: RemoteSettings, state: dict) -> tuple[int, str]:
    """Copy `url` to `out` once, abandoning it after `settings.timeout` seconds without a byte.
    Returns (bytes, sha256); `state["opened"]` says whether the source answered (the stream
    began) before a failure. The copy runs in a thread this function watches, so no
    protocol's blocking read can hang the caller."""
    state.update({"bytes": 0, "last": time.monotonic(), "error": None, "sha": hashlib.sha256(), "source": None,
                  "cancelled": False, "opened": False})

    def run() -> None:
        source = None
        try:
            state["source"] = source = _Source(url, settings)
            # fsspec answers on open (status and headers); a command's first byte is its answer
            state["opened"], state["last"] = source.proc is None, time.monotonic()
            while not state["cancelled"]:
                chunk = source.read(_CHUNK)
                if not chunk:
                    source.finish()
                    return
                out.write(chunk)
                state["opened"] = True
                state["sha"].update(chunk)
                state["bytes"] += len(chunk)
                state["last"] = time.monotonic()
        except BaseException as e:  # noqa: BLE001 (handed to the watching thread)
            state["error"] = e
        finally:
            if source is not None:
                source.abort()

    thread = threading.Thread(target=run, name=f"fetch {url}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(min(0.05, settings.timeout))
        if thread.is_alive() and time.monotonic() - state["last"] > settings.timeout:
            state["cancelled"] = True
            if state["source"] is not None:
                state["source"].cancel()
            thread.join(1.0)  # a thread still blocked after the abort is left behind (daemon)
            raise TimeoutError(f"no data for {settings.timeout:g} s after {state['bytes']} bytes")
    if state["error"] is not None:
        raise state["error"]
    return state["bytes"], state["sha"].hexdigest()


def _missing(e: BaseException) -> bool:
    """Whether the source said the object is not there (or not ours): not worth retrying.
    fsspec's http back-end reports an unreachable host as FileNotFoundError too, with the
    connection error as its cause: that one is retried."""
    if not isinstance(e, (FileNotFoundError, PermissionError)):
        return False
    cause = e.__cause__
    return cause is None or isinstance(cause, (FileNotFoundError, PermissionError)) or \
        getattr(cause, "status", None) in (401, 403, 404)


def _problem(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().rstrip(":")


def fetch_to(url: str, out: IO[bytes], settings: RemoteSettings, *, sha256: str | None = None,
             size: int | None = None) -> int:
    """Write the bytes of `url` to `out` (truncated before each attempt), verified against
    `sha256` and `size` when given, with `settings.retries` retries; returns the size.

    Raises:
        FetchError: naming the URL, the attempts and the last problem; `missing` when the
            source says it does not exist, `partial` when bytes arrived before the last failure.
    """
    last: BaseException | None = None
    partial = False
    for attempt in range(settings.retries + 1):
        if attempt:
            time.sleep(min(settings.backoff * 2 ** (attempt - 1), 60.0))
        out.seek(0)
        out.truncate()
        state: dict = {}
        try:
            n, digest = _copy(url, out, settings, state)
            if size is not None and n != size:
                raise OSError(f"got {n} bytes, {INDEX_NAME} says {size} (stream cut short?)")
            if sha256 is not None and digest != sha256:
                raise OSError(f"sha256 {digest} != {INDEX_NAME}'s {sha256} (bytes altered or cut short)")
            out.flush()
            return n
        except Exception as e:  # noqa: BLE001 (every transport has its own errors; all are retried)
            if _missing(e):
                raise FetchError(url, f"does not exist ({_problem(e)})", missing=True) from e
            partial = state.get("opened", False) or out.tell() > 0  # the stream began, then broke
            last = e
            log.info("fetching %s failed (attempt %d of %d): %s", url, attempt + 1, settings.retries + 1,
                     _problem(e))
    raise FetchError(url, f"failed {settings.retries + 1} time(s); last: {_problem(last)}", partial=partial)


def read_url(url: str, settings: RemoteSettings) -> bytes:
    """The bytes of a small object (an index.json), with retries."""
    with tempfile.TemporaryFile() as f:
        fetch_to(url, f, settings)
        f.seek(0)
        return f.read()


class ShardFetcher:
    """Fetches shards at URLs to verified local files: through the node's cache
    (`cache_dir`), or into private temporary files removed once closed.

    Args:
        settings: retries, timeouts, fsspec options.
        cache_dir: the node-local shard cache shared by all workers and ranks (None: none).
        cache_max_gb: the cache's size cap; the least recently used shards are evicted.
    """

    def __init__(self, settings: RemoteSettings | None = None, cache_dir: str | Path | None = None,
                 cache_max_gb: float = 100.0) -> None:
        from borealis.shards.cache import ShardCache

        self.settings = settings or RemoteSettings()
        self.cache = ShardCache(cache_dir, cache_max_gb) if cache_dir is not None else None
        self._scratch: str | None = None
        self._owner = os.getpid()

    def open(self, url: str, *, sha256: str | None = None, size: int | None = None) -> IO[bytes]:
        """A local file object holding the verified bytes of shard `url`, at offset 0.

        With a cache and a sha256, the cached copy is used when its sha256 still matches (a
        corrupt or partial one is fetched again). Raises FetchError (see `fetch_to`).
        """
        if self.cache is not None and sha256 is not None:
            return self.cache.open(sha256, lambda f: fetch_to(url, f, self.settings, sha256=sha256, size=size))
        f = tempfile.TemporaryFile()  # noqa: SIM115 (returned open; unlinked already)
        try:
            fetch_to(url, f, self.settings, sha256=sha256, size=size)
        except BaseException:
            f.close()
            raise
        f.seek(0)
        return f

    def local_copy(self, url: str, *, sha256: str | None = None, size: int | None = None) -> Path:
        """A local path holding the verified bytes of `url`, for random access (benchmarks,
        noise pools, verification): the cached copy, or a file in this process's scratch
        folder (removed when the process exits)."""
        if self.cache is not None and sha256 is not None:
            with self.open(url, sha256=sha256, size=size) as f:
                return Path(f.name)
        if self._scratch is None or not os.path.isdir(self._scratch):
            self._scratch = tempfile.mkdtemp(prefix="borealis-shards-")
            import atexit

            scratch, owner = self._scratch, os.getpid()
            atexit.register(lambda: os.getpid() == owner and shutil.rmtree(scratch, ignore_errors=True))
        name = hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + re.sub(r"[^A-Za-z0-9_.-]", "_", url)[-80:]
        path = Path(self._scratch) / name
        if not path.is_file():
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                fetch_to(url, f, self.settings, sha256=sha256, size=size)
            os.replace(tmp, path)
        return path


_default = ShardFetcher()


def configure(fetcher: ShardFetcher) -> None:
    """Make `fetcher` this process's default (the DataModule does; workers inherit it, and
    the training stream sets it again in each worker)."""
    global _default
    _default = fetcher


def default_fetcher() -> ShardFetcher:
    """This process's fetcher (`configure`), used wherever none is passed."""
    return _default


# ----------------------------------------------------------------------------- listing
# Index entries of the shards `list_remote` listed, by URL: a shard URL alone (a `pipe:` command
# above all) does not say which index lists it.
_entries: dict[str, dict] = {}


def index_entry(url: str) -> dict | None:
    """The index.json entry (name, num_samples, sha256, bytes) of a shard `list_remote` listed."""
    return _entries.get(url)


def read_remote_index(pool: str, settings: RemoteSettings | None = None) -> dict:
    """Fetch and check the `index.json` of the pool at URL `pool`.

    Raises:
        FileNotFoundError: no index.json there; FetchError: unreachable after the retries;
        ValueError: an invalid index (see `format.read_index`).
    """
    from borealis.shards.format import parse_index

    url = pool if pool.endswith(INDEX_NAME) and not pool.startswith("pipe:") else join(pool, INDEX_NAME)
    try:
        data = read_url(url, settings or default_fetcher().settings)
    except FetchError as e:
        if e.missing:
            raise FileNotFoundError(f"no shard index at {url} (expected {INDEX_NAME} written by "
                                    "`borealis shards build`)") from e
        raise
    return parse_index(data, url)


def list_remote(spec: str, settings: RemoteSettings | None = None) -> list[str]:
    """The shard URLs of a URL pool spec, in index order.

    `spec` is a pool's URL (its index.json lists the shards), a `.tar` URL, a glob on a
    protocol that lists (s3, gs, ...), a brace list (`.../shard-{000000..000009}.tar`), or
    `pipe:CMD` where CMD writes `{name}` of the pool to stdout (e.g.
    `pipe:aws s3 cp s3://bucket/pool/{name} -`); a `pipe:` without `{name}` is one shard.

    Raises:
        FileNotFoundError: nothing there (no index.json at a pool URL, no glob match).
        FetchError: the index is unreachable after the retries. ValueError: a bad URL.
    """
    settings = settings or default_fetcher().settings
    proto = protocol(spec)
    if proto == "pipe":
        if "{name}" not in spec:
            return _expand(spec)
        index = read_remote_index(spec, settings)
        urls = [join(spec, s["name"]) for s in index["shards"]]
        _entries.update(zip(urls, index["shards"]))
        return urls
    if re.search(r"\{[^{}]*(,|\.\.)[^{}]*\}", spec):
        return _expand(spec)
    if spec.endswith(".tar"):
        return [spec]
    import fsspec

    if any(c in spec.split("://", 1)[1] for c in "*?["):
        fs, path = fsspec.core.url_to_fs(spec, **settings.fs_options(proto))
        urls = sorted(fs.unstrip_protocol(p) for p in fs.glob(path) if str(p).endswith(".tar"))
        if not urls:
            raise FileNotFoundError(f"no shards match {spec!r}")
        return urls
    index = read_remote_index(spec, settings)
    urls = [join(spec, s["name"]) for s in index["shards"]]
    if not urls:
        raise FileNotFoundError(f"no shards in pool {spec!r} (its {INDEX_NAME} lists none)")
    _entries.update(zip(urls, index["shards"]))
    return urls


def _expand(spec: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(spec))


# ----------------------------------------------------------------------------- writing
def publish_pool(local: Path, url: str, settings: RemoteSettings | None = None) -> list[str]:
    """Copy the pool(s) below the folder `local` to `url` (same relative paths) through fsspec,
    so that a reader never pairs an index.json with shards it does not list: an old pool's
    `index.json` there is removed first, then every other file is written, then each new
    `index.json`, then the old pool's shards the new one does not have are removed. Each
    write is retried. Returns the URLs written.

    Raises:
        FetchError: a file could not be written after the retries.
        ValueError: `url` is a `pipe:` command (nothing can be written through it).
    """
    settings = settings or default_fetcher().settings
    proto = protocol(url)
    if proto == "pipe":
        raise ValueError(f"cannot write a pool to {url!r}: pipe: URLs are read-only")
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **settings.fs_options(proto))
    root = root.rstrip("/")
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == INDEX_NAME)  # stable: the indexes last
    folders = sorted({p.parent.relative_to(local).as_posix() for p in files if p.name == INDEX_NAME})
    old: list[str] = []
    for folder in folders:
        base = root if folder == "." else f"{root}/{folder}"
        if fs.exists(f"{base}/{INDEX_NAME}"):
            log.warning("%s already holds a pool; replacing it (its %s goes first)", url, INDEX_NAME)
            old += fs.glob(f"{base}/shard-*.tar")
            _retry(lambda b=base: fs.rm_file(f"{b}/{INDEX_NAME}"), f"{url} (old {INDEX_NAME})", settings)
    written, new = [], set()
    for p in files:
        rel = p.relative_to(local).as_posix()
        dest = f"{root}/{rel}"
        _retry(lambda p=p, dest=dest: fs.put_file(str(p), dest), f"{url.rstrip('/')}/{rel}", settings)
        written.append(f"{url.rstrip('/')}/{rel}")
        new.add(fs._strip_protocol(dest))
    for stale in old:
        if fs._strip_protocol(stale) not in new:
            _retry(lambda s=stale: fs.rm_file(s), stale, settings)
    return written


def _retry(action: Callable[[], Any], what: str, settings: RemoteSettings) -> None:
    for attempt in range(settings.retries + 1):
        if attempt:
            time.sleep(min(settings.backoff * 2 ** (attempt - 1), 60.0))
        try:
            action()
            return
        except Exception as e:  # noqa: BLE001 (every transport has its own errors)
            last = e
            log.info("writing %s failed (attempt %d of %d): %s", what, attempt + 1, settings.retries + 1, _problem(e))
    raise FetchError(what, f"could not be written after {settings.retries + 1} attempt(s); last: {_problem(last)}")


def url_exists(url: str, settings: RemoteSettings | None = None) -> bool:
    """Whether an object exists at `url` (`pipe:`: whether the command succeeds)."""
    settings = settings or default_fetcher().settings
    try:
        read_url(url, RemoteSettings(0, settings.timeout, 0.0, settings.storage_options))
        return True
    except FetchError:
        return False


def mirror_pool(url: str, dest: Path, settings: RemoteSettings | None = None) -> list[str]:
    """Copy the pool at `url` to the folder `dest` as it is there, for the pool verifier: its
    `index.json` and `build_report.json` (when present) and every shard the index lists,
    none checked against the index (the verifier does that). A shard that cannot be fetched
    after the retries is left out, so the verifier reports it missing; returns those problems.

    Raises:
        FileNotFoundError: no index.json at `url`; FetchError: it is unreachable.
    """
    from borealis.shards.format import REPORT_NAME, parse_index

    settings = settings or default_fetcher().settings
    dest.mkdir(parents=True, exist_ok=True)
    index_url = join(url, INDEX_NAME)
    try:
        data = read_url(index_url, settings)
    except FetchError as e:
        if e.missing:
            raise FileNotFoundError(f"no shard index at {index_url}") from e
        raise
    (dest / INDEX_NAME).write_bytes(data)
    try:
        (dest / REPORT_NAME).write_bytes(read_url(join(url, REPORT_NAME), RemoteSettings(
            0, settings.timeout, 0.0, settings.storage_options)))
    except FetchError:
        pass  # optional
    try:
        names = [s["name"] for s in parse_index(data, index_url)["shards"]]
    except ValueError:
        return []  # the verifier reports the invalid index
    failed = []
    for name in names:
        with open(dest / name, "wb") as f:
            try:
                fetch_to(join(url, name), f, settings)
                continue
            except FetchError as e:
                failed.append(f"{name}: {e.problem}")
        (dest / name).unlink()
    return failed
