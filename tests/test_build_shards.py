"""`borealis shards build` (borealis/ingest/ + borealis/shards/cli.py): every input line (or file,
for noise/IR folders) is written or rejected with a reason, keys are deterministic, noise/IR pools
feed the augmentation effects, and the command runs end to end (once through a subprocess)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from borealis.corpora import list_audio_files
from borealis.ingest import audio_key, build_pool, chat_key, summary_line
from borealis.shards import iter_shard, list_shards, read_index
from borealis.shards.cli import build_parser
from borealis.shards.cli import main as shards_main

PLACEHOLDER = "<|start_of_audio|><|end_of_audio|>"



def build(argv: list[str]) -> int:
    """`borealis shards build ARGV...` in this process."""
    return shards_main(["build", *argv])


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
        report = build_pool(f, out, kind="manifest", base_dir=corpus.parent, source="demo", progress=False)
    assert report["read"] == 11 and report["written"] == 4
    assert report["rejected"] == {"bad_json": 1, "bad_field": 1, "missing_file": 1, "undecodable_audio": 1,
                                  "empty_text": 1, "bad_messages": 1, "duplicate_key": 1}
    assert report["written"] + report["num_rejected"] == report["read"]
    assert json.loads((out / "build_report.json").read_text()) == report
    assert report["rejections"]["missing_file"] == [
        {"line": 5, "key": audio_key("clips/missing.wav"),
         "detail": f"audio file {corpus.parent / 'clips/missing.wav'} does not exist"}]
    assert report["rejections"]["bad_json"][0]["line"] == 11
    assert report["rejections"]["duplicate_key"][0]["key"] == audio_key("clips/a.wav")

    index = read_index(out)
    assert index["num_samples"] == 4 and index["tasks"] == {"asr": 3, "instruct": 1}
    samples = {s["key"]: s for p in list_shards(out) for s in iter_shard(p)}
    a = samples[audio_key("clips/a.wav")]
    assert a["meta"] == {"text": "alpha", "language": "en", "source": "demo", "task": "asr",
                         "speaker": "s1", "duration": 0.3}
    b = samples[audio_key("clips/b b.flac")]
    assert b["meta"]["source"] == "own" and b["audio"].shape == (4800,)  # 0.3 s at 16 kHz, mono
    c = samples["custom-key"]
    assert c["meta"]["task"] == "instruct" and c["meta"]["messages"][1]["content"] == "a tone"
    assert "text" not in c["meta"] and c["duration"] == pytest.approx(0.3)


def test_keys_are_deterministic_and_sanitised():
    k = audio_key("clips/Привет мир (1).wav")
    assert k == audio_key("clips/Привет мир (1).wav") and k.startswith("1-")
    assert audio_key("x/Hello World.v2.wav").startswith("Hello_World_v2-")
    assert audio_key("a/x.wav") != audio_key("b/x.wav")
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert chat_key(chat) == chat_key([dict(m) for m in chat]) != chat_key(chat[:1])


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
    report = build_pool(items, tmp_path, kind="text", progress=False)
    assert (report["read"], report["written"]) == (7, 2)
    assert report["rejected"] == {"bad_json": 1, "missing_messages": 1, "bad_messages": 2, "duplicate_key": 1}
    samples = [s for p in list_shards(tmp_path) for s in iter_shard(p)]
    assert [s["key"] for s in samples] == [chat_key(good["messages"]), "k1"]
    assert all(s["audio"] is None and s["meta"]["task"] == "chat" for s in samples)
    with pytest.raises(ValueError, match="kind must be one of"):
        build_pool([], tmp_path, kind="audio", progress=False)


def test_strict_exit_code_in_process(corpus, tmp_path, capsys):
    code = build(["manifest", "--input", str(corpus), "--output", str(tmp_path / "strict"), "--strict",
                    "--no-progress", "--max-bytes", "1M"])
    assert code == 1
    assert "rejected 7" in capsys.readouterr().out
    assert read_index(tmp_path / "strict")["num_samples"] == 4  # the pool is still written


def test_cli_subprocess(corpus, tmp_path):
    out = tmp_path / "cli_pool"
    run = subprocess.run(
        [sys.executable, "-m", "borealis.commands", "shards", "build", "manifest", "--input", str(corpus),
         "--output", str(out), "--max-samples", "2", "--source", "cli"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "read 11, written 4, rejected 7" in run.stdout
    index = read_index(out)
    assert [s["num_samples"] for s in index["shards"]] == [2, 2]
    assert json.loads((out / "build_report.json").read_text())["written"] == 4


# ----------------------------------------------------------------------------- audio-folder (noise / IR)
def noise_clip(seed: int, frames: int, channels: int = 1) -> np.ndarray:
    shape = (frames,) if channels == 1 else (frames, channels)
    return (0.2 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def decaying_ir(rate: int, seconds: float, rt60: float = 0.4) -> np.ndarray:
    """A direct-path impulse at t=0, then noise decaying 60 dB per `rt60` seconds."""
    t = np.arange(round(seconds * rate)) / rate
    ir = 0.3 * np.random.default_rng(1).standard_normal(t.size) * 10 ** (-3 * t / rt60)
    ir[0] = 0.9
    return ir.astype(np.float32)


@pytest.fixture()
def noise_folder(tmp_path) -> Path:
    """4 good clips (stereo 44.1 kHz FLAC, Ogg Vorbis in a sub-folder, MP3), 4 bad ones, 3 ignored files."""
    root = tmp_path / "noise"
    (root / "street" / "night").mkdir(parents=True)
    sf.write(root / "cafe.wav", noise_clip(0, 16_000), 16_000)                        # 1.0 s
    sf.write(root / "street" / "bus stop.flac", noise_clip(1, 22_050, 2), 44_100)      # 0.5 s, stereo
    sf.write(root / "street" / "night" / "hum.ogg", noise_clip(2, 33_075), 22_050)     # 1.5 s, Vorbis
    sf.write(root / "traffic.mp3", noise_clip(4, 48_000), 24_000, format="MP3")         # 2.0 s, MP3
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")            # undecodable_audio
    (root / "empty.wav").write_bytes(b"")                                               # empty_audio (0 bytes)
    sf.write(root / "no_frames.wav", np.zeros(0, np.float32), 16_000)                  # empty_audio (0 frames)
    sf.write(root / "silence.wav", np.zeros(8000, np.float32), 16_000)                  # silent_audio
    (root / "README.txt").write_text("licence: CC-BY")                                  # ignored: not audio
    (root / "._cafe.wav").write_bytes(b"\x00\x05\x16\x07")                              # ignored: hidden
    (root / ".cache").mkdir()
    sf.write(root / ".cache" / "x.wav", noise_clip(3, 1600), 16_000)                    # ignored: hidden folder
    return root


GOOD_NOISE = {"cafe.wav": 1.0, "street/bus stop.flac": 0.5, "street/night/hum.ogg": 1.5, "traffic.mp3": 2.0}


def test_audio_folder_noise_accounts_for_every_file(noise_folder, tmp_path):
    files, ignored = list_audio_files(noise_folder)
    assert ignored == ["._cafe.wav", ".cache/x.wav", "README.txt"]
    out = tmp_path / "pool"
    report = build_pool([{"audio": f} for f in files], out, kind="noise", base_dir=noise_folder,
                           ignored=ignored, progress=False)
    assert (report["read"], report["written"], report["num_rejected"]) == (8, 4, 4)
    assert report["written"] + report["num_rejected"] == report["read"] == len(files)
    assert report["rejected"] == {"undecodable_audio": 1, "empty_audio": 2, "silent_audio": 1}
    named = {r["file"]: (reason, r["detail"]) for reason, rows in report["rejections"].items() for r in rows}
    assert set(named) == {"corrupt.wav", "empty.wav", "no_frames.wav", "silence.wav"}
    for file, (reason, detail) in named.items():
        assert str(noise_folder / file) in detail, detail  # the message names the file ...
    assert "0 bytes" in named["empty.wav"][1] and "no audio frames" in named["no_frames.wav"][1]
    assert "silent" in named["silence.wav"][1]  # ... and the reason
    assert (report["ignored"], report["cropped"], report["max_seconds"]) == (3, 0, None)
    assert json.loads((out / "build_report.json").read_text()) == report

    samples = {s["key"]: s for p in list_shards(out) for s in iter_shard(p)}
    assert set(samples) == {audio_key(f) for f in GOOD_NOISE}
    for file, seconds in GOOD_NOISE.items():
        s = samples[audio_key(file)]
        assert s["meta"] == {"kind": "noise", "source": file, "duration": seconds}  # no text, no task
        assert s["audio"].shape == (round(seconds * 16_000),)  # 16 kHz mono, stereo 44.1 kHz resampled
    assert read_index(out)["num_samples"] == 4


def test_noise_pool_feeds_background_noise(noise_folder, tmp_path):
    from borealis.augmentations import BackgroundNoise

    out = tmp_path / "noise_pool"
    assert build(["audio-folder", "--input", str(noise_folder), "--kind", "noise", "--output", str(out),
                    "--no-progress"]) == 0
    effect = BackgroundNoise(pool=str(out), snr_db=(10.0, 10.0), p=1.0)
    effect.check()
    speech = tone(3, 16_000, seconds=2.0)
    rng = np.random.default_rng(0)
    for _ in range(6):
        noisy = effect.apply(speech, rng)
        assert noisy.shape == speech.shape and noisy.dtype == np.float32
        assert effect.last["noise"] in {audio_key(f) for f in GOOD_NOISE}
        snr = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean((noisy - speech).astype(np.float64) ** 2))
        assert snr == pytest.approx(10.0, abs=0.1)


def test_ir_folder_crops_rejects_silence_and_feeds_impulse_response(tmp_path):
    from borealis.augmentations import ImpulseResponse

    root = tmp_path / "irs"
    root.mkdir()
    sf.write(root / "room.wav", decaying_ir(16_000, 0.5, rt60=0.3), 16_000)
    sf.write(root / "hall.flac", np.stack([decaying_ir(48_000, 3.0, rt60=1.5)] * 2, 1), 48_000)  # cropped
    sf.write(root / "dead.wav", np.full(4000, 2e-5, np.float32), 16_000)  # -94 dBFS: silent_audio
    out = tmp_path / "ir_pool"
    files, _ = list_audio_files(root)
    report = build_pool([{"audio": f} for f in files], out, kind="ir", base_dir=root, max_seconds=1.0,
                           progress=False)
    assert (report["read"], report["written"], report["rejected"]) == (3, 2, {"silent_audio": 1})
    assert report["rejections"]["silent_audio"][0]["file"] == "dead.wav"
    assert (report["cropped"], report["max_seconds"]) == (1, 1.0)
    assert "cropped 1 to 1 s" in summary_line(report)
    samples = {s["meta"]["source"]: s for p in list_shards(out) for s in iter_shard(p)}
    assert samples["hall.flac"]["meta"] == {"kind": "ir", "source": "hall.flac", "cropped_from": 3.0, "duration": 1.0}
    assert samples["room.wav"]["meta"] == {"kind": "ir", "source": "room.wav", "duration": 0.5}

    effect = ImpulseResponse(pool=str(out), p=1.0)
    speech = tone(0, 16_000, seconds=1.0)
    wet = effect.apply(speech, np.random.default_rng(0))
    assert wet.shape == speech.shape and effect.last["ir"] in {audio_key(f) for f in ("room.wav", "hall.flac")}
    with pytest.raises(ValueError, match="max_seconds must be finite and > 0"):
        build_pool([], out, kind="ir", max_seconds=0.0, progress=False)


def test_audio_folder_cli_strict_help_and_errors(noise_folder, tmp_path, capsys):
    out = tmp_path / "strict"
    assert build(["audio-folder", "--input", str(noise_folder), "--kind", "ir", "--output", str(out),
                    "--strict", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "read 8, written 4, rejected 4" in captured.out and "ignored 3" in captured.out
    assert f"empty_audio: 2, e.g. {noise_folder / 'empty.wav'}: empty file (0 bytes)" in captured.out
    assert "--strict: 4 item(s) rejected" in captured.err
    assert read_index(out)["num_samples"] == 4  # the pool is still written

    for argv, message in [
        (["--input", str(noise_folder / "cafe.wav"), "--kind", "noise"], "is not a folder"),
        (["--input", str(noise_folder), "--kind", "music"], "invalid choice"),
        (["--input", str(noise_folder), "--kind", "ir", "--max-seconds", "0"], "finite number of seconds > 0"),
        (["--input", str(noise_folder), "--kind", "ir", "--max-seconds", "inf"], "finite number of seconds > 0"),
        (["--input", str(noise_folder), "--kind", "ir", "--extensions", "mp4"], "no audio files (mp4)"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            build(["audio-folder", *argv, "--output", str(tmp_path / "x")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, argv

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    sub = subcommands(subcommands(build_parser())["build"])
    for name, parser in sub.items():  # every option of every subcommand is documented
        for action in parser._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    folder_options = set(sub["audio-folder"]._option_string_actions)
    assert {"--kind", "--max-seconds", "--extensions", "--strict"} <= folder_options
    assert "--source" not in folder_options  # the path relative to --input is the source


def test_audio_folder_pool_is_deterministic_and_location_free(noise_folder, tmp_path):
    moved = tmp_path / "elsewhere" / "noise"
    shutil.copytree(noise_folder, moved)
    indexes = []
    for root, out in [(noise_folder, tmp_path / "a"), (moved, tmp_path / "b")]:
        files, ignored = list_audio_files(root)
        build_pool([{"audio": f} for f in files], out, kind="noise", base_dir=root, ignored=ignored,
                      progress=False)
        indexes.append(read_index(out))
    assert indexes[0] == indexes[1]  # same sha256: keys and sources are relative to the folder
