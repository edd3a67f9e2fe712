"""tools/build_shards.py: every input line is written or rejected with a reason, keys are
deterministic, and the CLI runs end to end (once through a subprocess)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from borealis.shards import iter_shard, list_shards, read_index

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER = "<|start_of_audio|><|end_of_audio|>"


def _load_tool():
    """tools/ is not a package: import the script as a module, as tools/make_demo_corpus.py could."""
    if str(REPO / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "tools"))
    return importlib.import_module("build_shards")


bs = _load_tool()


def tone(i: int, rate: int, seconds: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32)


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """A manifest with 4 good lines and one of each audio-side rejection, plus a blank line."""
    clips = tmp_path / "corpus" / "clips"
    clips.mkdir(parents=True)
    sf.write(clips / "a.wav", tone(0, 16_000), 16_000)
    sf.write(clips / "b b.flac", np.stack([tone(1, 44_100)] * 2, 1), 44_100)  # stereo 44.1 kHz
    sf.write(clips / "c.wav", tone(2, 22_050), 22_050)
    (clips / "broken.wav").write_bytes(b"RIFF not really a wav")
    lines = [
        {"audio": "clips/a.wav", "text": "alpha", "language": "en", "speaker": "s1"},
        {"audio": "clips/b b.flac", "text": "бета", "language": "ru", "source": "own"},
        {"audio": "clips/c.wav", "key": "custom-key", "messages": [
            {"role": "user", "content": f"What is it? {PLACEHOLDER}"}, {"role": "assistant", "content": "a tone"}]},
        {"audio": str(clips / "a.wav"), "text": "absolute path"},      # written: a different path string
        {"audio": "clips/missing.wav", "text": "gone"},                # missing_file
        {"audio": "clips/broken.wav", "text": "broken"},               # undecodable_audio
        {"audio": "clips/c.wav", "text": "   "},                       # empty_text
        {"audio": "clips/a.wav", "text": "alpha again"},               # duplicate_key (same path)
        {"audio": "clips/c.wav", "messages": [{"role": "user", "content": "no placeholder"},
                                              {"role": "assistant", "content": "x"}]},  # bad_messages
        {"audio": "clips/c.wav", "text": "t", "key": "bad.key"},       # bad_field
    ]
    text = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines)
    text += "\n{this is not json\n\n"                                 # bad_json, then a blank line
    manifest = tmp_path / "corpus" / "manifest.jsonl"
    manifest.write_text(text, encoding="utf-8")
    return manifest


def test_build_pool_accounts_for_every_line(corpus, tmp_path):
    out = tmp_path / "pool"
    with open(corpus, encoding="utf-8") as f:
        report = bs.build_pool(f, out, kind="manifest", base_dir=corpus.parent, source="demo", progress=False)
    assert report["read"] == 11 and report["written"] == 4
    assert report["rejected"] == {"bad_json": 1, "bad_field": 1, "missing_file": 1, "undecodable_audio": 1,
                                  "empty_text": 1, "bad_messages": 1, "duplicate_key": 1}
    assert report["written"] + report["num_rejected"] == report["read"]
    assert json.loads((out / "build_report.json").read_text()) == report
    assert report["rejections"]["missing_file"] == [
        {"line": 5, "key": bs.audio_key("clips/missing.wav"),
         "detail": f"audio file {corpus.parent / 'clips/missing.wav'} does not exist"}]
    assert report["rejections"]["bad_json"][0]["line"] == 11
    assert report["rejections"]["duplicate_key"][0]["key"] == bs.audio_key("clips/a.wav")

    index = read_index(out)
    assert index["num_samples"] == 4 and index["tasks"] == {"asr": 3, "instruct": 1}
    samples = {s["key"]: s for p in list_shards(out) for s in iter_shard(p)}
    a = samples[bs.audio_key("clips/a.wav")]
    assert a["meta"] == {"text": "alpha", "language": "en", "source": "demo", "task": "asr",
                         "speaker": "s1", "duration": 0.3}
    b = samples[bs.audio_key("clips/b b.flac")]
    assert b["meta"]["source"] == "own" and b["audio"].shape == (4800,)  # 0.3 s at 16 kHz, mono
    c = samples["custom-key"]
    assert c["meta"]["task"] == "instruct" and c["meta"]["messages"][1]["content"] == "a tone"
    assert "text" not in c["meta"] and c["duration"] == pytest.approx(0.3)


def test_keys_are_deterministic_and_sanitised():
    k = bs.audio_key("clips/Привет мир (1).wav")
    assert k == bs.audio_key("clips/Привет мир (1).wav") and k.startswith("1-")
    assert bs.audio_key("x/Hello World.v2.wav").startswith("Hello_World_v2-")
    assert bs.audio_key("a/x.wav") != bs.audio_key("b/x.wav")
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert bs.chat_key(chat) == bs.chat_key([dict(m) for m in chat]) != bs.chat_key(chat[:1])


def test_text_pool(tmp_path):
    good = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "language": "en"}
    items = [
        good,
        {"key": "k1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"language": "en"},                                                            # missing_messages
        {"messages": [{"role": "user", "content": f"hear {PLACEHOLDER}"},
                      {"role": "assistant", "content": "x"}]},                         # bad_messages: audio
        {"messages": [{"role": "user", "content": "no answer"}]},                      # bad_messages
        good,                                                                          # duplicate_key
        "[1, 2]",                                                                      # bad_json
    ]
    report = bs.build_pool(items, tmp_path, kind="text", progress=False)
    assert (report["read"], report["written"]) == (7, 2)
    assert report["rejected"] == {"bad_json": 1, "missing_messages": 1, "bad_messages": 2, "duplicate_key": 1}
    samples = [s for p in list_shards(tmp_path) for s in iter_shard(p)]
    assert [s["key"] for s in samples] == [bs.chat_key(good["messages"]), "k1"]
    assert all(s["audio"] is None and s["meta"]["task"] == "chat" for s in samples)
    with pytest.raises(ValueError, match="kind must be one of"):
        bs.build_pool([], tmp_path, kind="audio", progress=False)


def test_strict_exit_code_in_process(corpus, tmp_path, capsys):
    code = bs.main(["manifest", "--input", str(corpus), "--output", str(tmp_path / "strict"), "--strict",
                    "--no-progress", "--max-bytes", "1M"])
    assert code == 1
    assert "rejected 7" in capsys.readouterr().out
    assert read_index(tmp_path / "strict")["num_samples"] == 4  # the pool is still written


def test_cli_subprocess(corpus, tmp_path):
    out = tmp_path / "cli_pool"
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_shards.py"), "manifest", "--input", str(corpus),
         "--output", str(out), "--max-samples", "2", "--source", "cli"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "read 11, written 4, rejected 7" in run.stdout
    index = read_index(out)
    assert [s["num_samples"] for s in index["shards"]] == [2, 2]
    assert json.loads((out / "build_report.json").read_text())["written"] == 4
