"""`borealis shards build|inspect`: turn a corpus into a shard pool, and look inside pools.

What:
    borealis shards build manifest --input train.jsonl --output shards/my_asr --source my_corpus
    borealis shards build librispeech --input LibriSpeech/train-clean-100 --output shards/ls100 --workers 8
    borealis shards inspect shards/ --verify        # sha256 + decode every sample; exit 1 on problems
    borealis shards inspect shards/train --overlap --benchmarks shards/bench   # train/benchmark duplicates
`borealis shards build --help` and `borealis shards inspect --help` describe every format and option.

Why: the build pipeline (`borealis.ingest`, `borealis.corpora`) and the pool verifier
(`borealis.shards.verify`) live in the package; this module is only their command line.

Cost: parsing only; `borealis shards --help` imports no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from borealis.corpora import (AUDIO_SUFFIXES, commonvoice_items, folder_items, hf_items, jsonl_items,
                              librispeech_items, list_audio_files)
from borealis.ingest import CLIP_KINDS, build_pool, summary_line
from borealis.shards import remote
from borealis.shards.format import INDEX_NAME, REPORT_NAME, SAMPLE_RATE, ShardError, list_shards, read_index
from borealis.shards.overlap import OverlapReport, find_overlaps
from borealis.shards.reader import SampleRef, index_samples, read_sample
from borealis.shards.verify import DURATION_BINS, find_pools, inspect_pool, totals

log = logging.getLogger(__name__)

BAR_WIDTH = 30  # characters for 100% of a pool's audio samples in a duration histogram

BUILD_HELP = """\
Turn an audio corpus, a chat corpus or a folder of noise/IR clips into a Borealis shard pool.

    borealis shards build manifest --input train.jsonl --output shards/my_asr --source my_corpus
    borealis shards build manifest --input nemo_manifest.json --output shards/x --max-seconds 30
    borealis shards build librispeech --input LibriSpeech/train-clean-100 --output shards/ls100 --workers 8
    borealis shards build commonvoice --input cv-corpus-21.0/ru --tsv train.tsv --output shards/cv_ru
    borealis shards build hf --input my_dataset/ --hf-split train --output shards/my_hf   (pip install datasets)
    borealis shards build text --input chats.jsonl --output shards/my_chats
    borealis shards build audio-folder --input musan/noise --kind noise --output shards/noise
    borealis shards build audio-folder --input rirs/ --kind ir --max-seconds 2 --output shards/ir

`manifest` lines: {"audio" | "audio_filepath": path, "text": ..., "language"?, "key"?, ...extra}
(NeMo manifests work as they are; with "offset", [offset, offset + duration] is read), or
{"audio", "messages": [...]}, or {"audio", "instruction", "response", "system"?} for spoken
instructions, and optionally "segments": [{"start", "end", "text"}] timestamps. Relative audio
paths resolve against the manifest's folder; extra fields are kept in the sample's JSON.
`text` lines: {"messages": [...], "key"?, "language"?, ...extra}, stored without audio.
`audio-folder` reads every audio file below a folder into a pool for
`augmentations.BackgroundNoise` / `ImpulseResponse` ({"kind", "source": the relative path}).

Every speech input is decoded with soundfile (wav, flac, ogg/opus, mp3, ...), down-mixed,
resampled to 16 kHz with soxr and stored as FLAC, in `--workers` processes. Recordings longer
than `--max-seconds` (default 30, the Whisper window) are cut at silences between their
timestamped segments, into chunks keyed `<key>-0000`, `<key>-0001`, ... with "source_key",
"start" and "end" pointing back at the recording; without timestamps they are rejected as
"too long and no timestamps", never truncated. `--split dev=0.01,test=0.01` sends items to
held-out pools `OUTPUT/dev`, `OUTPUT/test` by a stable hash of the key (the rest to
`OUTPUT/train`).

