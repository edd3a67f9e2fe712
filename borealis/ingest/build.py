"""Build a pool (or one per split) from corpus items, with every item written or rejected.

What: `build_pool(items, out_dir, kind=...)` checks each item (`items.PREPARERS`), decodes and
encodes its audio in `workers` processes (`audio.ordered`), writes the samples in input order
with `ShardWriter` (one writer per split), and writes `build_report.json` beside the pool:
the counts and the first 20 rejections per reason, each naming where the item came from.

Why: a corpus must never lose samples silently: written + rejected = read always holds and
is asserted, and the report says why each rejected item was rejected.

Cost: the audio encode dominates (see `audio`); the parent's tar writing takes ~0.1 ms a clip.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from borealis.ingest.audio import Encoded, Limits, ordered
from borealis.ingest.items import CLIP_KINDS, PREPARERS, REASONS, Item, Prepared, Rejected, parse_line, split_of
from borealis.shards import REPORT_NAME, ShardWriter

log = logging.getLogger("borealis.ingest")

MAX_EXAMPLES = 20  # rejections kept per reason in the report
Kind = Literal["manifest", "text", "noise", "ir"]


@dataclass
class _Tally:
    """What a build has counted so far: read/written/samples/chunked/cropped, and rejections."""

    counts: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    written: Counter[str | None] = field(default_factory=Counter)  # items per split

    def reject(self, r: Rejected, where: dict) -> None:
        self.rejected[r.reason] += 1
        bucket = self.examples.setdefault(r.reason, [])
        if len(bucket) < MAX_EXAMPLES:
            bucket.append({**where, "key": r.key, "detail": r.detail})
        log.debug("%s rejected (%s): %s", where, r.reason, r.detail)

    def add(self, result: Encoded) -> None:
        self.written[result.split] += 1
        self.counts["written"] += 1
        self.counts["samples"] += len(result.samples)
        self.counts["chunked"] += len(result.samples) > 1
        self.counts["cropped"] += result.cropped


def _as_item(position: int, raw: Item | dict | str | bytes, clips: bool) -> Item:
    if isinstance(raw, Item):
        return raw
    where: dict[str, Any] = {"line": position}
    if clips and isinstance(raw, dict):
        where["file"] = raw.get("audio")
    return Item(where, raw)


def _check_options(kind: str, min_seconds: float, max_seconds: float | None, ignored: Sequence[str],
                   splits: Sequence[tuple[str, float]], rest: str) -> None:
    """Raise one ValueError naming every bad `build_pool` option."""
    clips = kind in CLIP_KINDS
    problems = []
    if kind not in PREPARERS:
        problems.append(f"kind must be one of {sorted(PREPARERS)}, got {kind!r}")
    if max_seconds is not None and not 0 < max_seconds < math.inf:
        problems.append(f"max_seconds must be finite and > 0, got {max_seconds!r}")
    if not 0 <= min_seconds < (max_seconds or math.inf):
        problems.append(f"min_seconds must be >= 0 and below max_seconds, got {min_seconds!r}")
    if ignored and not clips:
        problems.append(f"ignored files are listed for kinds {CLIP_KINDS} only, got kind {kind!r}")
    names = [n for n, _ in splits]
    if splits and (len(set(names + [rest])) != len(names) + 1 or sum(f for _, f in splits) >= 1
                   or any(not 0 < f < 1 for _, f in splits)):
        problems.append(f"splits must have distinct names other than {rest!r} and fractions in (0, 1) summing "
                        f"below 1, got {list(splits)}")
    if problems:
        raise ValueError("build_pool: " + "; ".join(problems))


def _jobs(items: Iterable[Item | dict | str | bytes], prepare: Callable[..., Prepared], *, clips: bool,
          base_dir: Path | None, source: str | None, splits: Sequence[tuple[str, float]], rest: str,
          tally: _Tally, wheres: deque[dict]) -> Iterator[Prepared | Rejected]:
    """Each non-blank item checked: a `Prepared` with its split, or the `Rejected` it raised;
    its `where` goes on `wheres` in the same order."""
    seen: set[str] = set()
    for position, raw in enumerate(items, start=1):
        item = _as_item(position, raw, clips)
        if isinstance(item.data, (str, bytes)) and not item.data.strip():
            continue
        tally.counts["read"] += 1
        wheres.append(item.where)
        try:
            data = item.data
            if isinstance(data, Rejected):
                raise data
            if isinstance(data, (str, bytes)):
                data = parse_line(data)
            if not isinstance(data, dict):
                raise Rejected("bad_json", f"expected a dict, got {type(data).__name__}")
            p = prepare(data, base_dir=base_dir, source=source)
            if p.key in seen:
                raise Rejected("duplicate_key", f"key {p.key!r} was already used by an earlier item", p.key)
            seen.add(p.key)  # a key is taken by its first item, written or not
            try:
                json.dumps(p.meta, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise Rejected("bad_field", f"metadata is not JSON-serialisable ({e})", p.key) from None
            p.split = (split_of(p.key, splits) or rest) if splits else None
            yield p
        except Rejected as r:
            yield r


def build_pool(items: Iterable[Item | dict | str | bytes], out_dir: str | Path, *, kind: Kind,
               base_dir: Path | None = None, max_samples: int = 2000, max_bytes: int = 512 * 2**20,
               source: str | None = None, min_seconds: float = 0.0, max_seconds: float | None = None,
               splits: Sequence[tuple[str, float]] = (), rest: str = "train", workers: int = 1,
               ignored: Sequence[str] = (), total: int | None = None, progress: bool = True) -> dict:
    """Write one pool (or one per split) from corpus items and return the build report.

    Args:
        items: `Item`s from a reader in `borealis.corpora`, or bare dicts / raw JSONL lines
            (str or bytes; "line" in the report is then the 1-based position in `items`, so
            the file's line number for `open(path, "rb")`). Blank lines are skipped, uncounted.
        out_dir: the pool folder (see `ShardWriter`; an old pool there is replaced); with
            `splits`, pools `out_dir/<rest>` and `out_dir/<name>` for each split.
        kind: "manifest" (audio samples), "text" (chats without audio), or "noise" / "ir"
            (augmentation clips, items {"audio": path}; see `prepare_clip_item`).
        base_dir: folder that relative audio paths resolve against (None: the working dir).
        max_samples / max_bytes: shard size limits.
        source: "source" for manifest/text items that carry none.
        min_seconds: speech shorter than this is rejected ("too_short").
        max_seconds: speech: longer recordings are cut at their segment timestamps, or
            rejected ("too_long") without them. noise/ir: only the first max_seconds are read.
        splits: [(name, fraction)] held-out pools chosen by `split_of(key)` (the source key,
            so all chunks of a recording land in one split); the rest go to `rest`.
        workers: processes that decode and encode audio (1: in this process).
        ignored: noise/ir only: files found beside the items but not read (not audio by
            extension, hidden); counted and listed in the report, so none vanishes unseen.
        total: the number of items, for the progress bar, when `items` has no len().
        progress: show a tqdm bar.

    Returns:
        {"kind", "output", "read", "written", "rejected": {reason: count}, "num_rejected",
        "rejections": {reason: [first 20 {**where, "key", "detail"}]}, "num_samples" (chunks
        count one each), "duration", "num_shards", "splits" ({name: {"written", "num_samples",
        "duration", "num_shards"}}, with `splits` only), "min_seconds", "max_seconds",
        "chunked" (recordings cut into several samples), for noise/ir also "cropped" and
        "ignored" / "ignored_files" (the first 20); also written to `out_dir/build_report.json`.
    """
    _check_options(kind, min_seconds, max_seconds, ignored, splits, rest)
    clips = kind in CLIP_KINDS
    limits = Limits(0.0 if clips else min_seconds, max_seconds, crop=clips)
    out_dir = Path(out_dir)
    tally = _Tally()
    wheres: deque[dict] = deque()  # the items in flight, in order
    (out_dir / REPORT_NAME).unlink(missing_ok=True)  # a report always describes the pool beside it
    jobs = _jobs(items, PREPARERS[kind], clips=clips, base_dir=base_dir, source=source, splits=splits, rest=rest,
                 tally=tally, wheres=wheres)
    targets = {name: out_dir / name for name in [rest, *(n for n, _ in splits)]} if splits else {None: out_dir}
    writers = {name: ShardWriter(path, max_samples=max_samples, max_bytes=max_bytes) for name, path in targets.items()}
    try:
        bar = tqdm(ordered(jobs, limits, workers), total=total if total is not None else
                   (len(items) if hasattr(items, "__len__") else None), desc=f"{kind} -> {out_dir.name}",
                   unit="item", disable=not progress)
        for result in bar:
            where = wheres.popleft()
            if isinstance(result, Rejected):
                tally.reject(result, where)
                continue
            writer = writers[result.split]
            for key, meta, flac, duration in result.samples:
                writer.write_encoded(key, meta, flac, duration)
            tally.add(result)
    finally:
        indexes = {name: w.close() for name, w in writers.items()}
    report = _report(kind, out_dir, tally, indexes, bool(splits), clips)
    if clips:
        report.update({"max_seconds": max_seconds, "cropped": tally.counts["cropped"], "ignored": len(ignored),
                       "ignored_files": list(ignored[:MAX_EXAMPLES])})
    else:
        report.update({"min_seconds": min_seconds, "max_seconds": max_seconds, "chunked": tally.counts["chunked"]})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_NAME).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return report


def _report(kind: str, out_dir: Path, tally: _Tally, indexes: dict, splits: bool, clips: bool) -> dict[str, Any]:
    """The report's counts (checked: written + rejected = read, samples = the indexes' total)."""
    counts, rejected = tally.counts, tally.rejected
    num_rejected = sum(rejected.values())
    assert counts["written"] + num_rejected == counts["read"], (counts, num_rejected)
    assert sum(i["num_samples"] for i in indexes.values()) == counts["samples"], (indexes, counts)
    report: dict[str, Any] = {
        "kind": kind, "output": str(out_dir), "read": counts["read"], "written": counts["written"],
        "rejected": {r: rejected[r] for r in REASONS if rejected[r]}, "num_rejected": num_rejected,
        "rejections": {r: tally.examples[r] for r in REASONS if r in tally.examples},
        "num_samples": counts["samples"], "duration": round(sum(i["duration"] for i in indexes.values()), 3),
        "num_shards": sum(len(i["shards"]) for i in indexes.values()),
    }
    if splits:
        report["splits"] = {name: {"written": tally.written[name], "num_samples": i["num_samples"],
                                   "duration": i["duration"], "num_shards": len(i["shards"])}
                            for name, i in indexes.items()}
    return report


def summary_line(report: dict) -> str:
    """'read 10, written 7, rejected 3 (missing_file 1, ...)' plus the audio total (and, for
    noise/IR pools, how many clips were cropped and files ignored)."""
    reasons = ", ".join(f"{r} {n}" for r, n in report["rejected"].items())
    line = (f"{report['output']}: read {report['read']}, written {report['written']}, "
            f"rejected {report['num_rejected']}{f' ({reasons})' if reasons else ''}; "
            f"{report['duration'] / 3600:.2f} h ({report['duration']:.1f} s) of audio in "
            f"{report['num_samples']} sample(s), {report['num_shards']} shard(s)")
    if report.get("chunked"):
        line += f"; {report['chunked']} long recording(s) cut into chunks"
    if report.get("splits"):
        line += "; splits " + ", ".join(f"{n} {s['written']}" for n, s in report["splits"].items())
    if "cropped" in report and report.get("max_seconds") is not None:
        line += f"; cropped {report['cropped']} to {report['max_seconds']:g} s"
    if report.get("ignored"):
        line += f"; ignored {report['ignored']} non-audio or hidden file(s)"
    return line
