"""Train/benchmark overlap: find the same audio or the same transcript in two pools, or twice in one.

What: `find_overlaps(pools, benchmarks=...)` compares shard pools by a fingerprint of the
decoded audio and by normalised transcript, and returns an `OverlapReport`: for every pair of
pools (and every pool with itself) the duplicate pairs found, by audio and by text, with a
few example keys. `check_overlap(train, benchmarks)` raises `ValueError` naming the pools,
the counts and example keys when a benchmark overlaps a training pool (the check for `fit`
to run on data.train_pools and data.text_pool against data.val_sets before any weights
load), and `borealis shards inspect --overlap --benchmarks ...` prints the report and exits
1 in that case.

Why: a benchmark clip that is also a training clip makes its WER a memory test. Copies are
rarely byte-identical: a corpus re-published at another rate, or re-encoded as MP3 (which
adds encoder delay and padding, tens of ms, and changes every sample value), so the audio
fingerprint is spectral, not a hash of samples (Haitsma & Kalker, "A highly robust audio
fingerprinting system", ISMIR 2002):
- log energies of 17 bands (250-5000 Hz, log-spaced) in 256 ms Hann frames every 32 ms;
- bit (t, m) = 1 when the energy difference of bands m, m+1 grows from frame t-1 to t, so a
  frame is one uint16, and a gain, an EQ tilt or a codec's small changes flip few bits;
- two clips match when, at the best of +-6 frame shifts (+-192 ms), the bits of the frames
  they share (of their first 256, 8.2 s) agree at least `required(frames)` = 0.72 + 0.4 /
  sqrt(frames): 0.82 over 16 frames (0.8 s), 0.77 over 64, 0.745 over 256, since unrelated
  clips' agreement spreads as 1/sqrt(frames). Measured in tests/test_overlap.py: MP3
  copies (22.05 or 44.1 kHz, 23 or 50 ms of leading silence) of seeded noise-modulated
  chirps agree 0.83-0.87 and of espeak-ng demo speech 0.90-0.94; the demo's noisy benchmark
  agrees with its clean clips 0.91-0.97; unrelated chirps at most 0.63; 6,670 pairs of different demo
  sentences of similar length (most under 2 s, one synthesiser) at most 0.73, 0.08 or more
  below `required`. Harder cases, measured once: at libsndfile's lowest MP3 quality (0.9)
  chirp copies agree 0.77-0.87 (speech 0.87+), and in the demo corpus at `--scale 0.1`
  (27,071 such pairs) the closest pair of different sentences came within 0.01 of
  `required`. The same sentence from one synthesiser in another voice can match (5 of 240
  pairs there); those share the transcript too.
Comparing every pair would be quadratic, so candidates come from a locality-sensitive hash
(random hyperplanes: 32 tables of 12 bits) of a shift-robust summary (4 broad bands x 16
equal time segments of the clip, log energy, per-band mean removed), among clips whose
durations differ by at most DURATION_TOLERANCE = 0.25 s and whose summaries' cosine is at
least MIN_COSINE = 0.75. Measured once on 80 chirp clips and an MP3 copy of each: copies'
summaries have cosine >= 0.89 (a pair at 0.89 shares some table's key with probability
0.99), other pairs 0.01 on average (p99 0.51); 80 of the 12,720 pairs were candidates, the
80 copies.
Transcripts compare exactly after `metrics.normalize_text` (case, punctuation, ё/е): the
normalised `text`, or for chats and instructions every turn as "role: text". Text-only
samples compare by transcript only; clips under ~0.8 s (MIN_FRAMES) by transcript only.
Limit: ~1 s phrases that differ in one word, spoken alike, can pass the bar (the full demo
corpus has one such pair, "one seven" ~ "nine seven", at 0.82 against 0.79).

Where fingerprints live: a sidecar `fingerprints.npz` beside each pool's shards, one entry
per shard keyed by its sha256 from index.json (size and mtime for shards no index lists),
written atomically, so a rebuilt shard is fingerprinted again and the others are not. It is
computed on first use (with a progress bar), which works for pools built by any version;
computing at `shards build` time would cost every build (most pools are never compared)
and leave older pools without one. A folder that cannot be written is fingerprinted again
on each run, with a warning.

Cost: fingerprinting decodes every sample once: per 5 s clip ~6 ms of FLAC decode and
~10 ms of fingerprint (one scipy rfft of 150 frames x 4096) on one core of a loaded 2-core
machine (~300x real time), so a 450k-clip pool of ~10 s clips (1,250 h) takes ~4 h of one
such core the first time (`workers` processes divide it), and seconds (the sidecar read)
after. The sidecar holds ~650 bytes per clip. Comparing is a sort per LSH table, a cosine
per candidate pair and a bit comparison (13 shifts x 256 uint16) per surviving pair: on
10^5 clips ~10 s for all pairs, 2.5 s for 9x10^4 training clips against 10^4 benchmark
clips (`within=False`, as `check_overlap` runs).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from borealis.shards import remote
from borealis.shards.format import INDEX_NAME, SAMPLE_RATE, list_shards, log, read_index, shard_entries
from borealis.shards.reader import ReadErrors, iter_shard

WINDOW, HOP = 4096, 512  # samples at 16 kHz: 256 ms frames every 32 ms
BAND_EDGES = np.geomspace(250.0, 5000.0, 18)  # 17 bands -> 16 difference bits per frame (one uint16)
BITS = len(BAND_EDGES) - 2  # per frame
WORD = np.uint32 if BITS > 16 else np.uint16  # one frame's bits
MAX_FRAMES = 256  # fingerprint frames kept per clip: its first 8.2 s
MIN_FRAMES = 16  # shorter clips (< 0.77 s) are compared by transcript only
MAX_SHIFT = 6  # frames of misalignment searched (+-192 ms: encoder delay, leading silence)
AUDIO_THRESHOLD, SHORT = 0.72, 0.4  # a match agrees on >= 0.72 + 0.4 / sqrt(frames) of the bits (`required`)
DURATION_TOLERANCE = 0.25  # seconds: copies' durations differ by an encoder's delay and padding
SEGMENTS, BROAD = 16, 4  # the LSH summary: BROAD bands x SEGMENTS equal time segments
TABLES, TABLE_BITS = 32, 12  # LSH tables of 12 random hyperplanes each
MIN_COSINE = 0.75  # candidates' summaries must agree this well (measured copies >= 0.89)
_PLANES = np.random.default_rng(20).standard_normal((SEGMENTS * BROAD, TABLES * TABLE_BITS)).astype(np.float32)
VERSION = 1  # of the fingerprint; a sidecar of another version is recomputed
FLOOR = 1e-2  # energy floor, relative to the clip's mean band energy
SIDECAR = "fingerprints.npz"
EXAMPLES = 3  # key pairs a finding's text line shows
LISTED = 10_000  # key pairs a finding keeps (the JSON report lists them)


# ----------------------------------------------------------------------------- one clip
_BINS = np.searchsorted(np.fft.rfftfreq(WINDOW, 1 / SAMPLE_RATE), BAND_EDGES)  # where each band's rfft bins start
_HANN = np.hanning(WINDOW).astype(np.float32)


def fingerprint(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One clip's fingerprint: bits (MAX_FRAMES,) uint16 (frames past the clip are 0), the LSH
    summary (64,) float32, and the number of fingerprint frames kept.

    `audio` is float (T,) at 16 kHz. The summary is all zeros when the clip has fewer than
    MIN_FRAMES frames (it is then compared by transcript only). Cost: one rfft of all frames.
    """
    # Imported here: every data worker imports `borealis.shards`, and needs no FFT.
    import scipy.fft

    x = np.asarray(audio, dtype=np.float32)
    if x.size < WINDOW:
        x = np.pad(x, (0, WINDOW - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, WINDOW)[::HOP]  # (F, WINDOW)
    spec = scipy.fft.rfft(frames * _HANN, axis=1)  # (F, WINDOW // 2 + 1); scipy's: ~4x numpy's for float32
    power = spec.real ** 2 + spec.imag ** 2
    energy = np.add.reduceat(power[:, :_BINS[-1]], _BINS[:-1], axis=1)  # (F, 17): the bins of each band summed
    log_e = np.log(energy + FLOOR * energy.mean() + 1e-10)
    diff = log_e[:, :-1] - log_e[:, 1:]  # (F, BITS)
    bits_tm = (diff[1:] - diff[:-1]) > 0  # (F - 1, BITS)
    words = (bits_tm.astype(WORD) << np.arange(BITS, dtype=WORD)).sum(axis=1, dtype=WORD)
    bits = np.zeros(MAX_FRAMES, WORD)
    bits[:min(MAX_FRAMES, words.size)] = words[:MAX_FRAMES]
    return bits, _summary(energy), min(MAX_FRAMES, words.size)


def _summary(energy: np.ndarray) -> np.ndarray:
    """The LSH summary of (F, 17) band energies: (64,) unit vector, zeros for short clips.

    The clip is cut into SEGMENTS equal time segments (relative to its length, so a shift of
    tens of ms moves them little); per segment the log energy of BROAD broad bands, floored
    at -10 dB of their mean (quiet segments are noise that a codec rewrites), minus each
    band's mean over segments (the channel's tilt is shared by unrelated clips).
    """
    summary = np.zeros(SEGMENTS * BROAD, np.float32)
    n = energy.shape[0]
    if n - 1 >= MIN_FRAMES:
        broad = energy[:, :BITS].reshape(n, BROAD, BITS // BROAD).sum(axis=2)  # (F, 4)
        segment = np.arange(n) * SEGMENTS // n
        onehot = (segment[:, None] == np.arange(SEGMENTS)[None]).astype(np.float32)  # (F, 16)
        seg = onehot.T @ broad / onehot.sum(axis=0)[:, None]  # (16, 4)
        seg = np.log(seg + 0.1 * seg.mean() + 1e-10)
        seg -= seg.mean(axis=0)  # per-band mean removed: the envelope, not the channel's tilt
        norm = np.linalg.norm(seg)
        summary = (seg / norm).ravel() if norm > 0 else summary
    return summary


def text_key(meta: Mapping) -> str:
    """The normalised transcript a sample is compared by: its `text`, or every turn of its
    `messages` as "role: text"; '' when it has neither."""
    # Imported here: it imports transformers' normaliser, which `borealis shards --help` does not need.
    from borealis.metrics import normalize_text

    if isinstance(meta.get("text"), str):
        return normalize_text(meta["text"])
    messages = meta.get("messages")
    if isinstance(messages, list):
        turns = [f"{m.get('role')}: {normalize_text(str(m.get('content', '')))}" for m in messages if isinstance(m, dict)]
        return "\n".join(turns)
    return ""


def _text_hash(text: str) -> int:
    """64-bit hash of a normalised transcript; 0 for none."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") | 1 if text else 0


# ----------------------------------------------------------------------------- a pool
@dataclass
class Prints:
    """The fingerprints of a set of samples (one pool, or several concatenated).

    Attributes: per sample, `keys` (str), `durations` (s), `frames` (fingerprint frames, 0
    for text-only), `bits` (N, MAX_FRAMES) uint16, `summary` (N, 64) float16, `text`
    (uint64 transcript hash, 0 for none).
    """

    keys: np.ndarray
    durations: np.ndarray
    frames: np.ndarray
    bits: np.ndarray
    summary: np.ndarray
    text: np.ndarray

    FIELDS = ("keys", "durations", "frames", "bits", "summary", "text")

    @classmethod
    def empty(cls) -> Prints:
        return cls(np.zeros(0, "U1"), np.zeros(0, np.float32), np.zeros(0, np.int16),
                   np.zeros((0, MAX_FRAMES), WORD), np.zeros((0, SEGMENTS * BROAD), np.float16),
                   np.zeros(0, np.uint64))

    @classmethod
    def concat(cls, parts: Sequence[Prints]) -> Prints:
        parts = [cls.empty(), *parts]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.FIELDS))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def audio(self) -> np.ndarray:
        """Which samples are compared by audio."""
        return self.frames >= MIN_FRAMES


def _shard_prints(path: Path, bar: tqdm | None = None) -> tuple[Prints, bool]:
    """Decode one shard and fingerprint every sample; (prints, read without damage)."""
    errors = ReadErrors()
    rows: list[tuple] = []
    for s in iter_shard(path, on_error=errors):
        if s["audio"] is not None:
            bits, summary, frames = fingerprint(s["audio"])
        else:
            bits, summary, frames = np.zeros(MAX_FRAMES, WORD), np.zeros(SEGMENTS * BROAD, np.float32), 0
        rows.append((s["key"], s["duration"], frames, bits, summary, _text_hash(text_key(s["meta"]))))
        if bar is not None:
            bar.update(1)
    if not rows:
        return Prints.empty(), not any(errors.counts())
    keys, durations, frames, bits, summary, text = zip(*rows)
    return Prints(np.array(keys), np.array(durations, np.float32), np.array(frames, np.int16), np.stack(bits),
                  np.stack(summary).astype(np.float16), np.array(text, np.uint64)), not any(errors.counts())


def _shard_ids(paths: Sequence[Path]) -> dict[Path, str]:
    """Each shard's cache key: its sha256 from the index.json beside it, else size and mtime."""
    listed: dict[Path, dict[str, str]] = {}
    ids = {}
    for p in paths:
        folder = p.parent
        if folder not in listed:
            try:
                listed[folder] = {s["name"]: s["sha256"] for s in read_index(folder)["shards"]} \
                    if (folder / INDEX_NAME).is_file() else {}
            except ValueError:
                listed[folder] = {}
        st = p.stat()
        ids[p] = listed[folder].get(p.name) or f"size={st.st_size},mtime_ns={st.st_mtime_ns}"
    return ids


def _load_sidecar(folder: Path) -> dict[tuple[str, str], Prints]:
    """(shard name, shard id) -> prints from a folder's sidecar; {} when absent, stale or unreadable."""
    path = folder / SIDECAR
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != VERSION:
                return {}
            data = {f: z[f] for f in Prints.FIELDS}
            names, ids, shard = z["shard_names"], z["shard_ids"], z["shard"]
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable fingerprint sidecar %s (%s)", path, e)
        return {}
    ends = np.cumsum(np.bincount(shard, minlength=len(names)))  # each shard's rows are contiguous
    return {(str(n), str(i)): Prints(**{f: v[end - count:end] for f, v in data.items()})
            for n, i, end, count in zip(names, ids, ends, np.diff(ends, prepend=0))}


def _save_sidecar(folder: Path, entries: Mapping[tuple[str, str], Prints]) -> None:
    """Write a folder's sidecar atomically (temporary file + rename); a warning if it cannot."""
    items = list(entries.items())
    shard = np.concatenate([np.zeros(0, np.int32)] + [np.full(len(p), k, np.int32) for k, (_, p) in enumerate(items)])
    all_prints = Prints.concat([p for _, p in items])
    tmp = folder / f".{SIDECAR}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, version=np.int32(VERSION), shard=shard, shard_names=np.array([n for (n, _), _ in items]),
                     shard_ids=np.array([i for (_, i), _ in items]),
                     **{f_: getattr(all_prints, f_) for f_ in Prints.FIELDS})
        os.replace(tmp, folder / SIDECAR)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        log.warning("cannot write fingerprint sidecar in %s (%s); it will be computed again next time", folder, e)


def pool_prints(spec: str | Path, *, progress: bool = True, workers: int = 1) -> Prints:
    """The fingerprints of every sample in a pool (folder, .tar or glob), from its sidecars.

    Shards the sidecar lacks, or whose sha256 changed, are decoded and fingerprinted (with a
    progress bar), in `workers` processes (one shard each at a time), and the sidecar is
    rewritten; shards read with damage are not cached, so they are read again next time.
    """
    if remote.is_url(spec):
        paths = _local_copies(str(spec))
    else:
        paths = list_shards(spec, keep_missing=True)
        paths = [p for p in paths if p.is_file()] or list_shards(spec)  # missing shards: as training skips them
    ids = _shard_ids(paths)
    by_folder: dict[Path, list[Path]] = {}
    for p in paths:
        by_folder.setdefault(p.parent, []).append(p)
    out: dict[Path, Prints] = {}
    for folder, shards in by_folder.items():
        cached = _load_sidecar(folder)
        todo = [p for p in shards if (p.name, ids[p]) not in cached]
        if todo:
            total = _index_counts(folder, todo)
            with tqdm(total=total, unit="sample", desc=f"fingerprint {folder.name}", leave=False,
                      disable=not progress) as bar, ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
                done = pool.map(_shard_prints, todo) if pool is not None else (_shard_prints(p, bar) for p in todo)
                for p, (prints, clean) in zip(todo, done):
                    if pool is not None:
                        bar.update(len(prints))
                    if clean:
                        cached[(p.name, ids[p])] = prints
                    out[p] = prints
            live = {p.name for p in folder.glob("*.tar")}
            _save_sidecar(folder, {k: v for k, v in cached.items() if k[0] in live})
        for p in shards:
            out.setdefault(p, cached.get((p.name, ids[p])))
    return Prints.concat([out[p] for p in paths])


def _local_copies(url: str) -> list[Path]:
    """The shards of the pool at `url` as verified local copies (the node's shard cache, whose
    folder then holds the fingerprint sidecar, or this process's scratch folder); a shard that
    cannot be fetched is skipped with a warning, as training skips it."""
    copies = []
    fetcher = remote.default_fetcher()
    urls = list_shards(url, keep_missing=True)
    for shard, entry in zip(urls, shard_entries(urls)):
        try:
            copies.append(fetcher.local_copy(shard, sha256=(entry or {}).get("sha256"),
                                             size=(entry or {}).get("bytes")))
        except OSError as e:
            log.warning("overlap check: skipping shard %s, which cannot be fetched (%s)", shard, e)
    if not copies:
        raise FileNotFoundError(f"no shard of {url} could be fetched (the warnings above say why)")
    return copies


def _index_counts(folder: Path, shards: Sequence[Path]) -> int | None:
    try:
        counts = {s["name"]: s["num_samples"] for s in read_index(folder)["shards"]}
        return sum(counts.get(p.name, 0) for p in shards)
    except (FileNotFoundError, ValueError):
        return None


# ----------------------------------------------------------------------------- comparing
def candidate_pairs(prints: Prints, *, side: np.ndarray | None = None, tolerance: float = DURATION_TOLERANCE,
                    max_run: int = 5000) -> np.ndarray:
    """(P, 2) index pairs i < j of clips that share an LSH key in some table, whose durations
    differ by at most `tolerance` seconds and whose summaries have a cosine of at least
    MIN_COSINE: the only pairs `agreement` scores. With `side` ((N,) int), only pairs of
    clips on different sides (training vs benchmark).

    Per table, clips are sorted by (key, duration); the pairs are those k places apart for
    k = 1, 2, ... while any such pair still qualifies (at most `max_run`: a bucket of more
    identical clips than that is cut short, with a warning). Cost: a sort per table, and
    one vectorised comparison per k.
    """
    idx = np.flatnonzero(prints.audio)
    if idx.size < 2:
        return np.zeros((0, 2), np.int64)
    signs = (prints.summary[idx].astype(np.float32) @ _PLANES > 0).reshape(idx.size, TABLES, TABLE_BITS)
    codes = (signs.astype(np.uint32) << np.arange(TABLE_BITS, dtype=np.uint32)).sum(axis=2)  # (N, TABLES)
    dur = prints.durations[idx]
    found = []
    for t in range(TABLES):
        order = np.lexsort((dur, codes[:, t]))
        code, d = codes[order, t], dur[order]
        sides = None if side is None else side[idx[order]]
        for k in range(1, min(max_run, idx.size - 1) + 1):
            ok = (code[k:] == code[:-k]) & (d[k:] - d[:-k] <= tolerance)
            if not ok.any():  # sorted by (key, duration): no pair further apart qualifies either
                break
            if sides is not None:
                ok &= sides[k:] != sides[:-k]
            found.append(np.stack([order[:-k][ok], order[k:][ok]], axis=1))
        else:
            log.warning("overlap: more than %d clips share one LSH bucket; some candidate pairs were not scored",
                        max_run)
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.sort(np.concatenate(found), axis=1)
    pairs = np.unique(pairs[:, 0] * idx.size + pairs[:, 1])  # found by several tables: once
    pairs = np.stack([pairs // idx.size, pairs % idx.size], axis=1)
    summary = prints.summary[idx].astype(np.float32)
    close = np.einsum("pd,pd->p", summary[pairs[:, 0]], summary[pairs[:, 1]]) >= MIN_COSINE
    return idx[pairs[close]]


def required(frames: np.ndarray | int, threshold: float = AUDIO_THRESHOLD) -> np.ndarray:
    """The bit agreement a match needs over `frames` shared frames: `threshold` + SHORT /
    sqrt(frames). Unrelated clips' agreement spreads as 1/sqrt(frames) (fewer bits, as with
    coin flips), so short clips need more: 0.82 over 16 frames, 0.77 over 64, 0.745 over 256."""
    return threshold + SHORT / np.sqrt(np.maximum(frames, 1))


def agreement(prints: Prints, pairs: np.ndarray, *, threshold: float = AUDIO_THRESHOLD,
              chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each pair, at the shift of -MAX_SHIFT..MAX_SHIFT frames where it is best: the
    fraction of agreeing fingerprint bits over the frames both clips have, and its margin over
    `required(frames)` (a match when >= 0; -1 below MIN_FRAMES shared frames). Two (P,)
    float arrays. Cost: (2 * MAX_SHIFT + 1) x MAX_FRAMES XORs and popcounts per pair."""
    best = np.zeros(len(pairs), np.float32)
    margin = np.full(len(pairs), -1.0, np.float32)
    t = np.arange(MAX_FRAMES)
    for lo in range(0, len(pairs), chunk):
        a, b = pairs[lo:lo + chunk, 0], pairs[lo:lo + chunk, 1]
        fa, fb = prints.bits[a], prints.bits[b]  # (C, MAX_FRAMES)
        na, nb = prints.frames[a].astype(np.int64)[:, None], prints.frames[b].astype(np.int64)[:, None]
        for shift in range(-MAX_SHIFT, MAX_SHIFT + 1):
            tb = t + shift
            valid = (t < na) & (tb >= 0) & (tb < nb)  # (C, MAX_FRAMES)
            wrong = np.bitwise_count(fa ^ fb[:, np.clip(tb, 0, MAX_FRAMES - 1)]) * valid
            frames = valid.sum(axis=1)
            score = 1 - wrong.sum(axis=1) / np.maximum(BITS * frames, 1)
            over = np.where(frames >= MIN_FRAMES, score - required(frames, threshold), -1.0)
            better = over > margin[lo:lo + chunk]
            margin[lo:lo + chunk][better], best[lo:lo + chunk][better] = over[better], score[better]
    return best, margin


def audio_pairs(prints: Prints, *, side: np.ndarray | None = None,
                threshold: float = AUDIO_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The clip pairs (P, 2) whose audio matches, and their agreement (P,); `side` as in
    `candidate_pairs`."""
    pairs = candidate_pairs(prints, side=side)
    score, margin = agreement(prints, pairs, threshold=threshold)
    keep = margin >= 0
    return pairs[keep], score[keep]


@dataclass
class Finding:
    """Duplicates between two pools (or inside one, when `pool_a == pool_b`).

    Attributes:
        kind: "audio" (fingerprints agree) or "text" (same normalised transcript).
        pool_a, pool_b: the pools' names.
        pairs: the number of duplicate sample pairs.
        samples_a, samples_b: how many samples of each pool have a duplicate in the other
            (inside one pool: samples with a duplicate, in both).
        listed: (key in a, key in b, bit agreement, or None for text), up to LISTED: every
            audio pair; for text, every sample of b with one partner in a (inside a pool,
            every repeat with the first sample of its group).
    """

    kind: str
    pool_a: str
    pool_b: str
    pairs: int
    samples_a: int
    samples_b: int
    listed: list[tuple[str, str, float | None]] = field(default_factory=list)

    def __str__(self) -> str:
        eg = ", ".join(f"{a} ~ {b}" + (f" ({s:.2f})" if s is not None else "") for a, b, s in self.listed[:EXAMPLES])
        where = f"inside {self.pool_a!r}" if self.pool_a == self.pool_b else f"{self.pool_a!r} / {self.pool_b!r}"
        return (f"{self.kind:5} {where}: {self.pairs} pair(s); {self.samples_a} / {self.samples_b} sample(s); "
                f"e.g. {eg}")


@dataclass
class OverlapReport:
    """What `find_overlaps` found.

    Attributes:
        pools: name -> {"path", "role" ("train" or "benchmark"), "samples", "audio"
            (samples compared by audio), "text" (samples with a transcript)}.
        findings: every pool pair (and pool) with duplicates, by audio and by text.
        threshold: the bit agreement an audio match needed.
    """

    pools: dict[str, dict]
    findings: list[Finding]
    threshold: float = AUDIO_THRESHOLD

    def conflicts(self) -> list[Finding]:
        """Findings between a training pool and a benchmark pool."""
        return [f for f in self.findings
                if {self.pools[f.pool_a]["role"], self.pools[f.pool_b]["role"]} == {"train", "benchmark"}]

    def lines(self) -> list[str]:
        """The report as text lines: one per pool, one per finding, and a verdict."""
        rule = f"{self.threshold:.2f} + {SHORT} / sqrt(frames)"
        out = [f"overlap: {len(self.pools)} pool(s); audio matches at >= {rule} bit agreement"]
        for name, p in self.pools.items():
            out.append(f"  {p['role']:9} {name}: {p['samples']} samples, {p['audio']} compared by audio, "
                       f"{p['text']} by transcript")
        out += [f"  {'CONFLICT' if f in self.conflicts() else 'duplicate'} {f}" for f in self.findings]
        n = len(self.conflicts())
        out.append(f"overlap: {n} train/benchmark overlap(s)" if n else "overlap: no train/benchmark overlap")
        return out

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "pools": self.pools,
                "findings": [{**f.__dict__, "listed": [list(e) for e in f.listed],
                              "conflict": f in self.conflicts()} for f in self.findings]}


def _audio_findings(prints: Prints, pool: np.ndarray, names: Sequence[str], threshold: float,
                    side: np.ndarray | None) -> list[Finding]:
    """Group the matching clip pairs by (pool, pool)."""
    pairs, score = audio_pairs(prints, side=side, threshold=threshold)
    swap = pool[pairs[:, 0]] > pool[pairs[:, 1]]
    pairs[swap] = pairs[swap][:, ::-1]  # the pool listed first on the left
    group = pool[pairs[:, 0]] * len(names) + pool[pairs[:, 1]]
    out = []
    for g in np.unique(group):
        sel = np.flatnonzero(group == g)
        a, b = pairs[sel, 0], pairs[sel, 1]
        pa, pb = divmod(int(g), len(names))
        both = len(np.unique(np.concatenate([a, b]))) if pa == pb else None
        out.append(_listed(Finding("audio", names[pa], names[pb], len(sel), both or len(np.unique(a)),
                                   both or len(np.unique(b))), prints, a, b, score[sel]))
    return out


def _text_findings(prints: Prints, pool: np.ndarray, names: Sequence[str], roles: Sequence[str] | None) -> list[Finding]:
    """Same normalised transcript, per pool pair (a loop over pools, not samples); with
    `roles`, only between pools of different roles. Listed: each sample of the second pool
    with the first sample of the first pool that has its transcript (inside a pool: each
    repeat with the first sample of its group)."""
    out = []
    per_pool = [np.flatnonzero((pool == p) & (prints.text != 0)) for p in range(len(names))]
    for pa in range(len(names)):
        ha = prints.text[per_pool[pa]]
        ua, first, inverse, ca = np.unique(ha, return_index=True, return_inverse=True, return_counts=True)
        repeat = np.flatnonzero(ca[inverse] > 1)  # inside the pool
        if repeat.size and roles is None:
            c = ca[ca > 1].astype(np.int64)
            later = repeat[first[inverse[repeat]] != repeat]
            out.append(_listed(Finding("text", names[pa], names[pa], int((c * (c - 1) // 2).sum()), int(c.sum()),
                                       int(c.sum())), prints, per_pool[pa][first[inverse[later]]], per_pool[pa][later]))
        for pb in range(pa + 1, len(names)):
            if roles is not None and roles[pa] == roles[pb]:
                continue
            hb = prints.text[per_pool[pb]]
            ub, cb = np.unique(hb, return_counts=True)
            common, ia, ib = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
            if not common.size:
                continue
            in_b = np.flatnonzero(np.isin(hb, common))
            partner = per_pool[pa][first[np.searchsorted(ua, hb[in_b])]]
            out.append(_listed(Finding("text", names[pa], names[pb], int((ca[ia].astype(np.int64) * cb[ib]).sum()),
                                       int(ca[ia].sum()), int(cb[ib].sum())), prints, partner, per_pool[pb][in_b]))
    return out


def _listed(finding: Finding, prints: Prints, a: np.ndarray, b: np.ndarray, score: np.ndarray | None = None) -> Finding:
    """`finding` with its first LISTED key pairs (a[i], b[i], score[i] or None)."""
    a, b = a[:LISTED], b[:LISTED]
    scores = [None] * len(a) if score is None else [round(float(x), 3) for x in score[:LISTED]]
    finding.listed = [(str(prints.keys[i]), str(prints.keys[j]), x) for i, j, x in zip(a, b, scores)]
    return finding


def find_overlaps(pools: Mapping[str, str | Path], *, benchmarks: Sequence[str] = (), within: bool = True,
                  threshold: float = AUDIO_THRESHOLD, progress: bool = True, workers: int = 1) -> OverlapReport:
    """Compare pools by audio fingerprint and normalised transcript.

    Args:
        pools: name -> pool (folder, .tar or glob).
        benchmarks: the names in `pools` that are benchmarks; the others are training pools.
        within: also find duplicates inside each pool and between pools of the same role;
            False compares only training pools with benchmarks (what a training run needs: far fewer
            candidate pairs on a large training pool).
        threshold: the bit agreement an audio match needs (see the module docstring).
        progress: progress bars while fingerprinting pools without a current sidecar.
        workers: processes that fingerprint them.

    Returns:
        every duplicate between two pools and inside each pool; `report.conflicts()` are those
        between a training pool and a benchmark.

    Raises:
        FileNotFoundError: a pool matches no shard.
    """
    names = list(pools)
    unknown = sorted(set(benchmarks) - set(names))
    if unknown:
        raise ValueError(f"benchmarks {unknown} are not among the pools {names}")
    parts = [pool_prints(pools[n], progress=progress, workers=workers) for n in names]
    prints = Prints.concat(parts)
    pool = np.concatenate([np.zeros(0, np.int64)] + [np.full(len(p), i) for i, p in enumerate(parts)])
    info = {n: {"path": str(pools[n]), "role": "benchmark" if n in benchmarks else "train", "samples": len(p),
                "audio": int(p.audio.sum()), "text": int((p.text != 0).sum())} for n, p in zip(names, parts)}
    roles = [info[n]["role"] for n in names]
    side = None if within else np.array([r == "benchmark" for r in roles], np.int8)[pool]
    findings = (_audio_findings(prints, pool, names, threshold, side)
                + _text_findings(prints, pool, names, None if within else roles))
    findings.sort(key=lambda f: (names.index(f.pool_a), names.index(f.pool_b), f.kind))
    return OverlapReport(info, findings, threshold)


def check_overlap(train: Mapping[str, str | Path], benchmarks: Mapping[str, str | Path], *, progress: bool = True,
                  workers: int = 1, error: type[Exception] = ValueError, hint: str = "") -> OverlapReport:
    """Raise `error` when a benchmark shares audio or a transcript with a training pool.

    The message names each benchmark and training pool, the counts by audio and by text, and
    a few key pairs, then how to fix it, then `hint` (e.g. the option that skips the check).
    Training pools are labelled `train:<name>`, benchmarks `benchmark:<name>`. Only
    training-vs-benchmark pairs are compared (duplicates inside a pool are `borealis shards
    inspect --overlap`'s business). Cost: see the module docstring (the first call per pool
    decodes it; later calls read its sidecar).
    """
    pools = {f"train:{k}": v for k, v in train.items()} | {f"benchmark:{k}": v for k, v in benchmarks.items()}
    report = find_overlaps(pools, benchmarks=[f"benchmark:{k}" for k in benchmarks], within=False,
                           progress=progress, workers=workers)
    if conflicts := report.conflicts():
        lines = "".join(f"\n    - {f}" for f in conflicts)  # indented: callers list this under a config key
        raise error(f"{len(conflicts)} overlap(s) between benchmarks and training pools (same audio or the same "
                    f"normalised transcript; pairs, samples per side, example keys):{lines}\n    "
                    "Remove these samples from the training pool (or the benchmark); `borealis shards inspect "
                    "--overlap --benchmarks ...` lists every pair." + (f" {hint}" if hint else ""))
    return report
