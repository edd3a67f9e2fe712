"""The train/benchmark overlap check (`borealis.shards.overlap`) on pools built in tmp_path.

The clips are seeded noise-modulated chirps (three log-sweeps under a random 8 Hz envelope,
in a little noise), different per seed: unlike tones of nearby frequencies, two seeds never
look alike to a coarse spectral fingerprint. Planted duplicates: a training clip resampled
to 44.1 or 22.05 kHz, delayed by 23 or 50 ms of silence and re-encoded as MP3, then built
into the benchmark through `borealis shards build manifest`'s code (`build_pool`); and a
training transcript repeated with other casing and punctuation.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import soxr

from borealis.ingest import build_pool
from borealis.shards import SAMPLE_RATE, iter_shard, list_shards
from borealis.shards.cli import main as shards_main
from borealis.shards.overlap import (
    SIDECAR,
    Prints,
    agreement,
    check_overlap,
    find_overlaps,
    pool_prints,
)

TINY_MODELS = ["--encoder-dim", "32", "--encoder-layers", "1", "--encoder-heads", "2", "--encoder-ffn", "64",
               "--llm-dim", "32", "--llm-layers", "1", "--llm-heads", "2", "--llm-kv-heads", "1", "--llm-head-dim", "16",
               "--llm-ffn", "64", "--vocab-size", "600"]  # the demo's models, as small as they build
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]


def chirps(seed: int, seconds: float) -> np.ndarray:
    """Speech-like, traceable audio: three log chirps (200-3000 Hz) whose ends depend on `seed`,
    under a squared random envelope of 8 steps per second, plus noise 34 dB down."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0, f1 = rng.uniform(200, 3000, (2, 3, 1))  # (start, end) x 3 chirps
    x = np.sin(2 * np.pi * f0 * seconds / np.log(f1 / f0) * ((f1 / f0) ** (t / seconds) - 1)).sum(axis=0)
    steps = int(seconds * 8) + 2
    x *= np.interp(t, np.linspace(0, seconds, steps), rng.random(steps)) ** 2
    x += 0.02 * rng.standard_normal(n)
    return (0.25 * x / np.abs(x).max()).astype(np.float32)


def sentence(seed: int) -> str:
    """A transcript that differs per seed."""
    rng = np.random.default_rng(1000 + seed)
    return " ".join(rng.choice(WORDS, 6)) + f" number {seed}"


def mp3_copy(audio: np.ndarray, path, rate: int, lead: float) -> None:
    """`audio` (16 kHz) delayed by `lead` seconds of silence, resampled to `rate` and saved as MP3."""
    x = np.concatenate([np.zeros(int(lead * SAMPLE_RATE), np.float32), audio])
    sf.write(path, soxr.resample(x, SAMPLE_RATE, rate), rate, format="MP3")


def build(tmp, name: str, rows: list[dict]) -> str:
    """A pool `tmp/name` from manifest rows {"key", "text", "audio": array or file name}."""
    corpus = tmp / f"{name}_corpus"
    corpus.mkdir()
    lines = []
    for r in rows:
        audio = r["audio"]
        if not isinstance(audio, str):
            sf.write(corpus / f"{r['key']}.wav", audio, SAMPLE_RATE, subtype="FLOAT")
            audio = f"{r['key']}.wav"
        lines.append(json.dumps({"key": r["key"], "text": r["text"], "language": "en", "audio": audio}))
    report = build_pool(lines, tmp / name, kind="manifest", base_dir=corpus, max_samples=4, progress=False)
    assert report["num_rejected"] == 0, report
    return str(tmp / name)


