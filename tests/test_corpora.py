"""borealis/corpora.py: the corpus readers (a LibriSpeech folder, a Common Voice release, a Hugging
Face dataset) each give items that `borealis shards build` writes or rejects with a reason naming
the file and line (or row).

Every corpus is made here from `borealis.testing`'s tones, whose frequency encodes the item.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from borealis.testing import tone, tone_id

from borealis.corpora import commonvoice_items, hf_items, librispeech_items
from borealis.shards import iter_shard, list_shards
from borealis.shards.cli import main as shards_main

# (rate, channels, file name, soundfile format) of the Hugging Face rows.
FORMATS = [(8_000, 1, "a.wav", "WAV"), (22_050, 2, "b.flac", "FLAC"), (44_100, 2, "c.wav", "WAV"),
           (48_000, 1, "d.ogg", "OGG")]


def clip(i: int, rate: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    """`borealis.testing.tone` for item i at `rate`, with `channels` identical channels."""
    x = tone(i, seconds, rate)
    return np.stack([x] * channels, 1) if channels > 1 else x


def samples_of(pool: Path) -> dict[str, dict]:
    return {s["key"]: s for p in list_shards(pool) for s in iter_shard(p)}


def build(argv: list[str]) -> int:
    """`borealis shards build ARGV...` in this process."""
    return shards_main(["build", *argv])


def test_librispeech_folder(tmp_path):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    chapter = root / "19" / "198"
    chapter.mkdir(parents=True)
    for i in range(3):
        sf.write(chapter / f"19-198-000{i}.flac", clip(i, 16_000), 16_000)
    (chapter / "19-198.trans.txt").write_bytes(
        b"19-198-0000 HELLO WORLD\n19-198-0001 SECOND LINE\n19-198-0002 \n19-198-0003 NO AUDIO\n"
        b"19-198-0004 CAF\xc9\n")
    out = tmp_path / "pool"
    assert build(["librispeech", "--input", str(root), "--output", str(out), "--no-progress"]) == 0
    report = json.loads((out / "build_report.json").read_text())
    assert (report["read"], report["written"]) == (5, 2)
    assert report["rejected"] == {"empty_text": 1, "missing_file": 1, "non_utf8": 1}
    assert report["rejections"]["non_utf8"][0]["file"] == "19/198/19-198.trans.txt"
    assert report["rejections"]["non_utf8"][0]["line"] == 5
    s = samples_of(out)["19-198-0001"]
    assert s["meta"] == {"text": "SECOND LINE", "language": "en", "source": "librispeech", "task": "asr",
                         "speaker": "19", "chapter": "198", "duration": 0.5}
    assert tone_id(s["audio"]) == 1
    assert [i.where for i in librispeech_items(root)][0] == {"file": "19/198/19-198.trans.txt", "line": 1}


def test_common_voice_release(tmp_path):
    root = tmp_path / "cv-corpus" / "ru"
    (root / "clips").mkdir(parents=True)
    for i in range(3):
        sf.write(root / "clips" / f"common_voice_ru_{i}.mp3", clip(i, 48_000, seconds=1.0), 48_000, format="MP3")
    header = "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment\n"
    rows = [f"abc{i}\tcommon_voice_ru_{i}.mp3\tsid{i}\tпредложение {i}\t\t2\t0\t{'twenties' if i else ''}\t\t\t\tru\t\n"
            for i in range(3)]
    rows.append("abc9\tcommon_voice_ru_9.mp3\tsid9\tнет файла\t\t2\t0\t\t\t\t\tru\t\n")
    rows.append("short\trow\n")
    (root / "train.tsv").write_text(header + "".join(rows), encoding="utf-8")
    out = tmp_path / "pool"
    assert build(["commonvoice", "--input", str(root), "--output", str(out), "--no-progress", "--workers", "2"]) == 0
    report = json.loads((out / "build_report.json").read_text())
    assert (report["read"], report["written"], report["rejected"]) == (5, 3, {"bad_field": 1, "missing_file": 1})
    assert report["rejections"]["bad_field"][0] == {"file": "train.tsv", "line": 6, "key": None,
                                                    "detail": "train.tsv:6 has 2 fields, the header 13"}
    s = samples_of(out)
    assert s["common_voice_ru_1"]["meta"] == {"text": "предложение 1", "language": "ru", "source": "common_voice",
                                              "task": "asr", "speaker": "abc1", "age": "twenties", "duration": 1.0}
    assert "age" not in s["common_voice_ru_0"]["meta"]  # empty columns are dropped
    assert tone_id(s["common_voice_ru_2"]["audio"]) == 2
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        list(commonvoice_items(root, "dev.tsv"))


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_hugging_face_dataset(tmp_path, layout):
    datasets = pytest.importorskip("datasets")
    rows = {"audio": [], "sentence": [], "id": [], "speaker_id": []}
    for i, (rate, channels, name, fmt) in enumerate(FORMATS[:4]):
        buf = io.BytesIO()
        sf.write(buf, clip(i, rate, channels=channels), rate, format=fmt)
        rows["audio"].append({"bytes": buf.getvalue(), "path": name})
        rows["sentence"].append(f"row {i}" if i != 2 else "")
        rows["id"].append(f"utt-{i}")
        rows["speaker_id"].append(10 + i)
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    if layout == "save_to_disk":
        datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "ds"))
        argv = ["--input", str(tmp_path / "ds"), "--hf-split", "train"]
    else:
        (tmp_path / "pq").mkdir()
        ds.to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
        argv = ["--input", str(tmp_path / "pq")]
    out = tmp_path / "pool"
    assert build(["hf", *argv, "--output", str(out), "--language", "en", "--no-progress"]) == 0
    report = json.loads((out / "build_report.json").read_text())
    assert (report["read"], report["written"], report["rejected"]) == (4, 3, {"empty_text": 1})
    assert report["rejections"]["empty_text"][0]["row"] == 2
    s = samples_of(out)
    assert set(s) == {"utt-0", "utt-1", "utt-3"}
    assert s["utt-1"]["meta"] == {"text": "row 1", "language": "en", "task": "asr", "audio_path": "b.flac",
                                  "speaker_id": 11, "duration": 0.5}
    for i in (0, 1, 3):
        assert tone_id(s[f"utt-{i}"]["audio"]) == i
    if layout == "save_to_disk":
        with pytest.raises(ValueError, match="choose one with --hf-split"):
            hf_items(tmp_path / "ds")
