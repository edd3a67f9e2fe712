"""Sharding throughput: hours of audio per minute through `build_shards`, by worker count.

What:
    python tools/bench_shards.py                    # synthetic corpus, --workers 1 (baseline) and 2
    python tools/bench_shards.py --workers 1 2 4 --files 400 --json out.json
    python tools/bench_shards.py --manifest my.jsonl   # your own manifest (audio paths relative to it)

By default it writes a synthetic corpus into a temp dir, mixed like real downloads: 44.1 kHz
stereo WAV (LibriVox-style), 48 kHz mono FLAC, 48 kHz MP3 and Ogg Vorbis (Common Voice / web
audio), 4-16 s each, as a NeMo-style manifest; then it shards the same manifest once per
`--workers` value through `ingest.build_pool` (exactly what `build_shards.py manifest` runs),
from the same files, and prints wall time, audio hours per minute, and the ratio against the
first value (the baseline, measured in the same run). It also checks that every run wrote
byte-identical shards (same sha256), so a speed-up never comes from doing different work.

Why: people shard thousands of hours; the issue asks for hours per minute with `--workers 2`
on the 2-core CI machine. Wall time, not CPU time, is the figure here (the point of workers is
the wall clock), so run it on an otherwise idle machine.

Cost: the default corpus (120 files, ~20 min of audio) takes ~10 s to synthesise and each
sharding pass ~5-15 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf


from borealis.corpora import jsonl_items
from borealis.ingest import build_pool
from borealis.shards import read_index

# (extension, soundfile format, rate, channels): the mix of the synthetic corpus, in turn.
MIX = [("wav", "WAV", 44_100, 2), ("flac", "FLAC", 48_000, 1), ("mp3", "MP3", 48_000, 1), ("ogg", "OGG", 48_000, 1)]


def speechlike(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A harmonic buzz with a moving pitch under a 4 Hz syllable envelope, plus a little noise."""
    t = np.arange(round(seconds * rate)) / rate
    f0 = 110 + 40 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None)
    x = x * envelope + 0.01 * rng.standard_normal(t.size)
    return (0.3 * x / np.max(np.abs(x))).astype(np.float32)


def make_corpus(folder: Path, files: int, seconds: tuple[float, float], seed: int) -> tuple[Path, float]:
    """Write `files` clips + manifest.jsonl into `folder`; returns the manifest and the audio hours."""
    rng = np.random.default_rng(seed)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines, total = [], 0.0
    for i in range(files):
        ext, fmt, rate, channels = MIX[i % len(MIX)]
        length = float(rng.uniform(*seconds))
        x = speechlike(length, rate, rng)
        sf.write(folder / "audio" / f"clip{i:05d}.{ext}", np.stack([x] * channels, 1) if channels > 1 else x,
                 rate, format=fmt)
        lines.append({"audio_filepath": f"audio/clip{i:05d}.{ext}", "text": f"clip {i}", "duration": length})
        total += length
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest, total / 3600


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workers", type=_positive, nargs="+", default=[1, 2],
                        help="worker counts to time, in order; the first is the baseline")
    parser.add_argument("--files", type=_positive, default=120, help="synthetic clips (without --manifest)")
    parser.add_argument("--seconds", type=float, nargs=2, default=(4.0, 16.0), metavar=("MIN", "MAX"),
                        help="synthetic clip durations")
    parser.add_argument("--manifest", type=Path, default=None, help="shard this manifest instead of a synthetic one")
    parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic corpus")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_shards_") as tmp:
        tmp = Path(tmp)
        if args.manifest is None:
            start = time.perf_counter()
            manifest, hours = make_corpus(tmp / "corpus", args.files, tuple(args.seconds), args.seed)
            print(f"synthetic corpus: {args.files} files, {hours * 60:.1f} min of audio "
                  f"({time.perf_counter() - start:.1f} s to write)")
        else:
            manifest, hours = args.manifest, None
        rows = []
        for workers in args.workers:
            out = tmp / f"pool_w{workers}"
            start = time.perf_counter()
            report = build_pool(jsonl_items(manifest), out, kind="manifest", base_dir=manifest.resolve().parent,
                                workers=workers, progress=False)
            wall = time.perf_counter() - start
            audio_h = report["duration"] / 3600
            shas = [s["sha256"] for s in read_index(out)["shards"]]
            rows.append({"workers": workers, "seconds": round(wall, 2), "audio_hours": round(audio_h, 4),
                         "hours_per_minute": round(audio_h / (wall / 60), 3), "written": report["written"],
                         "rejected": report["num_rejected"], "sha256": shas})
        base = rows[0]
        print(f"{'workers':>7} {'wall s':>8} {'audio h':>8} {'h/min':>7} {'x base':>7}  written+rejected")
        for r in rows:
            r["ratio"] = round(r["hours_per_minute"] / base["hours_per_minute"], 3)
            print(f"{r['workers']:>7} {r['seconds']:>8.2f} {r['audio_hours']:>8.3f} {r['hours_per_minute']:>7.2f} "
                  f"{r['ratio']:>6.2f}x  {r['written']}+{r['rejected']}")
        identical = all(r["sha256"] == base["sha256"] for r in rows)
        print(f"shards identical across worker counts: {identical}")
        best = max(rows, key=lambda r: r["hours_per_minute"])
        print(f"bench_shards: {best['hours_per_minute']:.2f} h of audio per minute with --workers {best['workers']} "
              f"({best['ratio']:.2f}x --workers {base['workers']})")
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "identical": identical}, indent=2) + "\n")
        return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