Every input item ends as exactly one of written or rejected with a reason (see
`borealis.ingest.REASONS`): the summary says how many of each, and `OUTPUT/build_report.json`
keeps the counts and the first 20 rejections per reason, naming the file and line. `--strict`
turns any rejection into exit status 1, for CI. Keys are deterministic and so are the shards:
the same input gives byte-identical pools, whatever `--workers` is. `python tools/bench_shards.py`
measures hours sharded per minute.
"""

INSPECT_HELP = """\
Look inside shard pools: what they hold, whether every byte and sample is intact, and how one sounds.

    borealis shards inspect shards/                          # every pool below: one block each + totals
    borealis shards inspect demo/shards/train/asr_en 'shards/bench/*' --json stats.json
    borealis shards inspect shards/ --verify                  # sha256 + decode every sample; exit 1 on problems
    borealis shards inspect shards/bench --play KEY [--out KEY.wav]
    borealis shards inspect shards/train --overlap --benchmarks 'shards/bench/*'   # exit 1 on train/benchmark overlap

Each PATH is a pool folder, a glob, or a folder searched recursively for pools (folders
holding `index.json` or `shard-*.tar`). A pool's block gives its shards, samples, hours and
task counts (from `index.json`), the language mix ("none" where a sample has no
`language`), a duration histogram over fixed bins (so pools compare) and, for pools built by
`borealis shards build`, the read/written/rejected counts of `build_report.json`. `--json
FILE` writes the same figures. `--verify` runs the pool verifier (`borealis.shards.verify`):
sizes and sha256 against `index.json`, every sample decoded, counts, tasks and durations per
shard and per pool, keys unique within a pool. `--play` writes one sample's audio as 16 kHz
WAV. `--overlap` compares the pools by audio fingerprint and normalised transcript
(`borealis.shards.overlap`: resampled and MP3 copies match) and lists every duplicate
between two pools and inside each; the pools named by `--benchmarks` are benchmarks, the
others training pools. The first run per pool decodes it and caches the fingerprints in
`fingerprints.npz` beside its shards. Exit code: 0 clean; 1 any problem (the listing too
reports unreadable shards or index files) or, with `--overlap`, a training pool and a
benchmark that share a sample; 2 bad arguments, or `--play` with an unknown key or a
text-only sample.
"""


# ----------------------------------------------------------------------------- build
def _size(text: str) -> int:
    """'536870912', '512M', '1G' -> bytes."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 536870912, 512M, 1G)")
    return int(m.group(1)) * units[m.group(2).upper()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def _min_seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def _max_seconds(text: str) -> float | None:
    return None if text.lower() in ("none", "0") else _seconds(text)


def _suffixes(text: str) -> tuple[str, ...]:
    """'wav,flac,.MP3' -> ('wav', 'flac', 'mp3')."""
    out = tuple(x.strip().lower().lstrip(".") for x in text.split(",") if x.strip().lstrip("."))
    if not out:
        raise argparse.ArgumentTypeError(f"no extensions in {text!r} (use e.g. wav,flac)")
    return out


def _splits(text: str) -> list[tuple[str, float]]:
    """'dev=0.01,test=0.02' -> [('dev', 0.01), ('test', 0.02)]."""
    out = []
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = math.nan
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name.strip()) or not 0 < fraction < 1:
            raise argparse.ArgumentTypeError(f"bad split {part!r}: use NAME=FRACTION with 0 < FRACTION < 1, "
                                             f"e.g. dev=0.01,test=0.01")
        out.append((name.strip(), fraction))
    if sum(f for _, f in out) >= 1:
        raise argparse.ArgumentTypeError(f"split fractions sum to {sum(f for _, f in out):g}: leave some for training")
    return out


def _pool_args(args: argparse.Namespace) -> dict:
    """build_pool options shared by every subcommand."""
    return dict(max_samples=args.max_samples, max_bytes=args.max_bytes, workers=args.workers,
                progress=not args.no_progress)


def _speech_args(args: argparse.Namespace) -> dict:
    return dict(min_seconds=args.min_seconds, max_seconds=args.max_seconds, splits=args.split or (),
                **_pool_args(args))


def _run_manifest(args: argparse.Namespace) -> dict:
    return build_pool(jsonl_items(args.input), args.output, kind="manifest", base_dir=args.input.resolve().parent,
                      source=args.source, **_speech_args(args))


