"""Readers that turn a corpus on disk into `ingest.Item`s: one per utterance, row or file.

What: each reader yields items in a deterministic order (sorted files, file order within
them) for `ingest.build_pool`:
    jsonl_items(path)                     a JSONL manifest or chat file (Borealis or NeMo style)
    librispeech_items(root)               LibriSpeech-style folders: `*.trans.txt` beside the audio
    commonvoice_items(root, tsv)          a Common Voice release: `<tsv>` + `clips/`
    hf_items(path, ...)                   a Hugging Face dataset (`save_to_disk` folder or parquet)
    folder_items(root)                    every audio file below a folder (noise/IR pools)

Why: a reader only finds items and says where each came from ({"file", "line"}, {"row"});
checking, decoding and writing happen once, in `ingest`, so every format gets the same
rejection reasons and accounting. A line a reader cannot even read (not UTF-8, a TSV row
with the wrong number of fields) becomes a `Rejected` item rather than an exception, so it
is counted like any other bad input. `datasets` is imported only by `hf_items`.

Cost: a directory walk and a text read; audio is not opened here.
"""

from __future__ import annotations

import csv
import glob
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from borealis.ingest import Item, Rejected, audio_key

# Extensions read as audio by default: libsndfile's formats (MP3 needs libsndfile >= 1.1).
AUDIO_SUFFIXES = ("wav", "flac", "ogg", "oga", "opus", "mp3", "aif", "aiff", "aifc", "au", "caf", "w64", "rf64")
TEXT_COLUMNS = ("text", "sentence", "transcription", "transcript", "normalized_text")  # HF, in order of preference
KEY_COLUMNS = ("key", "id", "utt_id", "segment_id")
# Common Voice columns kept as metadata (renamed): speaker and demographics.
CV_FIELDS = {"client_id": "speaker", "age": "age", "gender": "gender", "accents": "accents", "accent": "accents",
             "variant": "variant", "segment": "segment"}


def _decode(raw: bytes, where: dict) -> str | Rejected:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejected("non_utf8", f"{where.get('file', 'line')}{':' + str(where['line']) if 'line' in where else ''}"
                                    f" is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}; re-encode "
                                    f"the file as UTF-8)")


def _text_lines(f, name: str, start: int = 1) -> Iterator[tuple[dict, str | Rejected]]:
    """(where, decoded line or a non_utf8 Rejected) for the non-blank lines of binary file `f`."""
    for number, raw in enumerate(f, start=start):
        if raw.strip():
            where = {"file": name, "line": number}
            yield where, _decode(raw, where)


def jsonl_items(path: str | Path) -> Iterator[Item]:
    """The lines of a JSONL file as raw bytes (parsed, and checked for UTF-8, by `ingest`).

    Blank lines are skipped and not counted; "line" is the 1-based line number in the file.
    """
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield Item({"line": number}, line)


def librispeech_items(root: str | Path, *, language: str | None = "en", source: str | None = None,
                      suffixes: Sequence[str] = ("flac", "wav")) -> Iterator[Item]:
    """LibriSpeech-style corpora: every `*.trans.txt` below `root`, sorted.

    Each line is "<utterance id> <transcript>"; the audio is `<utterance id>.<ext>` in the
    same folder (the first of `suffixes` that exists; the first suffix when none does, so a
    missing file is reported as missing). The id is the key; "SPEAKER-CHAPTER-N" ids also give
    "speaker" and "chapter" fields.
    """
    root = Path(root)
    for trans in sorted(root.rglob("*.trans.txt")):
        rel = trans.relative_to(root).as_posix()
        with open(trans, "rb") as f:
            for where, line in _text_lines(f, rel):
                if isinstance(line, Rejected):
                    yield Item(where, line)
                    continue
                utt, _, text = line.strip().partition(" ")
                audio = next((trans.parent / f"{utt}.{s}" for s in suffixes if (trans.parent / f"{utt}.{s}").is_file()),
                             trans.parent / f"{utt}.{suffixes[0]}")
                item: dict[str, Any] = {"key": utt, "audio": str(audio.relative_to(root)), "text": text}
                parts = utt.split("-")
                if len(parts) == 3:
                    item.update(speaker=parts[0], chapter=parts[1])
                if language:
                    item["language"] = language
                if source:
                    item["source"] = source
                yield Item(where, item)


def commonvoice_items(root: str | Path, tsv: str = "train.tsv", *, source: str | None = "common_voice",
                      language: str | None = None) -> Iterator[Item]:
    """A Common Voice release folder (`<locale>/`): the rows of `root/tsv`, audio in `root/clips/`.

    The key is the clip's file stem (`common_voice_ru_123`), "text" the `sentence` column,
    "language" the `locale` column (else `language`, else the folder name); speaker and
    demographics are kept (`client_id` as "speaker"; empty columns are dropped).
    """
    root = Path(root)
    path = root / tsv
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Common Voice release folder holds train.tsv, dev.tsv, "
                                f"test.tsv, validated.tsv and clips/")
    with open(path, "rb") as f:
        header_raw = f.readline()
        header = header_raw.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
        missing = {"path", "sentence"} - set(header)
        if missing:
            raise ValueError(f"{path}: header lacks {sorted(missing)} (has {header}); is it a Common Voice TSV?")
        for where, line in _text_lines(f, tsv, start=2):
            if isinstance(line, Rejected):
                yield Item(where, line)
                continue
            values = next(csv.reader(io.StringIO(line.rstrip("\r\n")), delimiter="\t", quoting=csv.QUOTE_NONE))
            if len(values) != len(header):
                yield Item(where, Rejected("bad_field", f"{tsv}:{where['line']} has {len(values)} fields, the "
                                                        f"header {len(header)}"))
                continue
            row = dict(zip(header, values))
            item: dict[str, Any] = {"key": Path(row["path"]).stem, "audio": f"clips/{row['path']}",
                                    "text": row["sentence"]}
            lang = row.get("locale") or language or root.name
            if lang:
                item["language"] = lang
            if source:
                item["source"] = source
            item.update({CV_FIELDS[k]: v for k, v in row.items() if k in CV_FIELDS and v})
            yield Item(where, item)


