"""Shards at URLs: a real HTTP server on 127.0.0.1 with injected faults, and an S3-compatible
server (moto) on 127.0.0.1, both started and stopped here. Nothing leaves this machine.

Faults are short by option (a 0.5 s stall timeout, 0.05 s backoff), so no test waits long,
and every test that could hang runs under a deadline.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch

from borealis.data import Batching, BorealisDataModule, MixtureStream, Pool, ResumableLoader, read_pass
from borealis.data.pools import PoolShards, slot_units
from borealis.prompts import PromptBuilder
from borealis.shards import ReadErrors, index_samples, iter_shard, list_shards, read_index
from borealis.shards.cli import main as shards_main
from borealis.shards.remote import FetchError, RemoteSettings, ShardFetcher
from borealis.testing import build_tokenizer, make_pool, tone, tone_id

FAST = RemoteSettings(retries=2, timeout=0.5, backoff=0.05)  # 3 attempts, a stall abandoned after 0.5 s
# where a test counts GETs: no attempt abandoned because a loaded machine paused the server for 0.5 s
PATIENT = RemoteSettings(retries=2, timeout=30.0, backoff=0.05)


class _Handler(SimpleHTTPRequestHandler):
    """Serves the server's folder; `server.faults[path]` (consumed) or `server.always[path]`
    injects: "500", "drop" (the connection closes halfway through the body), "stall" (headers
    and 1 kB, then nothing)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        rel = self.path.lstrip("/")
        with srv.lock:
            srv.gets[rel] += 1
            queue = srv.faults.get(rel)
            fault = queue.pop(0) if queue else srv.always.get(rel)
        if fault is None:
            return super().do_GET()
        if fault == "500":
            return self.send_error(500, "injected")
        data = (Path(self.directory) / rel).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault == "drop":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif fault == "stall":
            self.wfile.write(data[:1024])
            self.wfile.flush()
            srv.release.wait(30)
            self.close_connection = True


@pytest.fixture()
def http(tmp_path):
    """A server for tmp_path/www on 127.0.0.1; .url(rel), .gets (GETs per path), .faults, .always."""
    root = tmp_path / "www"
    root.mkdir()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    srv.daemon_threads = True
    srv.root, srv.lock, srv.release = root, threading.Lock(), threading.Event()
    srv.gets, srv.faults, srv.always = Counter(), {}, {}
    srv.url = lambda rel="": f"http://127.0.0.1:{srv.server_port}/{rel}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def _pool(srv, name="p", n=40, per_shard=10):
    make_pool(srv.root / name, name, range(n), max_samples=per_shard)
    return srv.url(name)


def _read_all(url, fetcher, *, slots=1, epoch=0):
    """(keys Counter, summed ReadErrors counts) of one pass over all slots."""
    pool = PoolShards.listed("p", url, 0)
    keys: Counter[str] = Counter()
    total = np.zeros(4, dtype=int)
    for slot in range(slots):
        stats = ReadErrors()
        for sample in iter_pass(pool, stats, fetcher, slot=slot, slots=slots, epoch=epoch):
            keys[sample["key"]] += 1
            assert tone_id(sample["audio"]) == int(sample["key"].split("-")[1])  # the right audio, intact
        total += stats.counts()
    return keys, total.tolist()


def iter_pass(pool, stats, fetcher, **kw):
    from borealis.shards import remote

    remote.configure(fetcher)
    try:
        yield from read_pass(pool, stats, **kw)
    finally:
        remote.configure(ShardFetcher())