def clip_row(key: str, seed: int, seconds: float | None = None) -> dict:
    return {"key": key, "text": sentence(seed), "audio": chirps(seed, seconds or 1.5 + 0.3 * (seed % 7))}


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """Planted: train-3's audio as bench-mp3a (44.1 kHz, 23 ms) and train-5's as bench-mp3b
    (22.05 kHz, 50 ms), each with a new transcript; train-4's transcript, recased and
    repunctuated, as bench-text (new audio). Inside train: train-dup repeats train-1's audio
    (new transcript), train-retold train-2's transcript (new audio). Disjoint: seeds 100+
    and 200+."""
    tmp = tmp_path_factory.mktemp("overlap")
    train = [clip_row(f"train-{i}", i) for i in range(8)]
    train.append({"key": "train-dup", "text": sentence(50), "audio": train[1]["audio"]})
    train.append({"key": "train-retold", "text": sentence(2).upper() + "!", "audio": chirps(51, 2.0)})
    mp3a, mp3b = tmp / "bench_mp3a.mp3", tmp / "bench_mp3b.mp3"
    mp3_copy(train[3]["audio"], mp3a, 44100, 0.023)
    mp3_copy(train[5]["audio"], mp3b, 22050, 0.050)
    bench = [clip_row(f"bench-{i}", 20 + i) for i in range(5)]
    bench.append({"key": "bench-mp3a", "text": sentence(60), "audio": str(mp3a)})
    bench.append({"key": "bench-mp3b", "text": sentence(61), "audio": str(mp3b)})
    words = sentence(4).split()
    bench.append({"key": "bench-text", "text": f"{words[0].upper()}, {' '.join(words[1:3]).title()}... "
                                               f"{' '.join(words[3:])}?", "audio": chirps(62, 1.8)})
    return {"train": build(tmp, "train", train), "bench": build(tmp, "bench", bench),
            "train2": build(tmp, "train2", [clip_row(f"t2-{i}", 100 + i) for i in range(8)]),
            "bench2": build(tmp, "bench2", [clip_row(f"b2-{i}", 200 + i) for i in range(5)])}


def _pairs(finding) -> set[tuple[str, str]]:
    return {(a, b) for a, b, _ in finding.listed}


def test_planted_duplicates_are_found(pools):
    report = find_overlaps({"train": pools["train"], "bench": pools["bench"]}, benchmarks=["bench"], progress=False)
    found = {(f.kind, f.pool_a, f.pool_b): f for f in report.findings}
    assert set(found) == {("audio", "train", "train"), ("text", "train", "train"),
                          ("audio", "train", "bench"), ("text", "train", "bench")}
    assert _pairs(found["audio", "train", "bench"]) == {("train-3", "bench-mp3a"), ("train-5", "bench-mp3b")}
    assert _pairs(found["text", "train", "bench"]) == {("train-4", "bench-text")}
    assert _pairs(found["audio", "train", "train"]) == {("train-1", "train-dup")}
    assert _pairs(found["text", "train", "train"]) == {("train-2", "train-retold")}
    assert [(f.kind, f.pairs) for f in report.conflicts()] == [("audio", 2), ("text", 1)]
    assert report.lines()[-1] == "overlap: 2 train/benchmark overlap(s)"


def test_disjoint_pools_find_nothing(pools):
    report = find_overlaps({"t2": pools["train2"], "b2": pools["bench2"], "b1": pools["bench"]},
                           benchmarks=["b2", "b1"], progress=False)
    assert report.findings == []
    assert report.lines()[-1] == "overlap: no train/benchmark overlap"


def test_fingerprint_separates_copies_from_other_clips(pools):
    """Every pair of clips in the four pools: the planted copies agree above what a match
    needs, every other pair well below (the figures quoted in the module docstring)."""
    prints = Prints.concat([pool_prints(p, progress=False) for p in pools.values()])
    keys = list(prints.keys)
    i, j = np.triu_indices(len(keys), 1)
    score, margin = agreement(prints, np.stack([i, j], axis=1))
    copies = {("train-3", "bench-mp3a"), ("train-5", "bench-mp3b"), ("train-1", "train-dup")}
    planted = np.array([(keys[a], keys[b]) in copies for a, b in zip(i, j)])
    assert planted.sum() == 3
    assert margin[planted].min() >= 0.02, (score[planted], margin[planted])
    assert margin[~planted].max() <= -0.1 and score[~planted].max() <= 0.65, np.sort(score[~planted])[-5:]


