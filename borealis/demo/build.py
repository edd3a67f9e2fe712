"""Build the demo corpus and base models on disk: the options, the pool writers and the summary.

What: `main(argv)` parses the options (`build_parser`), then `make_corpus` plans the corpus,
trains the tokenizer, saves the tiny Whisper and Qwen3, synthesises every pool's audio and
writes it as shards (`borealis.shards.ShardWriter`), and writes `OUT/corpus.json`.

Why: one deterministic function of `--seed` and the sizes, so the demo's figures can be
reproduced byte for byte on any machine with espeak-ng.

Cost: the default run (13,850 speech samples, 5.1 h of audio) writes 363 MB in ~90 s on a
2-core machine: ~14k espeak-ng calls run `--workers` at a time while the main thread
resamples and writes FLAC shards.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import shutil
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from borealis.demo.models import (
    SPECIAL_TOKENS,
    Qwen3Size,
    WhisperSize,
    build_tiny_qwen3,
    build_tiny_whisper,
    train_tokenizer,
)
from borealis.demo.noise import (
    BABBLE_LEVEL_DB,
    BABBLE_TALKERS,
    HUM_HARMONICS,
    HUM_HZ,
    HUM_NOISE_DB,
    IR_DIRECT,
    IR_PREDELAY_MS,
    IR_REVERB_PEAK,
    IR_RT60,
    NOISE_FLOOR_HZ,
    NOISE_SECONDS,
    NOISE_SNR_DB,
    NOISE_TYPES,
    Clip,
    add_noise,
    render_clip,
)
from borealis.demo.plan import CorpusPlan, Counts, Sample, plan_corpus, rng_for, word_coverage
from borealis.demo.speech import (
    BENCH_PITCH,
    BENCH_SPEED,
    BENCH_VARIANTS,
    ESPEAK_RATE,
    PEAK,
    TRAIN_PITCH,
    TRAIN_SPEED,
    TRAIN_VARIANTS,
    SynthJob,
    check_espeak,
    synthesize_many,
)
from borealis.demo.text import LANGUAGES
from borealis.prompts import ASR_PROMPTS, DEFAULT_SYSTEM_PROMPT

log = logging.getLogger(__name__)

SHARD_SIZE = 500  # samples per tar shard


def _write_samples(pool_dir: Path, rows: Iterable[tuple[str, dict, np.ndarray | None, int]], shard_size: int) -> dict:
    """Write (key, meta, audio, rate) rows as one pool; returns its samples, hours, shards and tasks."""
    from borealis.shards import ShardWriter

    with ShardWriter(pool_dir, max_samples=shard_size) as writer:
        for key, meta, audio, rate in rows:
            writer.write(key, meta, audio, sample_rate=rate)
    index = writer.close()  # idempotent: the index written on exit
    return {"samples": index["num_samples"], "hours": round(index["duration"] / 3600, 4),
            "shards": len(index["shards"]), "tasks": index["tasks"]}


def write_pool(pool_dir: Path, samples: Sequence[Sample], *, seed: int, workers: int, shard_size: int,
               cache: dict[SynthJob, np.ndarray], retain: Container[SynthJob] = (), max_seconds: float = 5.5) -> dict:
    """Synthesise (or reuse from `cache`) and write one pool; returns its summary entry.

    The audio of jobs in `retain` is kept in `cache` for later pools (demo_en_noisy, babble).
    """
    known = set(cache)
    stream = synthesize_many([s.job for s in samples if s.job is not None and s.job not in known], workers,
                             max_seconds=max_seconds)

    def rows() -> Iterator[tuple[str, dict, np.ndarray | None, int]]:
        for s in samples:
            audio = None
            if s.job is not None:
                audio = cache[s.job] if s.job in known else next(stream)
                if s.job in retain:
                    cache[s.job] = audio
                if s.noise is not None:
                    audio = add_noise(audio, *s.noise, rng_for(seed, f"noise_{s.key}"))
            yield s.key, s.meta, audio, ESPEAK_RATE

    summary = _write_samples(pool_dir, rows(), shard_size)
    summary["languages"] = dict(sorted(collections.Counter(s.meta["language"] for s in samples).items()))
    return summary


def write_clip_pool(pool_dir: Path, clips: Sequence[Clip], *, seed: int, shard_size: int,
                    speech: dict[SynthJob, np.ndarray]) -> dict:
    """Synthesise and write a noise or IR pool; returns its summary entry (with the noise types).

    Each clip draws from its own generator (seed, key), so a clip does not depend on the others.
    """
    rows = ((c.key, *render_clip(c, rng_for(seed, f"clip_{c.key}"), speech)) for c in clips)
    summary = _write_samples(pool_dir, rows, shard_size)
    del summary["tasks"]  # noise/IR samples have none
    types = collections.Counter(c.meta["noise"] for c in clips if "noise" in c.meta)
    return {**summary, "types": dict(types)} if types else summary


def _prepare_out(out: Path, overwrite: bool) -> None:
    generated = [out / "models", out / "shards", out / "corpus.json"]
    present = [p for p in generated if p.exists()]
    if present and not overwrite:
        raise FileExistsError(f"{out} already holds a demo corpus ({', '.join(p.name for p in present)}); "
                              "pass --overwrite to replace it, or choose another --out")
    for p in present:  # only what this builder writes; e.g. training runs under OUT/ stay
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def build_parser() -> argparse.ArgumentParser:
    """The options of `borealis demo` (and `python -m borealis.demo`)."""
    p = argparse.ArgumentParser(
        prog="borealis demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate the embedded CPU demo: espeak-ng speech, noise and IR pools, a tiny Whisper and Qwen3.")
    p.add_argument("--out", type=Path, required=True, help="output folder (models/, shards/, corpus.json)")
    p.add_argument("--seed", type=int, default=0, help="seeds sentences, voices, noise and model weights")
    p.add_argument("--workers", type=int, default=2, help="concurrent espeak-ng processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo corpus in --out")
    g = p.add_argument_group("corpus size")
    g.add_argument("--scale", type=float, default=1.0, help="multiplies every count below (min 1); 0.01 for tests")
    g.add_argument("--asr-per-language", type=int, default=Counts.asr, help="clips in train/asr_en and asr_ru each")
    g.add_argument("--instruct-per-language", type=int, default=Counts.instruct,
                   help="spoken-instruction clips per language in train/instruct")
    g.add_argument("--text-per-language", type=int, default=Counts.text,
                   help="text-only chats per language in train/text")
    g.add_argument("--bench-per-language", type=int, default=Counts.bench,
                   help="clips in bench/demo_en, demo_ru (and demo_en_noisy): grammar sentences")
    g.add_argument("--bench-random-per-language", type=int, default=Counts.bench_random,
                   help="clips in bench/demo_en_random, demo_ru_random: known words in random order")
    g.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="samples per tar shard")
    g = p.add_argument_group("augmentation pools (shards/noise, shards/ir; not scaled by --scale, < 1 s to build)")
    g.add_argument("--noise-per-type", type=int, default=Counts.noise,
                   help=f"noise clips ({NOISE_SECONDS[0]:g}-{NOISE_SECONDS[1]:g} s) per type: {', '.join(NOISE_TYPES)}")
    g.add_argument("--irs", type=int, default=Counts.ir,
                   help=f"impulse responses, RT60 {IR_RT60[0]:g}-{IR_RT60[1]:g} s")
    g = p.add_argument_group("tiny Whisper (encoder ~1.4M params at the defaults)")
    g.add_argument("--encoder-dim", type=int, default=WhisperSize.dim, help="d_model")
    g.add_argument("--encoder-layers", type=int, default=WhisperSize.layers, help="transformer layers")
    g.add_argument("--encoder-heads", type=int, default=WhisperSize.heads, help="attention heads (divide --encoder-dim)")
    g.add_argument("--encoder-ffn", type=int, default=WhisperSize.ffn, help="feed-forward width (4x d_model)")
    g.add_argument("--mel-bins", type=int, default=WhisperSize.mel_bins, help="80 as Whisper <= v2")
    g.add_argument("--max-source-positions", type=int, default=WhisperSize.max_source_positions,
                   help="encoder positions; 2 mel frames each, 150 -> 3 s window (multiple of 50)")
    g = p.add_argument_group("tiny Qwen3 (~2.2M params at the defaults)")
    g.add_argument("--llm-dim", type=int, default=Qwen3Size.dim, help="hidden size")
    g.add_argument("--llm-layers", type=int, default=Qwen3Size.layers, help="decoder layers")
    g.add_argument("--llm-heads", type=int, default=Qwen3Size.heads, help="query heads")
    g.add_argument("--llm-kv-heads", type=int, default=Qwen3Size.kv_heads, help="key/value heads (GQA)")
    g.add_argument("--llm-head-dim", type=int, default=Qwen3Size.head_dim,
                   help="per-head width (Qwen3 sets it apart from hidden)")
    g.add_argument("--llm-ffn", type=int, default=Qwen3Size.ffn, help="MLP width (3x hidden)")
    g.add_argument("--llm-max-positions", type=int, default=Qwen3Size.max_positions,
                   help="38 audio slots (3 s) + prompt fit easily")
    g.add_argument("--vocab-size", type=int, default=4096,
                   help="BPE vocabulary cap: at 4096 every demo word is one token, with and without its leading space")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed options; every problem with them is reported at once (argparse exits with 2)."""
    p = build_parser()
    args = p.parse_args(argv)
    problems = [f"--{k.replace('_', '-')} must be >= 1, got {v}" for k, v in vars(args).items()
                if isinstance(v, int) and not isinstance(v, bool) and k != "seed" and v < 1]
    if args.scale <= 0:
        problems.append(f"--scale must be > 0, got {args.scale}")
    if args.vocab_size < 256 + len(SPECIAL_TOKENS):
        problems.append(f"--vocab-size must cover the 256 bytes + {len(SPECIAL_TOKENS)} special tokens, "
                        f"got {args.vocab_size}")
    if args.max_source_positions % 50:
        problems.append("--max-source-positions must be a multiple of 50 (a whole-second window), "
                        f"got {args.max_source_positions}")
    if args.encoder_heads and args.encoder_dim % args.encoder_heads:
        problems.append(f"--encoder-dim {args.encoder_dim} is not divisible by --encoder-heads {args.encoder_heads}")
    if args.llm_kv_heads and args.llm_heads % args.llm_kv_heads:
        problems.append(f"--llm-heads {args.llm_heads} is not a multiple of --llm-kv-heads {args.llm_kv_heads}")
    if problems:
        p.error("; ".join(problems))
    return args