def _deadline(fn, seconds):
    """Run fn() in a thread; fail (instead of hanging) when it does not return within `seconds`."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"did not finish within {seconds} s (hung)"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ----------------------------------------------------------------------------- faults
def test_faults_within_the_retries_lose_nothing(http):
    url = _pool(http)
    http.faults = {"p/shard-000000.tar": ["drop"], "p/shard-000001.tar": ["500", "500"],
                   "p/shard-000002.tar": ["stall"]}
    keys, counts = _deadline(lambda: _read_all(url, ShardFetcher(FAST)), 20)
    assert set(keys) == {f"p-{i}" for i in range(40)} and set(keys.values()) == {1}
    assert counts == [0, 0, 0, 0]
    assert [http.gets[f"p/shard-00000{i}.tar"] for i in range(4)] == [2, 3, 2, 1]  # retried from the start


@pytest.mark.parametrize("slots", [1, 8])  # 8 slots > 4 shards: two slots share each shard
def test_faults_past_the_retries_are_counted_exactly_and_never_hang(http, slots, caplog):
    url = _pool(http)
    http.always = {"p/shard-000001.tar": "drop", "p/shard-000002.tar": "500", "p/shard-000003.tar": "stall"}
    start = time.monotonic()
    keys, counts = _deadline(lambda: _read_all(url, ShardFetcher(FAST), slots=slots), 30)
    assert set(keys) == {f"p-{i}" for i in range(10)} and set(keys.values()) == {1}, "shard 0 alone, once"
    # lost = the three shards' index.json counts; a broken or stalled stream is damaged, a 500 unreadable
    assert dict(zip(ReadErrors.names, counts)) == {"skipped_samples": 0, "lost_samples": 30,
                                                   "unreadable_shards": 1, "damaged_shards": 2}
    assert keys.total() + counts[1] == read_index(http.root / "p")["num_samples"]
    assert http.gets["p/shard-000002.tar"] == 3 * (slots // 4 or 1)  # 1 + retries, per reader
    assert time.monotonic() - start < 20
    # the stall ends in aiohttp's read timeout or, when that is slower under load, in the watchdog's
    assert re.search(r"shard-000003\.tar: failed 3 time\(s\); last: (FSTimeoutError|TimeoutError: no data for)",
                     caplog.text)


def test_bad_urls_fail_naming_what_is_wrong(http, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no shard index at http://127.0.0.1:\d+/nothing/index.json"):
        list_shards(http.url("nothing"))
    with pytest.raises(ValueError, match="not a URL"):
        from borealis.shards.remote import protocol

        protocol("127.0.0.1/x")
    port = _free_port()  # nothing listens there
    settings = RemoteSettings(retries=1, timeout=0.5, backoff=0.01)
    with pytest.raises(FetchError, match=rf"127.0.0.1:{port}/x/index.json: failed 2 time\(s\); last: "):
        _deadline(lambda: read_index_with(f"http://127.0.0.1:{port}/x", settings), 15)
    with pytest.raises(ValueError, match="retries must be an int >= 0.*timeout must be > 0"):
        RemoteSettings(retries=-1, timeout=0)


def read_index_with(url, settings):
    from borealis.shards.remote import read_remote_index

    return read_remote_index(url, settings)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pipe_urls_read_a_pool_through_a_command(http):
    _pool(http, n=20)
    folder = http.root / "p"
    keys, counts = _read_all(f"pipe:cat {folder}/{{name}}", ShardFetcher(FAST))
    assert set(keys) == {f"p-{i}" for i in range(20)} and set(keys.values()) == {1} and counts == [0, 0, 0, 0]
    stats = ReadErrors()  # a failing command: retried, then counted
    assert list(iter_shard(f"pipe:cat {folder}/absent.tar", on_error=stats, expected=7,
                           fetcher=ShardFetcher(RemoteSettings(retries=1, backoff=0.01)))) == []
    assert stats.counts() == (0, 7, 1, 0)
    stats = ReadErrors()  # a command that stalls mid-shard: killed by the watchdog after `timeout`
    start = time.monotonic()
    stalled = f"pipe:sh -c 'head -c 3000 {folder}/shard-000000.tar; sleep 30'"
    assert _deadline(lambda: list(iter_shard(stalled, on_error=stats, expected=10, fetcher=ShardFetcher(
        RemoteSettings(retries=1, timeout=0.5, backoff=0.01)))), 15) == []
    assert stats.counts() == (0, 10, 0, 1) and time.monotonic() - start < 5


# ----------------------------------------------------------------------------- cache
def _read_with_cache(cache, args):
    url, settings = args
    keys, counts = _read_all(url, ShardFetcher(settings, cache))
    return sorted(keys.elements()), counts


def test_cache_reuses_verified_shards_and_refetches_a_corrupt_one(http, tmp_path):
    url = _pool(http)
    cache = tmp_path / "cache"
    names = [f"p/shard-00000{i}.tar" for i in range(4)]
    # three processes of one node read the pool at once through one cache: each shard is fetched once
    with mp.get_context("fork").Pool(3) as procs:
        results = _deadline(lambda: procs.starmap(_read_with_cache, [(cache, (url, PATIENT))] * 3), 60)
    for keys, counts in results:
        assert keys == sorted(f"p-{i}" for i in range(40)) and counts == [0, 0, 0, 0]
    assert [http.gets[n] for n in names] == [1, 1, 1, 1]
    index = read_index(http.root / "p")
    cached = {p.name for p in cache.glob("*.tar")}
    assert cached == {f"{s['sha256']}.tar" for s in index["shards"]}

    _read_all(url, ShardFetcher(PATIENT, cache), epoch=1)  # a later epoch: no fetch
    assert [http.gets[n] for n in names] == [1, 1, 1, 1]

    victim = cache / f"{index['shards'][2]['sha256']}.tar"
    data = bytearray(victim.read_bytes())
    data[2000] ^= 0xFF  # one flipped byte, same size
    victim.write_bytes(bytes(data))
    (cache / f"{index['shards'][3]['sha256']}.tar").write_bytes(b"partial")  # cut short
    keys, counts = _read_all(url, ShardFetcher(PATIENT, cache), epoch=2)
    assert set(keys) == {f"p-{i}" for i in range(40)} and set(keys.values()) == {1} and counts == [0, 0, 0, 0]
    assert [http.gets[n] for n in names] == [1, 1, 2, 2]  # the corrupt and the partial copy fetched again
    assert victim.read_bytes() == (http.root / names[2]).read_bytes()


def test_cache_evicts_the_least_recently_used_past_its_cap(http, tmp_path):
    url = _pool(http)
    sizes = [s["bytes"] for s in read_index(http.root / "p")["shards"]]
    cap_gb = (sizes[0] + sizes[1] + sizes[2] // 2) / 1e9  # room for two shards
    fetcher = ShardFetcher(FAST, tmp_path / "cache", cap_gb)
    for name in list_shards(url):
        with fetcher.open(name, sha256=None) as f:  # no digest: not cached
            pass
    assert not list((tmp_path / "cache").glob("*.tar"))
    entries = {u: e for u, e in zip(list_shards(url), read_index(http.root / "p")["shards"])}
    for u, e in entries.items():
        fetcher.open(u, sha256=e["sha256"]).close()
        time.sleep(0.01)  # distinct access times
    kept = {p.stem for p in (tmp_path / "cache").glob("*.tar")}
    assert kept == {e["sha256"] for e in list(entries.values())[2:]}  # the two used last
    assert fetcher.cache.size() <= cap_gb * 1e9


# ----------------------------------------------------------------------------- several nodes
def test_two_nodes_of_two_ranks_read_each_shard_once_per_epoch(http):
    """4 slots = 2 nodes x 2 ranks (global rank = node * 2 + local rank, as Lightning numbers
    them), 2 DataLoader workers each: 8 readers, 8 shards."""
    url = _pool(http, n=80)
    pool = PoolShards.listed("p", url, 0)
    workers, world = 2, 4
    for epoch in range(2):
        keys: Counter[str] = Counter()
        before = Counter(http.gets)
        for node in range(2):
            for local_rank in range(2):
                rank = node * 2 + local_rank
                for worker in range(workers):
                    slot = rank * workers + worker  # MixtureStream's slot of (rank, worker)
                    for sample in iter_pass(pool, ReadErrors(), ShardFetcher(FAST), slot=slot,
                                            slots=world * workers, epoch=epoch):
                        keys[sample["key"]] += 1
        fetched = Counter(http.gets)
        fetched.subtract(before)
        assert {k: v for k, v in fetched.items() if v} == {f"p/shard-{i:06d}.tar": 1 for i in range(8)}
        assert set(keys) == {f"p-{i}" for i in range(80)} and set(keys.values()) == {1}
    assert slot_units(8, 8, 5) == [(5, 0, 1)]


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def prompts():
    return PromptBuilder(build_tokenizer(), downsample_factor=4, max_source_positions=100)


class _Probe(L.LightningModule):
    """Records each batch's keys, waveforms and data errors; trains one scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.keys: list[str] = []
        self.errors = torch.zeros(4, dtype=torch.long)

    def training_step(self, batch, batch_idx):
        for key, wave, n in zip(batch["keys"], batch["waveforms"], batch["audio_lengths"]):
            assert tone_id(wave[:n].numpy()) == int(key.split("-")[1])
        self.keys += batch["keys"]
        self.errors += batch["data_errors"]
        return (self.w - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_training_over_http_yields_intact_samples_once_and_counts_damage(http, tmp_path, prompts):
    """`Trainer.fit` over a URL pool with the node cache and 2 workers: the shard worker 0 reads
    first answers 500 forever. Each worker stays within its first pass (13 samples at most of
    its 20 intact ones), so no key may come twice, and the damage is counted exactly."""
    url = _pool(http, n=60)
    seed = 5
    order = np.random.default_rng([seed, 0, 0, 0]).permutation(6)
    first = f"p/shard-{order[slot_units(6, 2, 0)[0][0]]:06d}.tar"
    http.always = {first: "500"}
    dm = BorealisDataModule([Pool("p", url)], batching=Batching(batch_size=4, bucket_size=4), batches_per_epoch=4,
                            shuffle_buffer=1, num_workers=2, seed=seed, cache_dir=str(tmp_path / "cache"),
                            remote=FAST, prompt_builder=prompts)
    probe = _Probe()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    _deadline(lambda: trainer.fit(probe, datamodule=dm), 90)
    assert len(probe.keys) == 16 and len(set(probe.keys)) == 16
    damaged = {f"p-{i}" for i in range(int(first[-10:-4]) * 10, int(first[-10:-4]) * 10 + 10)}
    assert not set(probe.keys) & damaged
    assert dict(zip(ReadErrors.names, probe.errors.tolist())) == {
        "skipped_samples": 0, "lost_samples": 10, "unreadable_shards": 1, "damaged_shards": 0}
    cached = list((tmp_path / "cache").glob("*.tar"))
    assert len(cached) >= 2  # each worker's first intact shard at least, each stored under its own sha256
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == p.stem for p in cached)