def _run_text(args: argparse.Namespace) -> dict:
    return build_pool(jsonl_items(args.input), args.output, kind="text", source=args.source,
                      splits=args.split or (), **_pool_args(args))


def _run_librispeech(args: argparse.Namespace) -> dict:
    items = list(librispeech_items(args.input, language=args.language or None, source=args.source))
    if not items:
        raise FileNotFoundError(f"no *.trans.txt below --input {args.input}: is it a LibriSpeech-style corpus?")
    return build_pool(items, args.output, kind="manifest", base_dir=args.input, **_speech_args(args))


def _run_commonvoice(args: argparse.Namespace) -> dict:
    items = list(commonvoice_items(args.input, args.tsv, source=args.source, language=args.language))
    return build_pool(items, args.output, kind="manifest", base_dir=args.input, **_speech_args(args))


def _run_hf(args: argparse.Namespace) -> dict:
    total, items = hf_items(args.input, split=args.hf_split, audio_column=args.audio_column,
                            text_column=args.text_column, key_column=args.key_column, language=args.language,
                            source=args.source)
    return build_pool(items, args.output, kind="manifest", total=total, **_speech_args(args))


def _run_folder(args: argparse.Namespace) -> dict:
    files, ignored = list_audio_files(args.input, args.extensions)
    if not files:
        raise FileNotFoundError(f"no audio files ({','.join(args.extensions)}) below --input {args.input}; "
                                f"{len(ignored)} other file(s), e.g. {ignored[:3]}")
    return build_pool(folder_items(files), args.output, kind=args.kind, base_dir=args.input,
                      max_seconds=args.max_seconds, ignored=ignored, **_pool_args(args))



