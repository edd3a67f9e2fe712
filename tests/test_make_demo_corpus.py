"""Tests for tools/make_demo_corpus.py: the sentence plan, noise, the noise/IR augmentation
pools, the tiny models and tokenizer, and one tiny end-to-end build (~70 espeak clips, 100
noise/IR clips, a few seconds) read back.

espeak-ng is a Debian package; tests that synthesise speech are skipped without it.
Everything runs offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import load_tool

os.environ.setdefault("HF_HUB_OFFLINE", "1")
mdc = load_tool("make_demo_corpus")

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SCALE = 0.01  # asr 40 per language, instruct 3 + text 3 per language, bench 2 per language
TINY_ARGS = [
    "--scale", str(SCALE), "--shard-size", "16", "--workers", "2",
    "--encoder-dim", "32", "--encoder-layers", "1", "--encoder-heads", "2", "--encoder-ffn", "64",
    "--llm-dim", "32", "--llm-layers", "1", "--llm-heads", "2", "--llm-kv-heads", "1",
    "--llm-head-dim", "16", "--llm-ffn", "64", "--vocab-size", "600",
]
POOLS = ["train/asr_en", "train/asr_ru", "train/instruct", "train/text",
         "bench/demo_en", "bench/demo_ru", "bench/demo_en_noisy"]
CLIP_POOLS = ["noise", "ir"]  # demo/shards/noise, demo/shards/ir: configs/demo.yaml names these paths


def read_pool(pool_dir: Path) -> list[tuple[dict, bool]]:
    """(meta, has_audio) of every sample in a pool, via its index and plain tarfile."""
    index = json.loads((pool_dir / "index.json").read_text())
    out = []
    for shard in index["shards"]:
        with tarfile.open(pool_dir / shard["name"]) as tf:
            names = tf.getnames()
            for name in names:
                if name.endswith(".json"):
                    meta = json.loads(tf.extractfile(name).read())
                    out.append((meta, name[:-5] + ".flac" in names))
    return out


def expected_counts() -> dict[str, int]:
    c = mdc.Counts().scaled(SCALE)
    return {"train/asr_en": c.asr, "train/asr_ru": c.asr, "train/instruct": 2 * c.instruct,
            "train/text": 2 * c.text, "bench/demo_en": c.bench, "bench/demo_ru": c.bench,
            "bench/demo_en_noisy": c.bench}


# ----------------------------------------------------------------------------- no espeak needed
@pytest.mark.parametrize("language", ["en", "ru"])
def test_sentences_are_seeded_short_lowercase_and_in_vocabulary(language):
    a = mdc.make_sentences(language, 300, mdc.rng_for(0, "x"))
    assert a == mdc.make_sentences(language, 300, mdc.rng_for(0, "x"))
    assert a != mdc.make_sentences(language, 300, mdc.rng_for(1, "x"))
    vocab = set(mdc.LANGUAGES[language].vocabulary)
    for s in a:
        assert re.fullmatch(r"[a-zа-я]+( [a-zа-я]+)*", s), s
        assert mdc.MIN_WORDS <= len(s.split()) <= mdc.MAX_WORDS, s
        assert set(s.split()) <= vocab, s
    assert 14 <= len(vocab) <= 30  # 10 digits + a few command words


def test_make_sentences_errors_name_the_problem(monkeypatch):
    with pytest.raises(ValueError, match="'de'"):
        mdc.make_sentences("de", 1, mdc.rng_for(0, "x"))
    monkeypatch.setattr(mdc, "make_sentence", lambda language, rng: "go left")  # an exhausted grammar
    with pytest.raises(ValueError, match="1 of 2 distinct en"):
        mdc.make_sentences("en", 2, mdc.rng_for(0, "x"), unique=True)


def test_plan_holds_out_benchmark_sentences_and_voices():
    plan = mdc.plan_corpus(0, mdc.Counts(asr=400, instruct=50, text=50, bench=60))
    assert plan == mdc.plan_corpus(0, mdc.Counts(asr=400, instruct=50, text=50, bench=60))
    train = [s for p, ss in plan.pools.items() if p.startswith("train/") for s in ss]
    bench = [s for p, ss in plan.pools.items() if p.startswith("bench/") for s in ss]
    for code in ("en", "ru"):
        held = plan.bench_sentences[code]
        assert len(held) == 60
        assert not held & {s.meta["text"] for s in train if "text" in s.meta and s.meta["language"] == code}
        quoted = [m["content"] for s in train if s.meta["task"] == "chat" for m in s.meta["messages"]]
        assert not any(f'"{h}"' in q for h in held for q in quoted)
    train_variants = {s.job.voice.partition("+")[2] for s in train if s.job}
    bench_variants = {s.job.voice.partition("+")[2] for s in bench}
    assert bench_variants <= set(mdc.BENCH_VARIANTS) and not bench_variants & train_variants
    assert len(train_variants) > 10  # voices do vary in training
    clean, noisy = plan.pools["bench/demo_en"], plan.pools["bench/demo_en_noisy"]
    assert [s.job for s in clean] == [s.job for s in noisy] and all(s.noise for s in noisy)


def test_instruction_and_chat_answers_follow_the_transcript():
    en, ru = mdc.LANGUAGES["en"], mdc.LANGUAGES["ru"]
    assert mdc.answer(en, "first", "open the door") == "open"
    assert mdc.answer(en, "last", "open the door") == "door"
    assert mdc.answer(en, "count", "open the door") == "three"
    assert mdc.answer(ru, "count", "включи свет на кухне") == "четыре"
    plan = mdc.plan_corpus(3, mdc.Counts(asr=1, instruct=40, text=40, bench=1))
    for s in plan.pools["train/instruct"]:
        prompt, reply = (m["content"] for m in s.meta["messages"])
        assert prompt.endswith(" <|start_of_audio|><|end_of_audio|>")
        words = s.meta["text"].split()
        assert reply in (words[0], words[-1], mdc.LANGUAGES[s.meta["language"]].digits[len(words)])
    after = [s for s in plan.pools["train/text"] if s.meta["messages"][0]["content"].startswith("What comes after")]
    for s in after:
        q, a = (m["content"] for m in s.meta["messages"])
        assert en.digits.index(a) == en.digits.index(q.split()[-1].rstrip("?")) + 1


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_add_noise_hits_the_snr(kind):
    t = np.arange(22050) / 22050
    clean = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    noisy = mdc.add_noise(clean, kind, 20.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert noisy.dtype == np.float32 and abs(snr - 20.0) < 0.5
    with pytest.raises(ValueError, match="brown"):
        mdc.add_noise(clean, "brown", 20.0, np.random.default_rng(0))


def band_db(x: np.ndarray, low: tuple[float, float], high: tuple[float, float], rate: int = 16_000) -> float:
    """Power in band `low` over power in band `high`, in dB."""
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / rate)
    return float(10 * np.log10(power[(f >= low[0]) & (f < low[1])].sum() / power[(f >= high[0]) & (f < high[1])].sum()))


@pytest.mark.parametrize(("colour", "slope_db"), [("white", -12.0), ("pink", 0.0), ("brown", 12.0)])
def test_coloured_noise_spectra(colour, slope_db):
    """100-200 Hz against 1600-3200 Hz (16x the bandwidth): white -12 dB, pink (1/f) flat per
    octave, brown (1/f^2) +12 dB."""
    n = 16_000 * 6
    x = mdc.coloured_noise(n, colour, np.random.default_rng(0), floor_bin=20 * n / 16_000)
    assert band_db(x, (100, 200), (1600, 3200)) == pytest.approx(slope_db, abs=1.5)
    assert np.array_equal(x, mdc.coloured_noise(n, colour, np.random.default_rng(0), floor_bin=20 * n / 16_000))
    with pytest.raises(ValueError, match="violet"):
        mdc.coloured_noise(n, "violet", np.random.default_rng(0))


def test_mains_hum_and_impulse_response():
    hum = mdc.mains_hum(16_000 * 4, 60.0, 5, 30.0, np.random.default_rng(0))
    power = np.abs(np.fft.rfft(hum)) ** 2
    f = np.fft.rfftfreq(hum.size, 1 / 16_000)
    peaks = f[np.argsort(power)[-5:]]
    assert sorted(np.round(peaks).tolist()) == [60, 120, 180, 240, 300]  # the fundamental and 4 harmonics

    ir = mdc.impulse_response(0.6, 10.0, 0.5, np.random.default_rng(0))
    assert ir.size == 1 + 160 + 9600  # direct path, 10 ms pre-delay, RT60
    assert int(np.argmax(np.abs(ir))) == 0 and ir[0] == mdc.IR_DIRECT  # the direct path is the peak
    assert not ir[1:161].any() and np.abs(ir[161:]).max() == pytest.approx(0.5 * mdc.IR_DIRECT)
    tail = ir[161:] ** 2
    first, last = tail[:2400].sum(), tail[-2400:].sum()  # first and last quarter of the tail
    assert 10 * np.log10(last / first) < -35  # 60 dB over the RT60: ~45 dB between the quarters


def test_plan_noise_and_irs_use_training_speech_only():
    counts = mdc.Counts(asr=40, instruct=3, text=3, bench=5)
    assert counts.scaled(0.01).noise == counts.noise == 12 and counts.scaled(0.01).ir == 40  # not scaled
    plan = mdc.plan_corpus(0, counts)
    assert plan == mdc.plan_corpus(0, counts)
    noise, irs = plan.clip_pools["noise"], plan.clip_pools["ir"]
    assert len(noise) == 12 * len(mdc.NOISE_TYPES) and len(irs) == 40
    assert {t: sum(c.meta["noise"] == t for c in noise) for t in mdc.NOISE_TYPES} == dict.fromkeys(mdc.NOISE_TYPES, 12)
    assert all(4.0 <= c.seconds <= 8.0 and c.meta["kind"] == "noise" for c in noise)
    train = {s.key: s.job for p in ("train/asr_en", "train/asr_ru") for s in plan.pools[p]}
    bench = {s.job for p, ss in plan.pools.items() if p.startswith("bench/") for s in ss}
    babble = [c for c in noise if c.meta["noise"] == "babble"]
    for c in babble:
        assert 4 <= len(c.talkers) <= 6 and len(set(c.meta["talkers"])) == len(c.talkers)
        assert [train[k] for k in c.meta["talkers"]] == list(c.talkers)  # training clips, by key and job
        assert not set(c.talkers) & bench
        assert all(-8.0 <= x <= 0.0 for x in c.meta["levels_db"])
    assert {c.meta["hum_hz"] for c in noise if c.meta["noise"] == "hum"} == {50.0, 60.0}
    for c in irs:
        assert 0.15 <= c.meta["rt60_s"] <= 0.9 and 3.0 <= c.meta["predelay_ms"] <= 20.0
        assert c.seconds == pytest.approx(c.meta["rt60_s"] + c.meta["predelay_ms"] / 1000, abs=1e-3)
    assert max(c.meta["rt60_s"] for c in irs) - min(c.meta["rt60_s"] for c in irs) > 0.5  # rooms to halls


def test_tiny_models_and_tokenizer_reload_offline(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor, WhisperModel

    plan = mdc.plan_corpus(0, mdc.Counts(asr=50, instruct=10, text=10, bench=1))
    tok = mdc.train_tokenizer(plan.train_texts, vocab_size=600)
    whisper = mdc.build_tiny_whisper(tmp_path / "whisper", dim=32, layers=1, heads=2, ffn=64)
    qwen = mdc.build_tiny_qwen3(tmp_path / "qwen3", tok, dim=32, layers=1, heads=2, kv_heads=1, head_dim=16, ffn=64)
    assert 0 < whisper["encoder"] < whisper["total"] and qwen["total"] > 0

    fe = WhisperFeatureExtractor.from_pretrained(tmp_path / "whisper")
    enc = WhisperModel.from_pretrained(tmp_path / "whisper").get_encoder()
    feats = fe(np.zeros(16000, dtype=np.float32), sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape == (1, 80, 300)  # 3 s window
    assert enc(feats).last_hidden_state.shape == (1, 150, 32)

    tok2 = AutoTokenizer.from_pretrained(tmp_path / "qwen3")
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen3")
    assert lm.config.vocab_size == len(tok2) == len(tok) and lm.config.tie_word_embeddings
    assert (tok2.eos_token, tok2.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert lm.config.eos_token_id == tok2.convert_tokens_to_ids("<|im_end|>")
    for text in plan.train_texts + ["Transcribe the audio.", "Расшифруй аудио."]:
        assert tok2.decode(tok2(text, add_special_tokens=False)["input_ids"]) == text
    chat = tok2.apply_chat_template([{"role": "user", "content": "два три"}], tokenize=False,
                                    add_generation_prompt=True)
    assert chat == "<|im_start|>user\nдва три<|im_end|>\n<|im_start|>assistant\n"
    assert len(tok2("<|im_start|>user", add_special_tokens=False)["input_ids"]) == 2


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="multiple of 50"):
        mdc.build_tiny_whisper(Path("unused"), max_source_positions=301)
    with pytest.raises(SystemExit):
        mdc.parse_args(["--out", "x", "--scale", "0"])


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    summary = mdc.main(["--out", str(out), *TINY_ARGS])
    return out, summary


@needs_espeak
def test_tiny_demo_pools_and_summary(tiny_demo):
    out, summary = tiny_demo
    counts = expected_counts()
    for pool in POOLS:
        index = json.loads((out / "shards" / pool / "index.json").read_text())
        assert index["num_samples"] == counts[pool] == summary["pools"][pool]["samples"], pool
        assert all((out / "shards" / pool / s["name"]).is_file() for s in index["shards"])
        samples = read_pool(out / "shards" / pool)
        assert len(samples) == counts[pool]
        assert all(has_audio == (pool != "train/text") for _, has_audio in samples), pool
        if pool != "train/text":
            assert all(0.3 < m["duration"] < 6.0 for m, _ in samples), pool
    assert json.loads((out / "corpus.json").read_text()) == summary
    assert summary["parameters"]["whisper_encoder"] > 0 and summary["tokenizer_vocab_size"] > 256


@needs_espeak
def test_tiny_demo_bench_is_held_out(tiny_demo):
    out, _ = tiny_demo
    train = [m for p in POOLS if p.startswith("train/") for m, _ in read_pool(out / "shards" / p)]
    bench = [m for p in POOLS if p.startswith("bench/") for m, _ in read_pool(out / "shards" / p)]
    assert not {m["text"] for m in bench} & {m["text"] for m in train if "text" in m}
    assert not {m["voice"] for m in bench} & {m["voice"] for m in train if "voice" in m}
    noisy = read_pool(out / "shards" / "bench/demo_en_noisy")
    assert all(15 <= m["snr_db"] <= 25 and m["noise"] in ("white", "pink") for m, _ in noisy)


@needs_espeak
def test_tiny_demo_noise_and_ir_pools(tiny_demo):
    from borealis.augmentations import BackgroundNoise, ImpulseResponse
    from borealis.shards import iter_shard, list_shards

    out, summary = tiny_demo
    counts = {"noise": 12 * len(mdc.NOISE_TYPES), "ir": 40}
    clips = {}
    for pool in CLIP_POOLS:
        index = json.loads((out / "shards" / pool / "index.json").read_text())
        assert index["num_samples"] == counts[pool] == summary["pools"][pool]["samples"], pool
        clips[pool] = [s for path in list_shards(out / "shards" / pool) for s in iter_shard(path)]
        assert len(clips[pool]) == counts[pool] and all(s["meta"]["kind"] == pool for s in clips[pool])
    assert summary["pools"]["noise"]["types"] == dict.fromkeys(mdc.NOISE_TYPES, 12)
    assert summary["augmentation"]["ir"]["rt60_s"] == [0.15, 0.9]

    noise = clips["noise"]
    assert all(4.0 <= s["duration"] <= 8.0 and "text" not in s["meta"] for s in noise)
    assert all(np.abs(s["audio"]).max() > 0.5 for s in noise)  # peak-normalised to 0.7, never silent
    train_keys = {s["key"] for p in ("train/asr_en", "train/asr_ru")
                  for path in list_shards(out / "shards" / p) for s in iter_shard(path)}
    bench_keys = {s["key"] for p in POOLS if p.startswith("bench/")
                  for path in list_shards(out / "shards" / p) for s in iter_shard(path)}
    babble = [s for s in noise if s["meta"]["noise"] == "babble"]
    assert len(babble) == 12
    for s in babble:  # babble mixes training speech only, looped through the whole clip
        talkers = s["meta"]["talkers"]
        assert 4 <= len(talkers) <= 6 and set(talkers) <= train_keys and not set(talkers) & bench_keys
        frames = s["audio"][: s["audio"].size // 1600 * 1600].reshape(-1, 1600)  # 100 ms frames
        assert (np.sqrt((frames ** 2).mean(1)) > 0.01).mean() > 0.95

    for s in clips["ir"]:
        ir, meta = s["audio"], s["meta"]
        assert int(np.argmax(np.abs(ir))) == 0  # the direct path at t=0: ImpulseResponse aligns on it
        assert s["duration"] == pytest.approx(meta["rt60_s"] + meta["predelay_ms"] / 1000, abs=2e-3)
        q = ir.size // 4
        energy = np.sum(ir[-q:].astype(np.float64) ** 2) / np.sum(ir[:q].astype(np.float64) ** 2)
        assert energy < 1e-3, (s["key"], energy)  # decays: the last quarter > 30 dB below the first

    rng = np.random.default_rng(0)
    speech = (0.3 * np.sin(2 * np.pi * 220 * np.arange(32_000) / 16_000)).astype(np.float32)
    noisy = BackgroundNoise(pool=str(out / "shards" / "noise"), snr_db=(10.0, 10.0), p=1.0)
    reverb = ImpulseResponse(pool=str(out / "shards" / "ir"), p=1.0)
    for effect in (noisy, reverb):
        effect.check()
        assert effect.apply(speech, rng).shape == speech.shape


@needs_espeak
def test_tiny_demo_models_reload_and_tokenizer_round_trips_corpus(tiny_demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor, WhisperModel

    out, summary = tiny_demo
    assert WhisperModel.from_pretrained(out / "models/whisper").config.max_source_positions == 150
    assert WhisperFeatureExtractor.from_pretrained(out / "models/whisper").feature_size == 80
    tok = AutoTokenizer.from_pretrained(out / "models/qwen3")
    assert AutoModelForCausalLM.from_pretrained(out / "models/qwen3").config.vocab_size == len(tok)
    assert len(tok) == summary["tokenizer_vocab_size"]
    texts = []
    for pool in POOLS:
        for meta, _ in read_pool(out / "shards" / pool):
            texts += [meta["text"]] if "text" in meta else []
            texts += [m["content"] for m in meta.get("messages", [])]
    for text in texts:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@needs_espeak
def test_same_seed_gives_identical_shards(tiny_demo, tmp_path):
    out, summary = tiny_demo
    with pytest.raises(FileExistsError, match="--overwrite"):
        mdc.main(["--out", str(out), *TINY_ARGS])
    again = mdc.main(["--out", str(tmp_path / "again"), *TINY_ARGS])
    drop_out = lambda s: {k: v for k, v in s.items() if k != "args"}  # noqa: E731
    assert drop_out(again) == drop_out(summary)
    for pool in POOLS + CLIP_POOLS:
        a = json.loads((out / "shards" / pool / "index.json").read_text())
        b = json.loads((tmp_path / "again" / "shards" / pool / "index.json").read_text())
        assert a == b, pool  # sha256 of every shard: same sentences, voices, audio