_KILLED = textwrap.dedent("""
    import json, sys, time
    from borealis.testing import build_tokenizer
    from borealis.data import Batching, MixtureStream, Pool, ResumableLoader
    from borealis.prompts import PromptBuilder
    from borealis.shards.remote import RemoteSettings, ShardFetcher
    url, cache, out = sys.argv[1:4]
    prompts = PromptBuilder(build_tokenizer(), downsample_factor=4, max_source_positions=100)
    stream = MixtureStream([Pool("p", url)], prompts, Batching(max_seconds_per_batch=1.5, bucket_size=9),
                           batches_per_epoch=11, shuffle_buffer=5, seed=3,
                           fetcher=ShardFetcher(RemoteSettings(retries=2, timeout=0.5, backoff=0.05), cache))
    loader = ResumableLoader(stream, batch_size=None, num_workers=2)
    with open(out, "a") as f:
        for batch in loader:
            f.write(json.dumps({"keys": batch["keys"], "state": loader.state_dict()}) + "\\n")
            f.flush()
            if loader.position[1] == 5:
                time.sleep(600)  # killed here
""")


def _stream(url, prompts, cache):
    return MixtureStream([Pool("p", url)], prompts, Batching(max_seconds_per_batch=1.5, bucket_size=9),
                         batches_per_epoch=11, shuffle_buffer=5, seed=3, fetcher=ShardFetcher(FAST, cache))