def _hf_dataset(path: str | Path, split: str | None):
    try:
        import datasets
    except ImportError:
        raise ImportError("reading Hugging Face datasets needs the `datasets` package: pip install 'borealis[hf]'") from None
    p = Path(path)
    if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
        ds = datasets.load_from_disk(str(p))
    else:
        if p.is_file():
            files = [str(p)]
        elif p.is_dir():
            files = sorted(str(x) for x in p.rglob("*.parquet"))
        else:
            files = sorted(glob.glob(str(path), recursive=True))
        if not files:
            raise FileNotFoundError(f"{path}: neither a `save_to_disk` folder (dataset_info.json / dataset_dict.json) "
                                    f"nor parquet files")
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise ValueError(f"{path} holds splits {sorted(ds)}; choose one with --hf-split")
        ds = ds[split]
    return ds, datasets


def hf_items(path: str | Path, *, split: str | None = None, audio_column: str = "audio",
             text_column: str | None = None, key_column: str | None = None, language: str | None = None,
             source: str | None = None) -> tuple[int, Iterator[Item]]:
    """A Hugging Face dataset with an audio column: a `save_to_disk` folder, or parquet files.

    The audio column is read undecoded (`Audio(decode=False)`: the encoded file's bytes or
    its path) and decoded by `ingest` with soundfile, so neither torchcodec nor ffmpeg is
    needed. The text column is `text_column` or the first of TEXT_COLUMNS present; the key is
    `key_column` (or the first of KEY_COLUMNS present), else derived from the audio's path, else
    "<source>-<row>". Other scalar columns are kept as metadata.

    Returns:
        (number of rows, the items), where "row" is the 0-based row index.
    """
    ds, datasets = _hf_dataset(path, split)
    columns = list(ds.column_names)
    problems = []
    if audio_column not in columns:
        problems.append(f"no audio column {audio_column!r} (columns: {columns}); pass --audio-column")
    text_column = text_column or next((c for c in TEXT_COLUMNS if c in columns), None)
    if text_column is None or text_column not in columns:
        problems.append(f"no text column (tried {text_column or TEXT_COLUMNS}; columns: {columns}); pass --text-column")
    key_column = key_column or next((c for c in KEY_COLUMNS if c in columns), None)
    if key_column is not None and key_column not in columns:
        problems.append(f"no key column {key_column!r} (columns: {columns})")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    if isinstance(ds.features[audio_column], datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    name = source or Path(path).stem
    extra = [c for c in columns if c not in (audio_column, text_column, key_column)]

    def rows() -> Iterator[Item]:
        for i, row in enumerate(ds):
            audio = row[audio_column] or {}
            data, file = (audio.get("bytes"), audio.get("path")) if isinstance(audio, dict) else (None, None)
            item: dict[str, Any] = {"text": row[text_column]}
            if key_column is not None:
                item["key"] = str(row[key_column])
            elif file:
                item["key"] = audio_key(file)
            else:
                item["key"] = f"{name}-{i:08d}"
            if data:
                item["audio_bytes"] = data
            else:
                item["audio"] = file
            if file:
                item["audio_path"] = file
            if language:
                item["language"] = language
            if source:
                item["source"] = source
            item.update({c: row[c] for c in extra if isinstance(row[c], (str, int, float, bool)) and c not in item})
            yield Item({"row": i}, item)

    return len(ds), rows()


def list_audio_files(root: Path, suffixes: Sequence[str] = AUDIO_SUFFIXES) -> tuple[list[str], list[str]]:
    """Files below `root`, recursively, as sorted POSIX paths relative to it: (audio, ignored).

    Audio files have one of `suffixes` (case-insensitive); the rest, and anything hidden (a
    name or folder starting with '.', e.g. macOS `._x.wav` resource forks), are ignored.
    Sorting makes keys, shard order and so the pool's bytes independent of the file system.
    """
    wanted = {x.lower().lstrip(".") for x in suffixes}
    audio, ignored = [], []
    for rel in sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()):
        hidden = any(part.startswith(".") for part in rel.split("/"))
        is_audio = not hidden and Path(rel).suffix.lower().lstrip(".") in wanted
        (audio if is_audio else ignored).append(rel)
    return audio, ignored


def folder_items(files: Sequence[str]) -> list[Item]:
    """Noise/IR items for `list_audio_files`' audio: {"audio": path relative to the folder}."""
    return [Item({"file": f}, {"audio": f}) for f in files]