def _pool_parents() -> tuple[argparse.ArgumentParser, ...]:
    """The option groups the formats share: (pool, split, speech durations, source, language)."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("pool")
    g.add_argument("--output", type=_output, required=True,
                   help="pool folder to write (an old pool there is replaced); with --split, the parent of one "
                        "pool per split. A URL (s3://bucket/pool, gs://..., any writable fsspec protocol; needs "
                        "its extra, e.g. pip install borealis[s3]) builds in a local staging folder, then uploads "
                        "the shards and index.json last")
    g.add_argument("--max-samples", type=_positive, default=2000, help="samples per shard at most")
    g.add_argument("--max-bytes", type=_size, default=512 * 2**20, help="bytes per shard at most (e.g. 512M)")
    g.add_argument("--workers", type=_positive, default=1,
                   help="processes that decode, resample and encode audio (output is identical for any value)")
    g.add_argument("--strict", action="store_true", help="exit 1 if any item is rejected")
    g.add_argument("--staging", type=Path, default=None, metavar="DIR",
                   help="with a URL --output: where the pool is built before the upload (default: a temporary "
                        "folder; needs the pool's size in free space)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("-v", "--verbose", action="store_true", help="log every rejection")
    split = argparse.ArgumentParser(add_help=False)
    split.add_argument("--split", type=_splits, default=None, metavar="NAME=FRAC,...",
                       help="held-out pools by a stable hash of the key, e.g. dev=0.01,test=0.01: OUTPUT/dev, "
                            "OUTPUT/test and OUTPUT/train (the rest); chunks of one recording stay together")
    speech = argparse.ArgumentParser(add_help=False, parents=[split])
    s = speech.add_argument_group("durations")
    s.add_argument("--min-seconds", type=_min_seconds, default=0.1, help="reject shorter clips (too_short)")
    s.add_argument("--max-seconds", type=_max_seconds, default=30.0,
                   help="cut longer recordings at silences between their 'segments' timestamps into chunks of at "
                        "most this; without timestamps they are rejected (too_long). 'none': no limit")
    src = argparse.ArgumentParser(add_help=False)
    src.add_argument("--source", default=None, help="'source' (corpus name) for items that carry none")
    lang = argparse.ArgumentParser(add_help=False)
    lang.add_argument("--language", default=None, help="'language' for items that carry none (e.g. en, ru)")

    return common, split, speech, src, lang


def _add_formats(build: argparse.ArgumentParser) -> None:
    """One subparser per corpus format under `build`, sharing the pool options."""
    common, split, speech, src, lang = _pool_parents()
    fmt = argparse.ArgumentDefaultsHelpFormatter
    sub = build.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = sub.add_parser("manifest", parents=[common, speech, src], formatter_class=fmt,
                       help="audio + transcript/chat/instruction JSONL manifest (Borealis or NeMo style)")
    p.add_argument("--input", type=Path, required=True,
                   help='JSONL: {"audio" | "audio_filepath": path, "text" | "messages" | "instruction"+"response", '
                        '"language"?, "key"?, "offset"?+"duration"?, "segments"?, ...}')
    p.set_defaults(error=p.error, run=_run_manifest, folder=False)
    p = sub.add_parser("librispeech", parents=[common, speech], formatter_class=fmt,
                       help="LibriSpeech-style folders: *.trans.txt next to <utterance id>.flac")
    p.add_argument("--input", type=Path, required=True, metavar="DIR", help="corpus root, searched recursively")
    p.add_argument("--language", default="en", help="'language' of every utterance ('' for none)")
    p.add_argument("--source", default="librispeech", help="'source' of every utterance")
    p.set_defaults(error=p.error, run=_run_librispeech, folder=True)
    p = sub.add_parser("commonvoice", parents=[common, speech, lang], formatter_class=fmt,
                       help="a Common Voice release folder: <tsv> + clips/ (mp3)")
    p.add_argument("--input", type=Path, required=True, metavar="DIR", help="the locale folder, e.g. cv-corpus-21.0/ru")
    p.add_argument("--tsv", default="train.tsv", help="which TSV to read (train, dev, test, validated, ...)")
    p.add_argument("--source", default="common_voice", help="'source' of every clip")
    p.set_defaults(error=p.error, run=_run_commonvoice, folder=True)
    p = sub.add_parser("hf", parents=[common, speech, src, lang], formatter_class=fmt,
                       help="a Hugging Face dataset (save_to_disk folder or parquet files) with an audio column; "
                            "needs `pip install datasets`")
    p.add_argument("--input", type=Path, required=True, help="save_to_disk folder, parquet file, folder or glob")
    p.add_argument("--hf-split", default=None, help="split of a DatasetDict (needed when it has several)")
    p.add_argument("--audio-column", default="audio", help="column holding the audio (bytes or path)")
    p.add_argument("--text-column", default=None, help="transcript column (default: the first of text, sentence, "
                                                         "transcription, transcript, normalized_text)")
    p.add_argument("--key-column", default=None, help="column with unique ids (default: key/id/utt_id/segment_id "
                                                        "if present, else from the audio path or row number)")
    p.set_defaults(error=p.error, run=_run_hf, folder=None)
    p = sub.add_parser("text", parents=[common, split, src], formatter_class=fmt,
                       help="chat JSONL -> text-only chat samples")
    p.add_argument("--input", type=Path, required=True, help='JSONL: {"messages": [...], "key"?, "language"?, ...}')
    p.set_defaults(error=p.error, run=_run_text, folder=False)
    p = sub.add_parser(
        "audio-folder", parents=[common], formatter_class=fmt,
        help="folder of noise or impulse-response audio files -> a pool for BackgroundNoise/ImpulseResponse",
        description="Every audio file below --input (recursively, sorted) becomes one sample: 16 kHz mono FLAC "
                    '+ {"kind": --kind, "source": path relative to --input, "duration"} (+ "cropped_from": '
                    "seconds, when cut). Each file is written or rejected: missing_file, undecodable_audio, "
                    "empty_audio (0 bytes or 0 frames), silent_audio (peak below -80 dBFS). Files with "
                    "other extensions and hidden files are counted as ignored in build_report.json.")
    p.add_argument("--input", type=Path, required=True, metavar="DIR",
                   help="folder of audio files (searched recursively)")
    p.add_argument("--kind", choices=CLIP_KINDS, required=True,
                   help="'noise' (for augmentations.BackgroundNoise) or 'ir' (impulse responses, for "
                        "augmentations.ImpulseResponse), stored as the samples' 'kind'")
    p.add_argument("--max-seconds", type=_seconds, default=None, metavar="SECONDS",
                   help="keep only the first SECONDS of longer files (only that much is decoded) and report "
                        "how many were cropped; e.g. 2 for IRs, 30 for long noise recordings (None: whole files)")
    p.add_argument("--extensions", type=_suffixes, default=",".join(AUDIO_SUFFIXES), metavar="EXT,EXT",
                   help="comma-separated file extensions read as audio (case-insensitive)")
    p.set_defaults(error=p.error, run=_run_folder, folder=True)


def _output(text: str) -> Path | str:
    """--output: a local folder (a `file://` URL is one), or a writable URL."""
    if text.startswith("pipe:"):
        raise argparse.ArgumentTypeError(f"{text!r}: pipe: URLs are read-only; write to a folder or an "
                                         "fsspec URL (s3://, gs://, ...)")
    return text if remote.is_url(text) else Path(remote.local_path(text))


def _build(args: argparse.Namespace) -> int:
    """`borealis shards build FORMAT ...`; the exit code: 1 under --strict when anything was rejected.
    To a URL: built in a staging folder (`--staging`, default a temporary one), then uploaded
    (`remote.publish_pool`: index.json last)."""
    if not isinstance(args.output, str):
        return _build_local(args)
    url = args.output
    with tempfile.TemporaryDirectory(prefix="borealis-build-", dir=args.staging) as staging:
        args.output = Path(staging) / "pool"
        code = _build_local(args, uploaded_to=url)
        try:
            written = remote.publish_pool(args.output, url)
        except (OSError, ValueError, ImportError) as e:
            print(f"--output {url}: upload failed, nothing of the new pool is listed there: {e}", file=sys.stderr)
            return 1
        print(f"  uploaded {len(written)} file(s) to {url} ({INDEX_NAME} last)")
    return code


def _build_local(args: argparse.Namespace, uploaded_to: str | None = None) -> int:
    exists = {True: args.input.is_dir(), False: args.input.is_file(), None: args.input.exists() or "*" in str(args.input)}
    if not exists[args.folder]:
        args.error(f"--input {args.input} is not {({True: 'a folder', False: 'a file'}).get(args.folder, 'found')}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = args.run(args)
    except (FileNotFoundError, ValueError, ImportError) as e:  # a corpus that is not what the subcommand reads
        args.error(str(e))
    print(summary_line(report))
    for reason, rows in report["rejections"].items():
        first = rows[0]
        where = ":".join(str(first[k]) for k in ("file", "line", "row") if k in first and not (
            k == "file" and args.format == "audio-folder"))  # a file's detail names the file
        print(f"  {reason}: {report['rejected'][reason]}, e.g. {where + ': ' if where else ''}{first['detail']}")
    if report.get("ignored"):
        print(f"  ignored (not read): e.g. {', '.join(report['ignored_files'][:5])}")
    print(f"  report: {uploaded_to.rstrip('/') + '/' + REPORT_NAME if uploaded_to else Path(report['output']) / REPORT_NAME}")
    if args.strict and report["num_rejected"]:
        print(f"--strict: {report['num_rejected']} item(s) rejected", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- inspect
def _counts(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{k} {n} ({100 * n / total:.0f}%)" for k, n in counts.items()) or "-"


def format_block(s: dict) -> list[str]:
    """A pool's figures as a few text lines (histogram bars: BAR_WIDTH characters = 100%)."""
    clips = f"; clips mean {s['mean_duration']:.2f} s, max {s['max_duration']:.2f} s" if s["mean_duration"] else ""
    lines = [f"{s['pool']}: {s['shards']} shard(s), {s['samples']} samples, "
             f"{s['hours']:.3f} h of audio ({s['duration']:.0f} s{clips})"]
    lines.append(f"  tasks      {_counts(s['tasks'])}")
    lines.append(f"  languages  {_counts(s['languages'])}")
    if (r := s["build_report"]) is not None:
        why = ", ".join(f"{k} {n}" for k, n in (r.get("rejected") or {}).items())
        lines.append(f"  build      read {r.get('read')}, written {r.get('written')}, rejected {r.get('num_rejected')}"
                     + (f" ({why})" if why else ""))
    with_audio = sum(s["histogram"].values())
    if with_audio:  # rows from the first to the last non-empty bin; the bins themselves are fixed
        used = [i for i, n in enumerate(s["histogram"].values()) if n]
        rows = list(s["histogram"].items())[used[0]:used[-1] + 1]
        for i, (b, n) in enumerate(rows):
            bar = "#" * round(BAR_WIDTH * n / with_audio) or ("." if n else "")
            lines.append(f"  {'duration' if i == 0 else '':9}  {b + ' s':>7} {n:7} {100 * n / with_audio:5.1f}%  {bar}")
    if s["text_only"]:
        lines.append(f"  text-only  {s['text_only']} samples without audio")
    if s["verified"] and not s["problems"]:
        lines.append(f"  verify     OK: sha256, {s['samples']} samples decoded, counts and durations match")
    for p in s["problems"]:
        lines.append(f"  PROBLEM    {p}")
    return lines


