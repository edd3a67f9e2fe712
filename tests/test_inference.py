"""borealis/inference.py: file inputs, errors per file, windows of long audio, text merging."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from borealis.inference import InputError, expand_paths, merge_texts, plan_windows, read_audio

SR = 16_000


def bursts(seconds: float, on: float, gap: float, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Noise bursts of `on` s separated by `gap` s of near-silence; returns audio and burst spans."""
    rng = np.random.default_rng(seed)
    x = 1e-4 * rng.standard_normal(round(seconds * SR))
    spans, t = [], 0.2
    while t + on < seconds:
        a = round(t * SR)
        x[a:a + round(on * SR)] += 0.3 * rng.standard_normal(round(on * SR))
        spans.append((t, t + on))
        t += on + gap
    return x.astype(np.float32), spans


def test_expand_paths_files_folders_globs_and_missing(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.wav", "d/sub/a.flac", "d/notes.txt", "d/.hidden.wav", "c.ogg"):
        (tmp_path / name).write_bytes(b"x")
    got = expand_paths([tmp_path / "d", str(tmp_path / "*.ogg"), tmp_path / "missing.wav", tmp_path / "c.ogg"])
    assert got == [str(tmp_path / "d/b.wav"), str(tmp_path / "d/sub/a.flac"), str(tmp_path / "c.ogg"),
                   str(tmp_path / "missing.wav")]  # sorted per folder, duplicates dropped, missing kept


def test_read_audio_any_format_and_every_bad_input(tmp_path):
    t = np.arange(44_100) / 44_100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2, 1)
    sf.write(tmp_path / "ok.ogg", stereo, 44_100, format="OGG")
    audio = read_audio(tmp_path / "ok.ogg")
    assert audio.ndim == 1 and abs(audio.size - SR) < 200 and audio.dtype == np.float32
    sf.write(tmp_path / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(tmp_path / "short.wav", 0.3 * np.ones(SR // 10, np.float32), SR)
    (tmp_path / "bad.wav").write_bytes(b"RIFF garbage")
    for name, reason in [("missing.wav", "missing"), ("bad.wav", "undecodable"), ("silent.wav", "silent"),
                         ("short.wav", "too_short")]:
        with pytest.raises(InputError) as info:
            read_audio(tmp_path / name)
        assert info.value.reason == reason and name in info.value.detail


def test_windows_cut_at_pauses_without_overlap():
    x, spans = bursts(60.0, on=1.2, gap=0.4)
    windows = plan_windows(x, window=3.0, overlap=0.9)
    assert windows[0][0] == 0 and windows[-1][1] == x.size
    for (a, b), (c, _) in zip(windows, windows[1:]):
        assert b == c  # at a pause the next window starts at the cut: no overlap, no gap
        assert not any(s < b / SR < e for s, e in spans), b / SR  # never inside a burst
    assert all(0 < b - a <= 3 * SR for a, b in windows)


def test_windows_overlap_when_there_is_no_pause():
    x = (0.3 * np.random.default_rng(1).standard_normal(10 * SR)).astype(np.float32)
    windows = plan_windows(x, window=3.0, overlap=0.9)
    assert windows[0][0] == 0 and windows[-1][1] == x.size and all(b - a <= 3 * SR for a, b in windows)
    for (a, b), (c, d) in zip(windows, windows[1:]):
        assert a < c < b < d and b - c <= 0.9 * SR  # neighbours overlap by at most `overlap`
    with pytest.raises(ValueError, match="overlap must be"):
        plan_windows(x, window=3.0, overlap=1.0)


def test_min_pause_gives_one_window_per_utterance_starting_at_its_speech():
    x, spans = bursts(20.0, on=1.0, gap=0.5)
    windows = plan_windows(x, window=3.0, overlap=0.9, min_pause=0.25)
    assert len(windows) == len(spans)  # each burst its own window, though two would fit in 3 s
    for (a, b), (s, e) in zip(windows, spans):
        assert abs(a / SR - s) <= 0.015 and abs(b / SR - e) <= 0.015  # trimmed to the burst (10 ms margin)
    long_burst = np.concatenate([x[:SR], (0.3 * np.random.default_rng(3).standard_normal(7 * SR)).astype(np.float32)])
    windows = plan_windows(long_burst, window=3.0, overlap=0.9, min_pause=0.25)
    assert all(b - a <= 3 * SR for a, b in windows) and len(windows) >= 3  # a long stretch is still cut


def test_merge_texts_drops_what_the_overlap_heard_twice():
    assert merge_texts([("one two three", 0.3), ("three four five", 0.3), ("five six", 0.0)]) == \
        "one two three four five six"
    assert merge_texts([("call one two", 0.0), ("stop nine", 0.0)]) == "call one two stop nine"  # no overlap
    assert merge_texts([("a b c d e f", 0.2), ("e f g", 0.0)]) == "a b c d e f g"
    # a repeat far from the seam is not a seam: "two" early in the first text stays
    assert merge_texts([("two one one one one one one", 0.1), ("two three", 0.0)]) == \
        "two one one one one one one two three"
    assert merge_texts([("", 0.0), ("x y", 0.0)]) == "x y"


@pytest.mark.slow
def test_predict_on_files_through_the_cli(tmp_path, tiny_parts):
    """`borealis predict --data.predict.files`: one line per file in input order, long audio in
    windows covering it, and each bad file (missing, undecodable, silent, 0.1 s) an error line
    while the others complete."""
    import json
    from pathlib import Path

    from borealis.testing import run_cli

    enc, llm = tiny_parts
    window = json.loads((Path(enc) / "config.json").read_text())["max_source_positions"] * 2 / 100  # seconds
    audio = tmp_path / "audio"
    audio.mkdir()
    long, _ = bursts(3.5 * window, on=0.6 * window / 3, gap=0.1)
    sf.write(audio / "long.flac", long, SR)
    sf.write(audio / "short.wav", bursts(1.0, on=0.5, gap=0.2)[0], SR)
    sf.write(audio / "stereo.ogg", np.stack([bursts(1.0, on=0.5, gap=0.2, seed=2)[0]] * 2, 1), SR, format="OGG")
    sf.write(audio / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(audio / "tiny.wav", 0.3 * np.ones(SR // 10, np.float32), SR)
    (audio / "broken.mp3").write_bytes(b"ID3 not really")
    files = [str(audio / "long.flac"), str(audio / "short.wav"), str(audio / "missing.wav"),
             str(audio / "stereo.ogg"), str(audio / "silent.wav"), str(audio / "tiny.wav"), str(audio / "broken.mp3")]
    out_dir = tmp_path / "out"
    configs = Path(__file__).parents[1] / "configs"
    proc = run_cli("predict", "--config", str(configs / "it_fresh.yaml"), "--config", str(configs / "demo.yaml"),
                   "--model.encoder", str(enc), "--model.llm", str(llm), "--model.max_new_tokens", "3",
                   "--model.init_from", "null",  # tiny bases: models/demo/pretrain is the demo bases'
                   "--model.report_dir", str(out_dir), "--data.predict.sets", "{}", "--data.val_sets", "{}",
                   "--data.num_workers", "0", "--data.predict.min_pause", "null",
                   "--data.predict.files", json.dumps(files), cwd=tmp_path)
    rows = [json.loads(x) for x in (out_dir / "predictions.rank0.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == files
    errors = {Path(r["file"]).name: r["error"] for r in rows if "error" in r}
    assert errors == {"missing.wav": "missing", "silent.wav": "silent", "tiny.wav": "too_short",
                      "broken.mp3": "undecodable"}
    good = {Path(r["file"]).name: r for r in rows if "error" not in r}
    assert set(good) == {"long.flac", "short.wav", "stereo.ogg"}
    windows = good["long.flac"]["windows"]
    assert len(windows) >= 4 and windows[0]["start"] == 0 and windows[-1]["end"] == good["long.flac"]["duration"]
    assert all(w["end"] - w["start"] <= window + 1e-6 for w in windows)
    assert all(b["start"] <= a["end"] for a, b in zip(windows, windows[1:]))  # no gaps between windows
    assert all(isinstance(r["prediction"], str) for r in good.values())
    assert "4 failed" in proc.stderr + proc.stdout