def test_a_killed_reader_resumes_exactly_over_http(http, tmp_path, prompts):
    """A process reading a URL pool (2 workers, the node cache) is killed with SIGKILL after 5
    batches; a new loader given its last position yields exactly the rest of the epoch that an
    uninterrupted run yields."""
    url = _pool(http, n=60, per_shard=7)
    http.faults = {"p/shard-000001.tar": ["drop"], "p/shard-000004.tar": ["500"]}  # retried within the budget
    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, url, str(tmp_path / "cache"), str(out)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_file() and len(out.read_text().splitlines()) >= 5:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert len(out.read_text().splitlines()) == 5, "did not reach batch 5 in time"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    before = [r["keys"] for r in rows]
    stream = _stream(url, prompts, tmp_path / "cache")
    loader = ResumableLoader(stream, batch_size=None, num_workers=2)
    loader.load_state_dict(rows[-1]["state"])
    rest = _deadline(lambda: [b["keys"] for b in loader], 60)
    full = _deadline(lambda: [b["keys"] for b in ResumableLoader(_stream(url, prompts, tmp_path / "cache2"),
                                                                  batch_size=None, num_workers=2)], 60)
    assert len(full) == 11 and before + rest == full


# ----------------------------------------------------------------------------- S3 (moto)
@pytest.fixture()
def s3(monkeypatch):
    """An S3-compatible server on 127.0.0.1 (moto), with bucket "corpus"; yields its endpoint."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir("corpus")
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_build_to_s3_verify_and_train_from_it(s3, tmp_path, capsys, prompts):
    audio = tmp_path / "audio"
    audio.mkdir()
    with open(tmp_path / "m.jsonl", "w") as f:
        for i in range(12):
            sf.write(audio / f"{i}.wav", tone(i, 0.3), 16000)
            f.write(json.dumps({"audio": f"audio/{i}.wav", "text": f"t {i}", "language": "en", "key": f"s-{i}"}) + "\n")
    url = "s3://corpus/pools/asr"
    assert shards_main(["build", "manifest", "--input", str(tmp_path / "m.jsonl"), "--output", url,
                        "--source", "tones", "--max-samples", "5"]) == 0
    assert f"uploaded 5 file(s) to {url} (index.json last)" in capsys.readouterr().out  # 3 shards, report, index
    assert shards_main(["inspect", url, "--verify", "--no-progress"]) == 0
    assert "verify     OK: sha256, 12 samples decoded" in capsys.readouterr().out

    keys, counts = _read_all(url, ShardFetcher(FAST))
    assert set(keys) == {f"s-{i}" for i in range(12)} and set(keys.values()) == {1} and counts == [0, 0, 0, 0]
    refs = index_samples(list_shards(url))  # random access (benchmarks, noise pools): verified local copies
    assert [r.key for r in refs] == [f"s-{i}" for i in range(12)]

    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3, skip_instance_cache=True)
    fs.pipe_file("corpus/pools/asr/shard-000001.tar", fs.cat_file("corpus/pools/asr/shard-000001.tar")[:-4096])
    assert shards_main(["inspect", url, "--verify", "--no-progress"]) == 1
    assert f"pool {url}: shard shard-000001.tar: " in capsys.readouterr().out
    keys, counts = _read_all(url, ShardFetcher(FAST))  # the cut shard: damaged, its 5 samples lost
    assert set(keys) == {f"s-{i}" for i in (*range(5), *range(10, 12))}
    assert counts == [0, 5, 0, 1]
