"""Tests for borealis/demo/build.py: the options, and one tiny end-to-end build (~135 espeak
clips, 88 noise/IR clips, a few seconds) read back through the index, plain tarfile, the
shard reader and the augmentation effects.

espeak-ng is a Debian package; tests that synthesise speech are skipped without it.
Everything runs offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from borealis.demo import main
from borealis.demo.build import make_corpus, parse_args
from borealis.demo.noise import BENCH_NOISE, NOISE_TYPES
from borealis.demo.plan import Counts

os.environ.setdefault("HF_HUB_OFFLINE", "1")

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SCALE = 0.01  # asr 60 per language, instruct 3 + text 3 per language, bench 2 + bench_random 1 per language
TINY_ARGS = [
    "--scale", str(SCALE), "--shard-size", "16", "--workers", "2",
    "--encoder-dim", "32", "--encoder-layers", "1", "--encoder-heads", "2", "--encoder-ffn", "64",
    "--llm-dim", "32", "--llm-layers", "1", "--llm-heads", "2", "--llm-kv-heads", "1",
    "--llm-head-dim", "16", "--llm-ffn", "64", "--vocab-size", "600",
]
POOLS = ["train/asr_en", "train/asr_ru", "train/instruct", "train/text",
         "bench/demo_en", "bench/demo_ru", "bench/demo_en_random", "bench/demo_ru_random",
         "bench/demo_en_noisy"]
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
    c = Counts().scaled(SCALE)
    return {"train/asr_en": c.asr, "train/asr_ru": c.asr, "train/instruct": 2 * c.instruct,
            "train/text": 2 * c.text, "bench/demo_en": c.bench, "bench/demo_ru": c.bench,
            "bench/demo_en_random": c.bench_random, "bench/demo_ru_random": c.bench_random,
            "bench/demo_en_noisy": c.bench}


def test_options_are_checked_together():
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--scale", "0"])
    with pytest.raises(SystemExit):
        main(["--out", "x", "--max-source-positions", "75", "--llm-kv-heads", "3"])
    args = parse_args(["--out", "x"])
    assert (args.encoder_dim, args.encoder_ffn, args.llm_dim, args.vocab_size) == (160, 640, 256, 4096)
    assert (args.asr_per_language, args.bench_per_language, args.bench_random_per_language, args.shard_size) == \
        (6000, 150, 100, 500)


def test_the_demo_config_reads_the_pools_built_here():
    import yaml

    data = yaml.safe_load((Path(__file__).parents[1] / "configs" / "demo.yaml").read_text())["data"]
    assert sorted(data["val_sets"].values()) == sorted(f"demo/shards/{p}" for p in POOLS if p.startswith("bench/"))
    assert {p["shards"] for p in data["train_pools"]} | {data["text_pool"]} == \
        {f"demo/shards/{p}" for p in POOLS if p.startswith("train/")}
    pools = {e["init_args"]["pool"] for stage in data["augmentation"]["stages"] for e in stage.get("effects", [])
             if "pool" in e["init_args"]}
    assert pools == {f"demo/shards/{p}" for p in CLIP_POOLS}


def test_module_entry_point_shows_the_options():
    proc = subprocess.run([sys.executable, "-m", "borealis.demo", "--help"], capture_output=True, text=True,
                          check=True, timeout=120)
    assert "--out" in proc.stdout and "--overwrite" in proc.stdout and "--llm-kv-heads" in proc.stdout


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    summary = make_corpus(parse_args(["--out", str(out), *TINY_ARGS]))
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
    out, summary = tiny_demo
    train = [m for p in POOLS if p.startswith("train/") for m, _ in read_pool(out / "shards" / p)]
    bench = [m for p in POOLS if p.startswith("bench/") for m, _ in read_pool(out / "shards" / p)]
    assert not {m["text"] for m in bench} & {m["text"] for m in train if "text" in m}
    assert not {m["voice"] for m in bench} & {m["voice"] for m in train if "voice" in m}
    noisy = read_pool(out / "shards" / "bench/demo_en_noisy")
    assert all(15 <= m["snr_db"] <= 25 and m["noise"] in BENCH_NOISE for m, _ in noisy)
    assert not {m["noise"] for m, _ in noisy} & set(summary["pools"]["noise"]["types"])  # unheard in training


@needs_espeak
def test_tiny_demo_noise_and_ir_pools(tiny_demo):
    from borealis.augmentations import BackgroundNoise, ImpulseResponse
    from borealis.shards import iter_shard, list_shards

    out, summary = tiny_demo
    counts = {"noise": 12 * len(NOISE_TYPES), "ir": 40}
    clips = {}
    for pool in CLIP_POOLS:
        index = json.loads((out / "shards" / pool / "index.json").read_text())
        assert index["num_samples"] == counts[pool] == summary["pools"][pool]["samples"], pool
        clips[pool] = [s for path in list_shards(out / "shards" / pool) for s in iter_shard(path)]
        assert len(clips[pool]) == counts[pool] and all(s["meta"]["kind"] == pool for s in clips[pool])
    assert summary["pools"]["noise"]["types"] == dict.fromkeys(NOISE_TYPES, 12)
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
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        WhisperFeatureExtractor,
        WhisperModel,
    )

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
        main(["--out", str(out), *TINY_ARGS])
    assert main(["--out", str(tmp_path / "again"), *TINY_ARGS]) == 0
    again = json.loads((tmp_path / "again" / "corpus.json").read_text())
    drop_out = lambda s: {k: v for k, v in s.items() if k != "args"}
    assert drop_out(again) == drop_out(summary)
    for pool in POOLS + CLIP_POOLS:
        a = json.loads((out / "shards" / pool / "index.json").read_text())
        b = json.loads((tmp_path / "again" / "shards" / pool / "index.json").read_text())
        assert a == b, pool  # sha256 of every shard: same sentences, voices, audio


@needs_espeak
def test_tiny_bases_build_from_the_tiny_corpus(tiny_demo, tmp_path):
    """`borealis demo bases` end to end on the tiny corpus, a few steps with the optional
    regularisers on: both bases save and reload, SHA256SUMS holds, bases.json records the settings,
    the encoder's pretraining dropout stays out of the saved config, and `--only` rebuilds either
    base bit for bit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperConfig

    from borealis.demo.bases import BaseSettings, build_bases, check_sums

    corpus, _ = tiny_demo
    settings = BaseSettings(encoder_steps=2, encoder_batch=4, llm_steps=2, llm_batch=4, warmup=1,
                            encoder_dropout=0.1, copy_shuffle_share=0.5)
    summary = build_bases(corpus, tmp_path / "bases", settings)
    assert check_sums(tmp_path / "bases") == []
    assert json.loads((tmp_path / "bases" / "bases.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["settings"]["encoder_dropout"] == 0.1 and summary["settings"]["copy_shuffle_share"] == 0.5
    assert WhisperConfig.from_pretrained(tmp_path / "bases" / "whisper").dropout == \
        WhisperConfig.from_pretrained(corpus / "models" / "whisper").dropout == 0.0
    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "bases" / "qwen3")
    assert llm.config.vocab_size == len(AutoTokenizer.from_pretrained(tmp_path / "bases" / "qwen3"))  # + audio tokens
    assert sum(p.numel() for p in llm.parameters()) == summary["llm"]["parameters"]
    assert summary["encoder"]["steps"] == summary["llm"]["steps"] == 2
    assert set(summary["encoder"]["wer"]) == {"demo_en", "demo_ru", "demo_en_random", "demo_ru_random",
                                              "demo_en_noisy"}
    assert 0 <= summary["llm"]["shuffles_kept_order"] <= 2 * 4
    # a one-base rebuild (`--only`) makes that base bit for bit as the full build made it
    full = (tmp_path / "bases" / "SHA256SUMS").read_text().splitlines()
    for only, part in (("llm", "qwen3/"), ("encoder", "whisper/")):
        again = tmp_path / f"only_{only}"
        shutil.copytree(tmp_path / "bases", again)
        (again / part / "model.safetensors").unlink()
        build_bases(corpus, again, settings, only=only)
        assert (again / "SHA256SUMS").read_text().splitlines() == full, only
