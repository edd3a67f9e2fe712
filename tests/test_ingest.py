"""borealis/ingest/ on real-corpus inputs: manifests (Borealis and NeMo style) at every rate,
channel layout and codec, segments and long recordings, worker-count determinism and splits.

Every fixture is made here: tones whose frequency encodes the item, written at 8/22.05/44.1/
48 kHz, mono and stereo, as wav, flac, mp3 and ogg. Each test checks the accounting
(written + rejected = read) and what lands in the shards. The corpus readers (LibriSpeech,
Common Voice, Hugging Face) are tested in test_corpora.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from borealis.corpora import jsonl_items
from borealis.ingest import build_pool, plan_chunks, split_of
from borealis.shards import iter_shard, list_shards, read_index
from borealis.shards.cli import main as shards_main


def build(argv: list[str]) -> int:
    """`borealis shards build ARGV...` in this process."""
    return shards_main(["build", *argv])

# (rate, channels, file name, soundfile format): every input kind the issue names.
FORMATS = [(8_000, 1, "a.wav", "WAV"), (22_050, 2, "b.flac", "FLAC"), (44_100, 2, "c.wav", "WAV"),
           (48_000, 1, "d.ogg", "OGG"), (44_100, 2, "e.mp3", "MP3"), (16_000, 1, "f.opus.ogg", "OGG")]


def tone(i: int, rate: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    """0.4 * sin(2 pi (300 + 100 i) t): the frequency says which item it is."""
    t = np.arange(round(seconds * rate)) / rate
    x = (0.4 * np.sin(2 * np.pi * (300 + 100 * i) * t)).astype(np.float32)
    return np.stack([x] * channels, 1) if channels > 1 else x


def dominant_hz(audio: np.ndarray, rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / rate)[np.argmax(spectrum)])


def write_formats(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (rate, channels, name, fmt) in enumerate(FORMATS):
        subtype = "OPUS" if name.endswith(".opus.ogg") else None
        if subtype:  # Opus only runs at 8/12/16/24/48 kHz
            sf.write(folder / name, tone(i, rate, channels=channels), rate, format=fmt, subtype=subtype)
        else:
            sf.write(folder / name, tone(i, rate, channels=channels), rate, format=fmt)
        names.append(name)
    return names


def samples_of(pool: Path) -> dict[str, dict]:
    return {s["key"]: s for p in list_shards(pool) for s in iter_shard(p)}


def assert_accounts(report: dict) -> None:
    assert report["written"] + report["num_rejected"] == report["read"]
    assert sum(report["rejected"].values()) == report["num_rejected"]


def test_nemo_manifest_every_rate_channel_layout_and_codec(tmp_path):
    names = write_formats(tmp_path / "audio")
    lines = [{"audio_filepath": f"audio/{n}", "text": f"item {i}", "duration": 0.5, "lang": "en", "speaker": i}
             for i, n in enumerate(names)]
    (tmp_path / "m.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "pool"
    assert build(["manifest", "--input", str(tmp_path / "m.json"), "--output", str(out), "--no-progress",
                    "--strict", "--workers", "2"]) == 0
    report = json.loads((out / "build_report.json").read_text())
    assert (report["read"], report["written"], report["num_rejected"]) == (len(FORMATS), len(FORMATS), 0)
    by_text = {s["meta"]["text"]: s for s in samples_of(out).values()}
    for i, (rate, channels, name, _) in enumerate(FORMATS):
        s = by_text[f"item {i}"]
        assert s["audio"].ndim == 1  # down-mixed
        assert abs(s["audio"].size - 8000) <= 16 * (1 if name.endswith("wav") or name.endswith("flac") else 120), name
        assert dominant_hz(s["audio"][:8000]) == pytest.approx(300 + 100 * i, abs=4), name  # resampled, not garbled
        assert s["meta"]["speaker"] == i and s["meta"]["lang"] == "en" and s["meta"]["task"] == "asr"  # fields kept


def test_nemo_offset_reads_a_segment_and_instruction_lines(tmp_path):
    x = np.concatenate([tone(0, 16_000, 1.0), tone(5, 16_000, 1.0)])
    sf.write(tmp_path / "two.wav", x, 16_000)
    lines = [{"audio_filepath": "two.wav", "offset": 1.0, "duration": 0.5, "text": "second tone", "key": "seg"},
             {"audio": "two.wav", "instruction": "How many tones?", "response": "two", "key": "ins"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    report = build_pool(jsonl_items(tmp_path / "m.jsonl"), tmp_path / "pool", kind="manifest", base_dir=tmp_path,
                        progress=False)
    assert report["written"] == 2
    s = samples_of(tmp_path / "pool")
    assert s["seg"]["duration"] == pytest.approx(0.5) and dominant_hz(s["seg"]["audio"]) == pytest.approx(800, abs=4)
    assert s["ins"]["meta"]["task"] == "instruct"
    assert s["ins"]["meta"]["messages"] == [
        {"role": "user", "content": "How many tones? <|start_of_audio|><|end_of_audio|>"},
        {"role": "assistant", "content": "two"}]


def test_corrupt_manifest_counts_every_reason(tmp_path):
    """Missing files, a zero-byte wav, an empty transcript, a 45 s file without timestamps and
    Latin-1 text: each counted under its reason, and written + rejected = read."""
    sf.write(tmp_path / "ok.wav", tone(0, 16_000), 16_000)
    sf.write(tmp_path / "ok2.flac", tone(1, 48_000, channels=2), 48_000)
    sf.write(tmp_path / "long.wav", tone(2, 16_000, seconds=45.0), 16_000)
    sf.write(tmp_path / "tiny.wav", tone(3, 16_000, seconds=0.05), 16_000)
    (tmp_path / "zero.wav").write_bytes(b"")
    rows = [json.dumps({"audio": "ok.wav", "text": "good"}).encode(),
            json.dumps({"audio": "ok2.flac", "text": "также хорошо"}, ensure_ascii=False).encode("utf-8"),
            json.dumps({"audio": "gone.wav", "text": "missing"}).encode(),
            json.dumps({"audio": "gone2.wav", "text": "missing too"}).encode(),
            json.dumps({"audio": "zero.wav", "text": "zero bytes"}).encode(),
            json.dumps({"audio": "ok.wav", "text": "", "key": "empty"}).encode(),
            json.dumps({"audio": "long.wav", "text": "forty five seconds"}).encode(),
            json.dumps({"audio": "tiny.wav", "text": "too short"}).encode(),
            '{"audio": "ok.wav", "text": "caf\u00e9 cr\u00e8me", "key": "latin"}'.encode("latin-1"),
            b"", b"   "]  # blank lines are not items
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    out = tmp_path / "pool"
    code = build(["manifest", "--input", str(tmp_path / "m.jsonl"), "--output", str(out), "--no-progress",
                    "--strict"])
    assert code == 1
    report = json.loads((out / "build_report.json").read_text())
    assert report["read"] == 9 and report["written"] == 2
    assert report["rejected"] == {"non_utf8": 1, "missing_file": 2, "empty_audio": 1, "too_short": 1,
                                  "too_long": 1, "empty_text": 1}
    assert_accounts(report)
    detail = {r: rows[0] for r, rows in report["rejections"].items()}
    assert detail["too_long"]["line"] == 7 and "too long and no timestamps" in detail["too_long"]["detail"]
    assert "45.0 s" in detail["too_long"]["detail"]
    assert detail["non_utf8"]["line"] == 9 and "0xe9" in detail["non_utf8"]["detail"]
    assert detail["empty_audio"]["detail"].endswith("empty file (0 bytes)")
    assert [r["line"] for r in report["rejections"]["missing_file"]] == [3, 4]
    assert read_index(out)["num_samples"] == 2 and not any(s["duration"] > 30 for s in samples_of(out).values())


def long_recording(path: Path, rate: int = 22_050) -> list[dict]:
    """70 s of 10 tones (5 s each, 2 s of near-silence between), stereo; returns its segments."""
    t = np.arange(70 * rate) / rate
    x = 0.001 * np.random.default_rng(0).standard_normal(t.size)
    segments = []
    for i in range(10):
        start, end = 1 + 7 * i, 6 + 7 * i
        on = (t >= start) & (t < end)
        x[on] += 0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t[on])
        segments.append({"start": start, "end": end, "text": f"tone {i}"})
    sf.write(path, np.stack([x, x], 1).astype(np.float32), rate)
    return segments


def test_long_recording_is_cut_at_silences_and_keys_point_back(tmp_path):
    segments = long_recording(tmp_path / "talk.wav")
    line = {"audio": "talk.wav", "segments": segments, "key": "talk", "language": "en"}
    (tmp_path / "m.jsonl").write_text(json.dumps(line) + "\n")
    report = build_pool(jsonl_items(tmp_path / "m.jsonl"), tmp_path / "pool", kind="manifest", base_dir=tmp_path,
                        max_seconds=30.0, progress=False)
    assert (report["read"], report["written"], report["num_samples"], report["chunked"]) == (1, 1, 3, 1)
    chunks = sorted(samples_of(tmp_path / "pool").values(), key=lambda s: s["meta"]["chunk"])
    assert [c["key"] for c in chunks] == ["talk-0000", "talk-0001", "talk-0002"]
    assert [c["meta"]["text"] for c in chunks] == ["tone 0 tone 1 tone 2 tone 3", "tone 4 tone 5 tone 6 tone 7",
                                                   "tone 8 tone 9"]
    assert sum(c["duration"] for c in chunks) == pytest.approx(70.0, abs=0.01)  # nothing lost, nothing doubled
    for c in chunks:
        meta = c["meta"]
        assert meta["source_key"] == "talk" and c["duration"] <= 30.0
        assert meta["end"] - meta["start"] == pytest.approx(c["duration"], abs=0.002)
        for k in ("start", "end"):  # cuts fall in the silent gaps between tones, not inside one
            cut = meta[k]
            assert all(not (s["start"] < cut < s["end"]) for s in segments), cut
        for seg in meta["segments"]:  # timestamps are relative to the chunk and hit its tones
            a, b = round((seg["start"] + 0.5) * 16_000), round((seg["end"] - 0.5) * 16_000)
            i = int(seg["text"].split()[1])
            assert dominant_hz(c["audio"][a:b]) == pytest.approx(300 + 100 * i, abs=4)

    too_long = [{"start": 0.0, "end": 31.0, "text": "one long segment"}]
    quiet = np.zeros(16_000 * 40, np.float32)
    with pytest.raises(Exception, match="alone is longer than max_seconds=30"):
        plan_chunks([(s["start"], s["end"], s["text"]) for s in too_long], 40.0, 30.0, quiet, 16_000, "k")


def test_workers_give_identical_shards_and_split_is_stable(tmp_path):
    names = write_formats(tmp_path / "audio")
    segments = long_recording(tmp_path / "audio" / "talk.wav")
    lines = [{"audio": f"audio/{n}", "text": f"item {i}"} for i, n in enumerate(names)]
    lines += [{"audio": f"audio/{n}", "text": f"again {i}", "key": f"k{i}"} for i, n in enumerate(names * 3)]
    lines.append({"audio": "audio/talk.wav", "segments": segments, "key": "talk"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    reports = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        reports.append(build_pool(jsonl_items(tmp_path / "m.jsonl"), out, kind="manifest", base_dir=tmp_path,
                                  splits=[("dev", 0.3)], workers=workers, progress=False))
    assert reports[0]["splits"] == reports[1]["splits"]
    for split in ("train", "dev"):
        assert read_index(tmp_path / "w1" / split) == read_index(tmp_path / "w2" / split)  # same sha256 per shard
    report = reports[0]
    assert report["splits"]["train"]["written"] + report["splits"]["dev"]["written"] == report["written"] == len(lines)
    dev = samples_of(tmp_path / "w1" / "dev")
    train = samples_of(tmp_path / "w1" / "train")
    assert not set(dev) & set(train)
    for key, s in {**dev, **train}.items():
        expected = split_of(s["meta"].get("source_key", key), [("dev", 0.3)]) or "train"
        assert (key in dev) == (expected == "dev"), key  # chunks follow their recording
    assert 0 < len(dev) < len(dev) + len(train)


def test_shards_read_by_plain_webdataset_and_tar(tmp_path):
    import webdataset as wds

    names = write_formats(tmp_path / "audio")
    lines = [{"audio": f"audio/{n}", "text": f"item {i}", "key": f"utt{i}"} for i, n in enumerate(names)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    build_pool(jsonl_items(tmp_path / "m.jsonl"), tmp_path / "pool", kind="manifest", base_dir=tmp_path,
               max_samples=4, progress=False)
    shards = [str(p) for p in list_shards(tmp_path / "pool")]
    assert len(shards) == 2
    seen = {}
    for sample in wds.WebDataset(shards, shardshuffle=False):
        meta = json.loads(sample["json"])
        audio, rate = sf.read(io.BytesIO(sample["flac"]))
        seen[sample["__key__"]] = (meta["text"], rate, audio.ndim)
    assert seen == {f"utt{i}": (f"item {i}", 16_000, 1) for i in range(len(FORMATS))}
    listing = subprocess.run(["tar", "-tf", shards[0]], capture_output=True, text=True, check=True).stdout.split()
    assert listing == [f"utt{i}.{ext}" for i in range(4) for ext in ("json", "flac")]
    with tarfile.open(shards[1]) as tf:
        assert [m.name for m in tf.getmembers()] == [f"utt{i}.{ext}" for i in (4, 5) for ext in ("json", "flac")]