def test_fingerprints_are_cached_per_shard(pools, monkeypatch):
    """The sidecar answers a second time; a shard whose sha256 changed is decoded again, alone;
    worker processes give the same fingerprints."""
    folder = list_shards(pools["bench2"])[0].parent
    (folder / SIDECAR).unlink(missing_ok=True)
    first = pool_prints(pools["bench2"], progress=False, workers=2)
    assert (folder / SIDECAR).is_file()
    from borealis.shards import overlap

    decoded = []
    real = overlap._shard_prints
    monkeypatch.setattr(overlap, "_shard_prints", lambda path, bar=None: decoded.append(path.name) or real(path, bar))
    again = pool_prints(pools["bench2"], progress=False)
    assert decoded == []
    for f in Prints.FIELDS:
        np.testing.assert_array_equal(getattr(again, f), getattr(first, f))
    index_path = folder / "index.json"
    original = index_path.read_text()
    index = json.loads(original)
    index["shards"][1]["sha256"] = "0" * 64  # as if shard 1 had been rebuilt
    index_path.write_text(json.dumps(index))
    try:
        assert len(pool_prints(pools["bench2"], progress=False)) == 5
        assert decoded == [index["shards"][1]["name"]]
    finally:
        index_path.write_text(original)


def test_text_only_samples_compare_by_messages(tmp_path):
    chat = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]
    recased = [{"role": "user", "content": "what is TWO plus two"}, {"role": "assistant", "content": "four"}]
    other = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Five."}]
    lines = [json.dumps({"key": k, "messages": m}) for k, m in [("a", chat), ("b", recased), ("c", other)]]
    build_pool(lines, tmp_path / "chats", kind="text", progress=False)
    report = find_overlaps({"chats": str(tmp_path / "chats")}, progress=False)
    assert [(f.kind, f.pairs, _pairs(f)) for f in report.findings] == [("text", 1, {("a", "b")})]
    assert report.pools["chats"]["audio"] == 0


