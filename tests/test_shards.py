"""Shard format contract: round trips, resampling, rolling, index, determinism, plain-webdataset
and tar readability, random access, and errors that name the shard and the key.

Audio is synthetic and traceable: sample i is a sine at `tone_hz(i)`, so a decoded clip's
dominant frequency says which sample it is.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from borealis.shards import (
    SAMPLE_RATE,
    SampleRef,
    ShardError,
    ShardWriter,
    decode_sample,
    index_samples,
    iter_shard,
    list_shards,
    read_index,
    read_sample,
    verify_pool,
)

PLACEHOLDER = "<|start_of_audio|><|end_of_audio|>"


def tone_hz(i: int) -> float:
    return 200.0 + 50.0 * i  # 50 Hz apart: FFT bins of a 0.5 s clip are 2 Hz wide


def tone(i: int, seconds: float = 0.5, rate: int = SAMPLE_RATE, channels: int = 0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * tone_hz(i) * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels else x


def dominant_hz(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[spectrum.argmax()])


def write_pool(out: Path, n: int = 5, **kw) -> dict:
    """n ASR samples, one instruction sample and one text-only chat."""
    with ShardWriter(out, **kw) as w:
        for i in range(n):
            w.write(f"utt-{i:03d}", {"text": f"sample {i}", "language": "ru", "source": "test", "task": "asr"},
                    tone(i, 0.25 + 0.05 * i))
        w.write("inst-000", {"task": "instruct", "messages": [
            {"role": "user", "content": f"What is this? {PLACEHOLDER}"},
            {"role": "assistant", "content": "a tone"}]}, tone(n))
        w.write("chat-000", {"task": "chat", "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "привет"}]})
    return read_index(out)


def all_samples(pool: Path) -> list[dict]:
    return [s for p in list_shards(pool) for s in iter_shard(p)]


def test_round_trip_keeps_audio_meta_and_duration(tmp_path):
    index = write_pool(tmp_path / "pool")
    samples = all_samples(tmp_path / "pool")
    assert [s["key"] for s in samples] == [f"utt-{i:03d}" for i in range(5)] + ["inst-000", "chat-000"]
    for i, s in enumerate(samples[:5]):
        expected = tone(i, 0.25 + 0.05 * i)
        assert s["audio"].dtype == np.float32 and s["audio"].ndim == 1
        np.testing.assert_allclose(s["audio"], expected, atol=2 / 2**15)  # PCM_16 quantisation
        assert s["duration"] == pytest.approx(0.25 + 0.05 * i)
        assert s["meta"] == {"text": f"sample {i}", "language": "ru", "source": "test", "task": "asr",
                             "duration": round(0.25 + 0.05 * i, 3)}
        assert s["shard"] == str(tmp_path / "pool" / "shard-000000.tar")
    assert samples[5]["meta"]["messages"][0]["content"].endswith(PLACEHOLDER)
    assert dominant_hz(samples[5]["audio"]) == pytest.approx(tone_hz(5), abs=2)
    chat = samples[6]
    assert chat["audio"] is None and chat["duration"] == 0.0 and chat["meta"]["messages"][1]["content"] == "привет"
    assert index["num_samples"] == 7 and index["tasks"] == {"asr": 5, "chat": 1, "instruct": 1}


def test_caller_meta_is_not_modified(tmp_path):
    meta = {"text": "x"}
    with ShardWriter(tmp_path) as w:
        w.write("a", meta, tone(0))
    assert meta == {"text": "x"}


def test_44k1_stereo_is_stored_as_16k_mono_flac(tmp_path):
    stereo = tone(3, seconds=1.0, rate=44_100, channels=2)
    stereo[:, 1] *= 0.5  # unequal channels: the mix is their mean
    with ShardWriter(tmp_path) as w:
        w.write("stereo", {"text": "t"}, stereo, sample_rate=44_100)
    with tarfile.open(tmp_path / "shard-000000.tar") as tf:
        info = sf.info(io.BytesIO(tf.extractfile("stereo.flac").read()))
    assert (info.samplerate, info.channels, info.format, info.subtype) == (16_000, 1, "FLAC", "PCM_16")
    (s,) = all_samples(tmp_path)
    assert s["audio"].shape == (16_000,) and s["duration"] == 1.0 and s["meta"]["duration"] == 1.0
    assert dominant_hz(s["audio"]) == pytest.approx(tone_hz(3), abs=2)
    mid = s["audio"][4000:12000]  # away from the resampler's edges
    assert np.abs(mid).max() == pytest.approx(0.375, abs=0.01)  # mean of 0.5 and 0.25


def test_decode_sample_resamples_and_downmixes_foreign_wav():
    buf = io.BytesIO()
    sf.write(buf, tone(2, seconds=0.5, rate=8000, channels=2), 8000, format="WAV", subtype="PCM_16")
    s = decode_sample({"__key__": "k", "json": b'{"text": "t"}', "wav": buf.getvalue()}, "x.tar")
    assert s["audio"].shape == (8000,) and s["duration"] == 0.5 and s["shard"] == "x.tar"
    assert dominant_hz(s["audio"]) == pytest.approx(tone_hz(2), abs=2)


def test_rolls_by_max_samples_and_index_is_exact(tmp_path):
    pool = tmp_path / "pool"
    index = write_pool(pool, n=5, max_samples=2)  # 7 samples -> 2 + 2 + 2 + 1
    assert [s["num_samples"] for s in index["shards"]] == [2, 2, 2, 1]
    assert [s["name"] for s in index["shards"]] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert not list(pool.glob("*.tmp"))
    samples = all_samples(pool)
    assert index["num_samples"] == len(samples) == 7
    assert index["duration"] == pytest.approx(sum(s["duration"] for s in samples), abs=1e-3)
    for entry, path in zip(index["shards"], list_shards(pool)):
        data = path.read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        in_shard = [s for s in samples if s["shard"] == str(path)]
        assert entry["duration"] == pytest.approx(sum(s["duration"] for s in in_shard), abs=1e-3)
    assert verify_pool(pool) == index


def test_rolls_by_max_bytes(tmp_path):
    with ShardWriter(tmp_path, max_bytes=40_000) as w:  # a 0.5 s tone is ~10 kB of FLAC
        for i in range(8):
            w.write(f"k{i}", {"text": "t"}, tone(i))
    index = read_index(tmp_path)
    assert len(index["shards"]) > 1 and index["num_samples"] == 8
    assert all(s["bytes"] <= 40_000 for s in index["shards"])


def test_same_input_gives_byte_identical_pools(tmp_path):
    write_pool(tmp_path / "a", max_samples=3)
    write_pool(tmp_path / "b", max_samples=3)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_readable_by_plain_webdataset_and_tar(tmp_path):
    import webdataset as wds

    write_pool(tmp_path, max_samples=4)
    urls = [str(p) for p in list_shards(tmp_path)]
    raw = list(wds.WebDataset(urls, shardshuffle=False))
    ours = all_samples(tmp_path)
    assert [r["__key__"] for r in raw] == [s["key"] for s in ours]
    assert [json.loads(r["json"]) for r in raw] == [s["meta"] for s in ours]
    assert [("flac" in r) for r in raw] == [s["audio"] is not None for s in ours]

    with tarfile.open(urls[0]) as tf:
        members = tf.getmembers()
    assert [m.name for m in members[:2]] == ["utt-000.json", "utt-000.flac"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.isreg() for m in members)
    if shutil.which("tar"):
        listing = subprocess.run(["tar", "-tf", urls[0]], capture_output=True, text=True, check=True).stdout
        assert listing.split()[:2] == ["utt-000.json", "utt-000.flac"]


def test_random_access_equals_streaming(tmp_path):
    write_pool(tmp_path, max_samples=3)
    shards = list_shards(tmp_path)
    refs = index_samples(shards)
    streamed = [s for p in shards for s in iter_shard(p)]
    assert [r.key for r in refs] == [s["key"] for s in streamed]
    assert isinstance(refs[0], SampleRef) and set(refs[0].members) == {"json", "flac"}
    assert set(refs[-1].members) == {"json"}
    for ref, s in zip(reversed(refs), reversed(streamed)):  # any order works
        r = read_sample(ref)
        assert (r["key"], r["meta"], r["duration"], r["shard"]) == (s["key"], s["meta"], s["duration"], s["shard"])
        if s["audio"] is None:
            assert r["audio"] is None
        else:
            np.testing.assert_array_equal(r["audio"], s["audio"])


def test_writer_errors_name_the_key(tmp_path):
    with ShardWriter(tmp_path) as w:
        w.write("dup", {"text": "a"}, tone(0))
        with pytest.raises(ValueError, match="duplicate sample key 'dup'"):
            w.write("dup", {"text": "b"}, tone(1))
        for bad in ("a.b", "a/b", "a b", "", "__meta__"):
            with pytest.raises(ValueError, match="sample key"):
                w.write(bad, {}, tone(0))
        with pytest.raises(ValueError, match="'nan'.*NaN"):
            w.write("nan", {}, np.full(100, np.nan, dtype=np.float32))
        with pytest.raises(ValueError, match="'chw'.*channels, frames"):
            w.write("chw", {}, tone(0, channels=2).T)
        with pytest.raises(ValueError, match="'obj'.*JSON"):
            w.write("obj", {"x": object()}, tone(0))
    assert read_index(tmp_path)["num_samples"] == 1
    with pytest.raises(RuntimeError, match="closed"):
        w.write("late", {}, tone(0))


def test_exception_inside_writer_still_leaves_a_valid_pool(tmp_path):
    with pytest.raises(KeyError):
        with ShardWriter(tmp_path, max_samples=2) as w:
            for i in range(3):
                w.write(f"k{i}", {"text": "t"}, tone(i))
            raise KeyError("boom")
    index = read_index(tmp_path)
    assert index["num_samples"] == 3 and len(all_samples(tmp_path)) == 3


def test_rewriting_a_pool_removes_stale_shards(tmp_path):
    write_pool(tmp_path, max_samples=1)
    assert len(list(tmp_path.glob("shard-*.tar"))) == 7
    write_pool(tmp_path, n=1, max_samples=10)
    assert [p.name for p in tmp_path.glob("shard-*.tar")] == ["shard-000000.tar"]


def _hand_made_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_read_errors_name_shard_and_key(tmp_path):
    flac = io.BytesIO()
    sf.write(flac, tone(0), SAMPLE_RATE, format="FLAC")
    bad_json = _hand_made_tar(tmp_path / "bad_json.tar", [("good.json", b'{"text": "ok"}'),
                                                          ("broken.json", b'{"text": '), ("broken.flac", flac.getvalue())])
    it = iter_shard(bad_json)
    assert next(it)["key"] == "good"
    with pytest.raises(ShardError, match=r"bad_json\.tar: sample 'broken': corrupt \.json"):
        next(it)
    (ref,) = [r for r in index_samples([bad_json]) if r.key == "broken"]
    with pytest.raises(ShardError, match="'broken': corrupt"):
        read_sample(ref)

    no_json = _hand_made_tar(tmp_path / "no_json.tar", [("lonely.flac", flac.getvalue())])
    with pytest.raises(ShardError, match=r"no_json\.tar: sample 'lonely': no \.json"):
        list(iter_shard(no_json))
    with pytest.raises(ShardError, match="'lonely': no .json"):
        index_samples([no_json])

    garbage = _hand_made_tar(tmp_path / "garbage.tar", [("noise.json", b"{}"), ("noise.flac", b"not a flac")])
    with pytest.raises(ShardError, match="'noise': undecodable .flac"):
        list(iter_shard(garbage))

    twice = _hand_made_tar(tmp_path / "twice.tar", [("a.json", b"{}"), ("b.json", b"{}"), ("a.txt", b"x")])
    with pytest.raises(ShardError, match="'a': key appears twice"):
        list(iter_shard(twice))
    with pytest.raises(ShardError, match="'a': key appears twice"):
        index_samples([twice])

    write_pool(tmp_path / "pool")
    data = (tmp_path / "pool" / "shard-000000.tar").read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"truncated\.tar: sample 'utt-\d+'"):
        list(iter_shard(truncated))
    with pytest.raises(FileNotFoundError):
        list(iter_shard(tmp_path / "missing.tar"))


def test_skipping_reader_drops_whole_samples_and_parts_add_up(tmp_path):
    """A duplicate member drops its whole sample (webdataset would keep the first member), a key
    met again later in the shard is skipped (webdataset would yield it twice), and readers
    sharing a damaged shard count, between them, what one reader counts."""
    from borealis.shards import ReadErrors

    members = [(f"s{i}.json", json.dumps({"text": str(i)}).encode()) for i in range(3)]
    members.insert(2, ("s1.json", b'{"text": "again"}'))  # s1 has its .json twice
    members += [("s0.json", b"{}"), ("s3.json", b"{}"), ("s4.json", b"{}")]  # s0 comes back later
    shard = _hand_made_tar(tmp_path / "damaged.tar", members)
    data = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:data.index(b"s4.json")])  # ends where s4's header begins

    errors = ReadErrors()
    assert [s["key"] for s in iter_shard(shard, on_error=errors)] == ["s0", "s2", "s3", "s4"]
    assert errors.counts() == (2, 0, 0, 0)  # s1 (duplicate member) and the second s0
    with pytest.raises(ShardError, match="'s1': duplicate member 's1.json'"):
        list(iter_shard(shard))
    one = ReadErrors()
    keys = [s["key"] for s in iter_shard(cut, on_error=one, expected=6)]
    parts = [ReadErrors() for _ in range(3)]
    split = [[s["key"] for s in iter_shard(cut, on_error=e, expected=6, part=i, parts=3)] for i, e in enumerate(parts)]
    assert sorted(k for ks in split for k in ks) == sorted(keys)
    assert tuple(map(sum, zip(*(e.counts() for e in parts)))) == one.counts()
    assert keys == ["s0", "s2"] and one.counts() == (2, 2, 0, 1)  # s3 (being read at the cut) and s4 lost


def test_list_shards_folder_glob_and_nothing(tmp_path):
    pool = tmp_path / "pool"
    write_pool(pool, max_samples=2)
    expected = [pool / f"shard-{i:06d}.tar" for i in range(4)]
    assert list_shards(pool) == expected
    assert list_shards(str(pool / "shard-*.tar")) == expected
    assert list_shards(expected[1]) == [expected[1]]
    (pool / "index.json").unlink()  # no index: sorted shard-*.tar
    assert list_shards(pool) == expected
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_shards(tmp_path / "nowhere" / "*.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        list_shards(tmp_path / "empty")


def test_read_index_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_index(tmp_path)
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match=r"index\.json: invalid shard index: format is 'other'"):
        read_index(tmp_path)
    (tmp_path / "index.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_index(tmp_path)


def test_verify_pool_catches_a_changed_shard(tmp_path):
    write_pool(tmp_path)
    shard = tmp_path / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    with pytest.raises(ShardError, match="shard-000000.tar: sha256"):
        verify_pool(tmp_path)