def _write_pools(args: argparse.Namespace, plan: CorpusPlan) -> dict[str, dict]:
    """Synthesise and write every speech, text, noise and IR pool of `plan`; returns their summaries."""
    max_seconds = 0.95 * 2 * args.max_source_positions * 160 / 16_000
    if max_seconds < 5.5:
        log.info("utterances longer than %.2f s are re-spoken faster to fit the %.1f s encoder window",
                 max_seconds, max_seconds / 0.95)
    pools: dict[str, dict] = {}
    cache: dict[SynthJob, np.ndarray] = {}
    retain = {s.job for s in plan.pools["bench/demo_en"]} | {j for c in plan.clip_pools["noise"] for j in c.talkers}
    for name, samples in plan.pools.items():
        t0 = time.monotonic()
        pools[name] = write_pool(args.out / "shards" / name, samples, seed=args.seed, workers=args.workers,
                                 shard_size=args.shard_size, cache=cache, retain=retain, max_seconds=max_seconds)
        log.info("%-22s %5d samples, %.3f h, %.1f s", name, len(samples), pools[name]["hours"],
                 time.monotonic() - t0)
    for name, clips in plan.clip_pools.items():
        t0 = time.monotonic()
        pools[name] = write_clip_pool(args.out / "shards" / name, clips, seed=args.seed, shard_size=args.shard_size,
                                      speech=cache)
        log.info("%-22s %5d clips,   %.3f h, %.1f s", name, len(clips), pools[name]["hours"], time.monotonic() - t0)
    return pools