def test_inspect_overlap_exits_1_on_planted_case(pools, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert shards_main(["inspect", pools["train"], "--overlap", "--benchmarks", pools["bench"], "--json", str(out),
                        "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "CONFLICT audio" in text and "bench-mp3a" in text and "train-4 ~ bench-text" in text
    doc = json.loads(out.read_text())["overlap"]
    assert sum(f["conflict"] for f in doc["findings"]) == 2
    listed = {tuple(pair[:2]) for f in doc["findings"] if f["conflict"] for pair in f["listed"]}
    assert listed == {("train-3", "bench-mp3a"), ("train-5", "bench-mp3b"), ("train-4", "bench-text")}
    assert doc["pools"][pools["bench"]]["role"] == "benchmark"
    assert shards_main(["inspect", pools["train2"], "--overlap", "--benchmarks", pools["bench2"],
                        "--no-progress"]) == 0


def test_check_overlap_names_pools_counts_and_keys(pools):
    with pytest.raises(ValueError) as e:
        check_overlap({"asr": pools["train"]}, {"bench_a": pools["bench"]}, progress=False,
                      hint="Or set data.allow_overlap: true.")
    msg = str(e.value)
    assert "'train:asr' / 'benchmark:bench_a'" in msg and "2 pair(s)" in msg
    assert "train-3 ~ bench-mp3a" in msg and "train-4 ~ bench-text" in msg
    assert msg.endswith("lists every pair. Or set data.allow_overlap: true.")
    check_overlap({"asr": pools["train2"]}, {"bench_a": pools["bench2"], "other": pools["bench"]}, progress=False)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_demo_speech_copies_match_and_its_benchmarks_are_held_out(tmp_path):
    """On espeak-ng speech (the demo corpus, `configs/demo.yaml`'s pools): its benchmarks share
    no sample with its training pools (so `fit` starts), the noisy benchmark is found as a copy
    of demo_en, MP3 copies of training clips are found, and no two different sentences of
    similar length match by audio."""
    from borealis.demo.build import make_corpus, parse_args

    out = tmp_path / "demo"
    make_corpus(parse_args(["--out", str(out), "--scale", "0.05", "--workers", "2", *TINY_MODELS]))
    shards = out / "shards"
    train = {p: str(shards / "train" / p) for p in ("asr_en", "asr_ru", "instruct", "text")}
    bench = {p: str(shards / "bench" / p) for p in ("demo_en", "demo_ru", "demo_en_random", "demo_ru_random",
                                                     "demo_en_noisy")}  # configs/demo.yaml's data.val_sets
    report = find_overlaps(train | bench, benchmarks=list(bench), progress=False)
    assert report.conflicts() == []
    noisy = {(f.kind, f.pool_a, f.pool_b): f for f in report.findings}
    for kind in ("audio", "text"):  # every noisy clip is a copy of its clean one
        f = noisy[kind, "demo_en", "demo_en_noisy"]
        assert f.samples_b == report.pools["demo_en_noisy"][kind] and all(a[8:] == b[14:] for a, b, _ in f.listed)

    clips = pool_prints(train["asr_en"], progress=False)
    texts = np.array([s["meta"]["text"] for p in list_shards(train["asr_en"]) for s in iter_shard(p)])
    long_enough = np.flatnonzero(clips.audio)[:6]
    rows = []
    for n, i in enumerate(long_enough):  # MP3 copies of six training clips, at 44.1 or 22.05 kHz
        path = tmp_path / f"copy{n}.mp3"
        audio = next(s["audio"] for p in list_shards(train["asr_en"]) for s in iter_shard(p)
                     if s["key"] == clips.keys[i])
        mp3_copy(audio, path, (44100, 22050)[n % 2], (0.023, 0.05)[n % 2])
        rows.append({"key": f"copy-{clips.keys[i]}", "text": f"copy {n}", "audio": str(path)})
    copies = find_overlaps({"asr_en": train["asr_en"], "copies": build(tmp_path, "copies", rows)},
                           benchmarks=["copies"], progress=False).conflicts()
    assert [(f.kind, sorted(b[5:] for _, b, _ in f.listed)) for f in copies] == [
        ("audio", sorted(str(k) for k in clips.keys[long_enough]))]

    i, j = np.triu_indices(len(clips), 1)
    near = clips.audio[i] & clips.audio[j] & (np.abs(clips.durations[i] - clips.durations[j]) <= 0.25)
    i, j = i[near], j[near]
    _, margin = agreement(clips, np.stack([i, j], axis=1))
    different = texts[i] != texts[j]
    assert different.sum() > 500 and margin[different].max() < 0


def test_fit_refuses_a_benchmark_in_a_training_pool(pools, tmp_path, tiny_parts):
    from borealis.commands import ConfigError
    from borealis.commands import main as borealis
    from borealis.data import BorealisDataModule, Pool

    def data(**kwargs):
        return BorealisDataModule(train_pools=[Pool("asr", pools["train"])], val_sets={"bench": pools["bench"]},
                                  **kwargs)

    [(key, err)] = data().problems("fit")
    assert key == "data.val_sets" and "'train:asr' / 'benchmark:bench'" in str(err)
    assert "train-3 ~ bench-mp3a" in str(err) and str(err).endswith("data.allow_overlap: true to train anyway.")
    with pytest.raises(ConfigError, match="overlap"):
        data().check("fit")
    assert data(allow_overlap=True).problems("fit") == [] and data().problems("validate") == []
    enc, llm = tiny_parts
    assert borealis(["fit", "--model.encoder", str(enc), "--model.llm", str(llm), "--trainer.accelerator", "cpu",
                     "--trainer.default_root_dir", str(tmp_path), "--data.train_pools",
                     json.dumps([{"name": "asr", "shards": pools["train"]}]),
                     "--data.val_sets", json.dumps({"bench": pools["bench"]})]) == 2