def _write_json(path: Path, stats: Sequence[dict], total: dict, overlap: OverlapReport | None = None) -> None:
    pools = [{**s, "problems": [asdict(p) for p in s["problems"]]} for s in stats]
    doc = {"duration_bins": list(DURATION_BINS), "pools": pools, "totals": total}
    if overlap is not None:
        doc["overlap"] = overlap.to_json()
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- play
def find_samples(pools: Sequence[Path], key: str) -> list[SampleRef]:
    """Every sample named `key` in `pools` (tar headers only); unreadable shards are skipped with a warning."""
    hits = []
    for pool in pools:
        try:
            paths = list_shards(pool)
        except (FileNotFoundError, ValueError) as e:
            log.warning("skipping pool %s: %s", pool, e)
            continue
        for path in paths:
            try:
                hits += [r for r in index_samples([path]) if r.key == key]
            except (ShardError, OSError) as e:
                log.warning("skipping shard %s: %s", path, e)
    return hits


def play(pools: Sequence[Path], key: str, out: Path) -> int:
    """Write sample `key`'s audio to `out` (16 kHz mono PCM_16 WAV) and print its metadata.

    Returns:
        0 when written; 2 when the key is not found or the sample is text-only; 1 when it
        does not decode.
    """
    hits = find_samples(pools, key)
    if not hits:
        print(f"--play: no sample {key!r} in {len(pools)} pool(s): {', '.join(map(str, pools))}", file=sys.stderr)
        return 2
    if len(hits) > 1:
        log.warning("sample %r is in %d shards (%s); using the first", key, len(hits), ", ".join(h.shard for h in hits))
    try:
        sample = read_sample(hits[0])
    except ShardError as e:
        print(f"--play: {e}", file=sys.stderr)
        return 1
    print(f"{key}: {sample['shard']}")
    print(json.dumps(sample["meta"], ensure_ascii=False, indent=2))
    if sample["audio"] is None:
        print(f"--play: sample {key!r} is text-only (no audio member); nothing to write", file=sys.stderr)
        return 2
    # The stored PCM_16 values exactly: soundfile reads them as int/32768 but writes float as x*32767.
    pcm = np.clip(np.round(sample["audio"] * 32768.0), -32768, 32767).astype(np.int16)
    sf.write(out, pcm, SAMPLE_RATE, subtype="PCM_16")
    print(f"wrote {out} ({sample['duration']:.3f} s, {SAMPLE_RATE} Hz mono)")
    return 0