def _augmentation_summary(counts: Counts) -> dict:
    """The parameters of shards/noise and shards/ir, for augmentations.BackgroundNoise / ImpulseResponse."""
    return {
        "noise": {"pool": "shards/noise", "types": list(NOISE_TYPES), "per_type": counts.noise,
                  "seconds": list(NOISE_SECONDS), "floor_hz": NOISE_FLOOR_HZ, "hum_hz": list(HUM_HZ),
                  "hum_harmonics": list(HUM_HARMONICS), "hum_noise_db": list(HUM_NOISE_DB),
                  "babble_talkers": list(BABBLE_TALKERS), "babble_level_db": list(BABBLE_LEVEL_DB),
                  "babble_speech": ["train/asr_en", "train/asr_ru"], "peak": PEAK},
        "ir": {"pool": "shards/ir", "count": counts.ir, "rt60_s": list(IR_RT60),
               "predelay_ms": list(IR_PREDELAY_MS), "reverb_peak": list(IR_REVERB_PEAK), "direct": IR_DIRECT},
    }


def make_corpus(args: argparse.Namespace) -> dict:
    """Build the demo corpus and models that `args` (from `parse_args`) describe; returns the
    summary also written to `OUT/corpus.json`."""
    start = time.monotonic()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file "Writing model shards" bars drown the pool log
    check_espeak()
    _prepare_out(args.out, args.overwrite)
    counts = Counts(args.asr_per_language, args.instruct_per_language, args.text_per_language,
                    args.bench_per_language, args.bench_random_per_language, args.noise_per_type,
                    args.irs).scaled(args.scale)
    plan = plan_corpus(args.seed, counts)

    texts = plan.train_texts + [DEFAULT_SYSTEM_PROMPT, *ASR_PROMPTS.values()]
    for lang in LANGUAGES.values():
        texts += lang.vocabulary + list(lang.instruct.values()) + list(lang.genitive)
    tokenizer = train_tokenizer(texts, args.vocab_size)
    whisper_size = WhisperSize(args.encoder_dim, args.encoder_layers, args.encoder_heads, args.encoder_ffn,
                               args.mel_bins, args.max_source_positions)
    qwen3_size = Qwen3Size(args.llm_dim, args.llm_layers, args.llm_heads, args.llm_kv_heads, args.llm_head_dim,
                           args.llm_ffn, args.llm_max_positions)
    whisper = build_tiny_whisper(args.out / "models" / "whisper", whisper_size, seed=args.seed)
    qwen3 = build_tiny_qwen3(args.out / "models" / "qwen3", tokenizer, qwen3_size, seed=args.seed)
    log.info("models: whisper encoder %d params, qwen3 %d params, tokenizer %d tokens",
             whisper["encoder"], qwen3["total"], len(tokenizer))
    pools = _write_pools(args, plan)
    coverage = word_coverage(plan)

    def voices(prefix: str, code: str) -> list[str]:
        return sorted({s.job.voice for n, ss in plan.pools.items() if n.startswith(prefix)
                       for s in ss if s.job and s.meta["language"] == code})

    summary = {
        "seed": args.seed,
        "pools": pools,
        "total": {"samples": sum(p["samples"] for p in pools.values()),
                  "hours": round(sum(p["hours"] for p in pools.values()), 4)},
        "vocabulary": {code: {"words": len(lang.vocabulary), **coverage[code], "list": lang.vocabulary}
                       for code, lang in LANGUAGES.items()},
        "tokenizer_vocab_size": len(tokenizer),
        "voices": {"train": {c: voices("train/", c) for c in LANGUAGES},
                   "bench": {c: voices("bench/", c) for c in LANGUAGES},
                   "train_variants": list(TRAIN_VARIANTS), "bench_variants": list(BENCH_VARIANTS)},
        "prosody": {"train_speed_wpm": list(TRAIN_SPEED), "bench_speed_wpm": list(BENCH_SPEED),
                    "train_pitch": list(TRAIN_PITCH), "bench_pitch": list(BENCH_PITCH),
                    "noise_snr_db": list(NOISE_SNR_DB)},
        "augmentation": _augmentation_summary(counts),
        "parameters": {"whisper_encoder": whisper["encoder"], "whisper_total": whisper["total"],
                       "qwen3": qwen3["total"], "qwen3_embedding": qwen3["embedding"]},
        "models": {"whisper": "models/whisper", "qwen3": "models/qwen3"},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (args.out / "corpus.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    log.info("demo corpus in %s: %d samples, %.2f h of audio, %.0f s", args.out,
             summary["total"]["samples"], summary["total"]["hours"], time.monotonic() - start)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """`borealis demo`: build the demo corpus and models into `--out`; returns the exit status 0.

    Raises:
        FileExistsError: `--out` already holds a demo corpus and `--overwrite` is not given.
        RuntimeError: espeak-ng or one of its voice variants is missing.
    """
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    make_corpus(args)
    return 0
