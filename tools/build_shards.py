"""Turn an audio corpus, a chat corpus or a folder of noise/IR clips into a Borealis shard pool.

What:
    python tools/build_shards.py manifest --input train.jsonl --output shards/my_asr --source my_corpus
    python tools/build_shards.py manifest --input nemo_manifest.json --output shards/x --max-seconds 30
    python tools/build_shards.py librispeech --input LibriSpeech/train-clean-100 --output shards/ls100 --workers 8
    python tools/build_shards.py commonvoice --input cv-corpus-21.0/ru --tsv train.tsv --output shards/cv_ru
    python tools/build_shards.py hf --input my_dataset/ --hf-split train --output shards/my_hf   (pip install datasets)
    python tools/build_shards.py text --input chats.jsonl --output shards/my_chats
    python tools/build_shards.py audio-folder --input musan/noise --kind noise --output shards/noise
    python tools/build_shards.py audio-folder --input rirs/ --kind ir --max-seconds 2 --output shards/ir

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

Why: every input item ends as exactly one of written or rejected with a reason (see
`borealis.ingest.REASONS`), so a corpus never loses samples silently: the summary says how
many of each, and `OUTPUT/build_report.json` keeps the counts and the first 20 rejections per
reason, naming the file and line. `--strict` turns any rejection into exit status 1, for CI.
Keys are deterministic and so are the shards: the same input gives byte-identical pools,
whatever `--workers` is. The pipeline lives in `borealis/ingest.py`, the corpus readers in
`borealis/corpora.py`; this file is the command line.

Cost: see `borealis/ingest.py`; `python tools/bench_shards.py` measures hours sharded per minute.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout, without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from borealis.corpora import (AUDIO_SUFFIXES, commonvoice_items, folder_items, hf_items,  # noqa: E402
                              jsonl_items, librispeech_items, list_audio_files)
from borealis.ingest import (CLIP_KINDS, REPORT_NAME, audio_key, build_pool, chat_key,  # noqa: E402,F401
                             summary_line)

log = logging.getLogger("build_shards")


# ----------------------------------------------------------------------------- CLI
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


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one subparser per corpus format, sharing the pool options."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("pool")
    g.add_argument("--output", type=Path, required=True,
                   help="pool folder to write (an old pool there is replaced); with --split, the parent of one "
                        "pool per split")
    g.add_argument("--max-samples", type=_positive, default=2000, help="samples per shard at most")
    g.add_argument("--max-bytes", type=_size, default=512 * 2**20, help="bytes per shard at most (e.g. 512M)")
    g.add_argument("--workers", type=_positive, default=1,
                   help="processes that decode, resample and encode audio (output is identical for any value)")
    g.add_argument("--strict", action="store_true", help="exit 1 if any item is rejected")
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

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("manifest", parents=[common, speech, src], formatter_class=fmt,
                       help="audio + transcript/chat/instruction JSONL manifest (Borealis or NeMo style)")
    p.add_argument("--input", type=Path, required=True,
                   help='JSONL: {"audio" | "audio_filepath": path, "text" | "messages" | "instruction"+"response", '
                        '"language"?, "key"?, "offset"?+"duration"?, "segments"?, ...}')
    p.set_defaults(run=_run_manifest, folder=False)
    p = sub.add_parser("librispeech", parents=[common, speech], formatter_class=fmt,
                       help="LibriSpeech-style folders: *.trans.txt next to <utterance id>.flac")
    p.add_argument("--input", type=Path, required=True, metavar="DIR", help="corpus root, searched recursively")
    p.add_argument("--language", default="en", help="'language' of every utterance ('' for none)")
    p.add_argument("--source", default="librispeech", help="'source' of every utterance")
    p.set_defaults(run=_run_librispeech, folder=True)
    p = sub.add_parser("commonvoice", parents=[common, speech, lang], formatter_class=fmt,
                       help="a Common Voice release folder: <tsv> + clips/ (mp3)")
    p.add_argument("--input", type=Path, required=True, metavar="DIR", help="the locale folder, e.g. cv-corpus-21.0/ru")
    p.add_argument("--tsv", default="train.tsv", help="which TSV to read (train, dev, test, validated, ...)")
    p.add_argument("--source", default="common_voice", help="'source' of every clip")
    p.set_defaults(run=_run_commonvoice, folder=True)
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
    p.set_defaults(run=_run_hf, folder=None)
    p = sub.add_parser("text", parents=[common, split, src], formatter_class=fmt,
                       help="chat JSONL -> text-only chat samples")
    p.add_argument("--input", type=Path, required=True, help='JSONL: {"messages": [...], "key"?, "language"?, ...}')
    p.set_defaults(run=_run_text, folder=False)
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
    p.set_defaults(run=_run_folder, folder=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (1 under --strict when anything was rejected)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    exists = {True: args.input.is_dir(), False: args.input.is_file(), None: args.input.exists() or "*" in str(args.input)}
    if not exists[args.folder]:
        parser.error(f"--input {args.input} is not {({True: 'a folder', False: 'a file'}).get(args.folder, 'found')}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = args.run(args)
    except (FileNotFoundError, ValueError, ImportError) as e:  # a corpus that is not what the subcommand reads
        parser.error(str(e))
    print(summary_line(report))
    for reason, rows in report["rejections"].items():
        first = rows[0]
        where = ":".join(str(first[k]) for k in ("file", "line", "row") if k in first and not (
            k == "file" and args.command == "audio-folder"))  # a file's detail names the file
        print(f"  {reason}: {report['rejected'][reason]}, e.g. {where + ': ' if where else ''}{first['detail']}")
    if report.get("ignored"):
        print(f"  ignored (not read): e.g. {', '.join(report['ignored_files'][:5])}")
    print(f"  report: {Path(report['output']) / REPORT_NAME}")
    if args.strict and report["num_rejected"]:
        print(f"--strict: {report['num_rejected']} item(s) rejected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