def _add_inspect_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a pool folder, a glob, or a folder searched recursively for pools; or a pool URL "
                             "(s3://, gs://, http(s)://, any fsspec protocol, pipe:CMD with {name})")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the figures (and any problems) to FILE as JSON")
    parser.add_argument("--verify", action="store_true",
                        help="check sha256, decode every sample, compare counts and durations with index.json; "
                             "exit 1 on any problem")
    parser.add_argument("--play", default=None, metavar="KEY", help="write sample KEY's audio as a 16 kHz WAV")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help="where --play writes (default: KEY.wav in the current folder)")
    parser.add_argument("--overlap", action="store_true",
                        help="compare the pools by audio fingerprint and normalised transcript; exit 1 when a "
                             "training pool and a benchmark share a sample")
    parser.add_argument("--benchmarks", nargs="+", default=[], metavar="PATH",
                        help="with --overlap: the benchmark pools (folders, globs); the PATHs are training pools")
    parser.add_argument("--workers", type=_positive, default=1,
                        help="with --overlap: processes that fingerprint pools not fingerprinted before")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overlap(pools: Sequence[Path], benchmarks: Sequence[Path], progress: bool, workers: int) -> OverlapReport:
    """Compare `pools` (training) and `benchmarks`, print the report, return it."""
    names = {str(p): p for p in pools if p not in benchmarks} | {str(p): p for p in benchmarks}
    report = find_overlaps(names, benchmarks=[str(p) for p in benchmarks], progress=progress, workers=workers)
    print("\n".join(report.lines()))
    return report


