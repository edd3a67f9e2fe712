"""Reading shards over HTTP vs. from local disk: samples per second read and decoded.

What:
    python tools/bench_remote.py                     # 320 clips of 5 s, 16 shards, 2 workers, 3 rounds
    python tools/bench_remote.py --clips 640 --workers 2 --rounds 5 --json out.json

It writes a synthetic pool into a temp dir, serves that folder with Python's own HTTP server
(`python -m http.server`, a separate process on 127.0.0.1), and reads the pool through a
DataLoader with `--workers` workers the way training does (`pools.read_pass`, one slot per
worker: every sample decoded to a 16 kHz float waveform), once from the folder (the baseline)
and once from `http://127.0.0.1:PORT/pool` without a cache, so every shard is fetched,
sha256-verified and read from its temporary copy. The two alternate for `--rounds` rounds and
the best round of each counts; it prints samples/s for both and their ratio (HTTP / local),
and checks that both read the same samples.

Why: issue 18 asks that reading and decoding from a loopback HTTP server with 2 workers
reaches at least 80% of the same pool read from local disk. Loopback measures Borealis's own
overhead (the fetch, the verification, the temporary copy), not a network.

Cost: ~20 s to write the pool, then ~5-10 s per round on 2 loaded cores.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from borealis.data.pools import PoolShards, read_pass
from borealis.shards import ReadErrors, ShardWriter
from borealis.shards.remote import RemoteSettings, ShardFetcher, configure


class _Pass(IterableDataset):
    """One pass over a pool, one slot per DataLoader worker; yields (key, samples decoded)."""

    def __init__(self, spec: str, fetcher: ShardFetcher) -> None:
        self.pool = PoolShards.listed("bench", spec, 0)
        self.fetcher = fetcher

    def __iter__(self):
        info = get_worker_info()
        slot, slots = (info.id, info.num_workers) if info else (0, 1)
        configure(self.fetcher)
        stats = ReadErrors()
        for sample in read_pass(self.pool, stats, slot=slot, slots=slots):
            yield sample["key"], int(sample["audio"].size)
        if any(stats.counts()):
            raise RuntimeError(f"read errors in the benchmark pool: {stats}")


def write_pool(folder: Path, clips: int, seconds: float, per_shard: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    with ShardWriter(folder, max_samples=per_shard) as w:
        for i in range(clips):
            audio = 0.3 * np.sin(2 * np.pi * (200 + i) * t) + 0.05 * rng.standard_normal(t.size)
            w.write(f"b-{i}", {"text": f"clip {i}", "language": "en", "task": "asr"}, audio.astype(np.float32))


def timed(spec: str, workers: int, fetcher: ShardFetcher) -> tuple[float, list[str]]:
    """(seconds, keys) of one pass: workers started, every sample read and decoded."""
    start = time.perf_counter()
    loader = DataLoader(_Pass(spec, fetcher), batch_size=None, num_workers=workers)
    keys = [key for key, _ in loader]
    return time.perf_counter() - start, keys


def _serve(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/pool/index.json", timeout=1).read()
            return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the loopback HTTP server did not start") from None
            time.sleep(0.1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--clips", type=int, default=320, help="clips in the pool")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per clip")
    parser.add_argument("--per-shard", type=int, default=20, help="clips per shard")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--rounds", type=int, default=3, help="alternating local/HTTP rounds; the best counts")
    parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic noise")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        root = Path(tmp)
        write_pool(root / "pool", args.clips, args.seconds, args.per_shard, args.seed)
        proc, base = _serve(root)
        try:
            fetcher = ShardFetcher(RemoteSettings(retries=2, timeout=30.0))
            local, http = [], []
            for _ in range(args.rounds):
                t_local, keys_local = timed(str(root / "pool"), args.workers, fetcher)
                t_http, keys_http = timed(f"{base}/pool", args.workers, fetcher)
                if sorted(keys_local) != sorted(keys_http) or len(keys_local) != args.clips:
                    raise RuntimeError("the local and the HTTP pass read different samples")
                local.append(t_local)
                http.append(t_http)
        finally:
            proc.kill()
            proc.wait()
    local_rate, http_rate = args.clips / min(local), args.clips / min(http)
    result = {"clips": args.clips, "seconds_per_clip": args.seconds, "shards": -(-args.clips // args.per_shard),
              "workers": args.workers, "rounds": args.rounds, "local_s": local, "http_s": http,
              "local_samples_per_s": round(local_rate, 1), "http_samples_per_s": round(http_rate, 1),
              "ratio": round(http_rate / local_rate, 3)}
    print(f"bench_remote: {args.clips} clips x {args.seconds:g} s, {args.workers} workers: local "
          f"{local_rate:.0f} samples/s, loopback HTTP {http_rate:.0f} samples/s, ratio {http_rate / local_rate:.2f} "
          f"(best of {args.rounds})")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