def _inspect(args: argparse.Namespace) -> int:
    """`borealis shards inspect ...`; the exit code: 1 when any problem was found, 2 when --play has nothing
    to write."""
    parser = args.parser
    if args.out is not None and args.play is None:
        parser.error("--out needs --play KEY")
    if args.play is not None and (args.verify or args.json is not None or args.overlap):
        parser.error("--play writes one sample; use --verify / --json / --overlap in a separate run")
    if (args.benchmarks or args.workers > 1) and not args.overlap:
        parser.error("--benchmarks and --workers need --overlap")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pools: list[Path | str] = []
    benchmarks: list[Path | str] = []
    for spec, into in [(x, pools) for x in args.paths] + [(x, benchmarks) for x in args.benchmarks]:
        try:
            into += [p for p in find_pools(spec) if p not in into]
        except FileNotFoundError as e:
            parser.error(str(e))
    pools += [p for p in benchmarks if p not in pools]
    if args.play is not None:
        return play(pools, args.play, args.out or Path(f"{args.play}.wav"))

    expected = 0
    for pool in pools:
        try:
            expected += read_index(pool)["num_samples"]
        except (OSError, ValueError):
            pass  # reported by inspect_pool
    stats = []
    with tqdm(total=expected, unit="sample", desc="verify" if args.verify else "list", leave=False,
              disable=args.no_progress) as bar:
        for pool in pools:
            bar.set_postfix_str(str(pool).rstrip("/").rsplit("/", 1)[-1])
            stats.append(inspect_pool(pool, verify=args.verify, bar=bar))
            tqdm.write("\n".join(format_block(stats[-1])), file=sys.stdout)
    total = totals(stats)
    print(f"total: {total['pools']} pool(s), {total['shards']} shard(s), {total['samples']} samples, "
          f"{total['hours']:.3f} h of audio; tasks {_counts(total['tasks'])}")
    if args.verify or total["problems"]:
        bad = sum(bool(s["problems"]) for s in stats)
        print(f"{'verify' if args.verify else 'list'}: {total['problems']} problem(s) in {bad} of {len(stats)} pool(s)"
              if total["problems"] else f"verify: all {len(stats)} pool(s) OK")
    report = _overlap(pools, benchmarks, not args.no_progress, args.workers) if args.overlap else None
    if args.json is not None:
        _write_json(args.json, stats, total, report)
    return 1 if total["problems"] or (report is not None and report.conflicts()) else 0


# ----------------------------------------------------------------------------- borealis shards
def build_parser() -> argparse.ArgumentParser:
    """`borealis shards`: the `build` and `inspect` subcommands."""
    parser = argparse.ArgumentParser(prog="borealis shards", description="Build and check WebDataset shard pools.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="{build,inspect}")
    raw = argparse.RawDescriptionHelpFormatter
    build = sub.add_parser("build", help="turn a corpus (manifest, LibriSpeech, Common Voice, HF, chats, noise/IR "
                                         "folder) into a shard pool", description=BUILD_HELP, formatter_class=raw)
    _add_formats(build)
    build.set_defaults(main=_build)
    inspect = sub.add_parser("inspect", help="list what pools hold, verify every byte and sample, play one sample",
                             description=INSPECT_HELP, formatter_class=raw)
    _add_inspect_options(inspect)
    inspect.set_defaults(main=_inspect, parser=inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`borealis shards ...`; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.main(args)
