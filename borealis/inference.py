"""Inference on audio files: read anything, cut long audio into overlapping windows, merge the text.

What: `borealis predict --data.predict.files '[talk.mp3, recordings/, "clips/*.wav"]'` runs
the model on audio files instead of shards. `expand_paths` turns files, folders and globs
into a sorted file list; `read_audio` decodes any soundfile format at any rate and channel
count to 16 kHz mono, or raises `InputError` with the reason (missing, undecodable, silent,
too short); `plan_windows` cuts audio longer than the encoder window (30 s for Whisper) into
windows that end at the quietest 10 ms near the window's end and overlap the previous window
by up to `overlap` seconds, starting at a quiet point too; `merge_texts` joins the window
transcripts, dropping the words the overlap transcribed twice. `data.windows.WindowSet` serves
the windows of every file as one dataset.

Why: the seed's model card leaves "audio longer than ~30 s: caller must chunk it" to the user.
Cutting at a quiet point keeps words whole; the overlap means a word cut anyway is heard
whole in one of the two windows, and the merge (the longest run of words the end of one
window and the start of the next share, searched only where the overlap can hold words)
keeps it once. A bad file is one error line in the output; the other files still run.

Cost: one decode + resample per file (~1000x real time per core) and one 10 ms energy pass;
the windows cost what the model costs on them (overlap adds `overlap / window` extra audio).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from glob import glob, has_magic
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from borealis.corpora import AUDIO_SUFFIXES
from borealis.shards import SAMPLE_RATE

SILENCE_PEAK = 1e-4  # -80 dBFS: a file whose peak stays below is digital silence
FRAME = 0.01  # seconds: the energy frame quiet points are chosen by
FINE_FRAME = 0.0025  # seconds: the frame speech onsets and ends are trimmed to
PAUSE_RATIO = 0.01  # a frame 20 dB below the window's median frame energy is a pause: cut without overlap


class InputError(ValueError):
    """An input file that cannot be transcribed; `reason` is missing, undecodable, silent or too_short."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def expand_paths(specs: Sequence[str | Path], suffixes: Sequence[str] = AUDIO_SUFFIXES) -> list[str]:
    """Files, folders (every audio file below, by extension, sorted) and globs -> file paths.

    A path that does not exist is kept (`read_audio` reports it as missing), so every input
    the user named gets an output line. Duplicates are dropped, first occurrence kept.
    """
    wanted = {s.lower().lstrip(".") for s in suffixes}
    out: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(str(x) for x in p.rglob("*") if x.is_file() and x.suffix.lower().lstrip(".") in wanted
                           and not any(part.startswith(".") for part in x.relative_to(p).parts))
        elif has_magic(str(spec)):
            found = sorted(x for x in glob(str(spec), recursive=True) if Path(x).is_file())
            if not found:
                found = [str(spec)]  # reported as missing: the user named it
        else:
            found = [str(spec)]
        out.extend(found)
    return list(dict.fromkeys(out))


def read_audio(path: str | Path, *, min_seconds: float = 0.25) -> np.ndarray:
    """Decode a file to float32 16 kHz mono.

    Raises:
        InputError: missing, undecodable (or empty), silent (peak below -80 dBFS), or shorter
            than `min_seconds`; the detail names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("missing", f"{path} does not exist")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise InputError("undecodable", f"{path}: {e}") from None
    if audio.shape[0] == 0:
        raise InputError("undecodable", f"{path}: no audio frames")
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    seconds = mono.size / SAMPLE_RATE
    if seconds < min_seconds:
        raise InputError("too_short", f"{path}: {seconds:.3f} s is shorter than min_seconds={min_seconds:g}")
    peak = float(np.max(np.abs(mono)))
    if not peak >= SILENCE_PEAK:  # NaN included
        raise InputError("silent", f"{path}: silent (peak {peak:.1e}, below -80 dBFS)")
    return mono


def _frame_energy(audio: np.ndarray, frame: int) -> np.ndarray:
    n = audio.size // frame
    return np.square(audio[:n * frame].astype(np.float64)).reshape(n, frame).sum(axis=1)  # (n,)


def _pause_level(energy: np.ndarray) -> float:
    """Frame energy at or below which a frame is a pause: 35 dB under the loud frames (90th
    percentile), or 3 dB over the noise floor (10th percentile) in a noisy recording. Weak
    onsets (fricatives) stay above it, so trimming never eats into a word."""
    p10, p90 = np.percentile(energy, [10, 90])
    return float(max(p90 * 10 ** -3.5, 2 * p10))


def pause_cuts(audio: np.ndarray, min_pause: float, rate: int = SAMPLE_RATE) -> list[int]:
    """Sample positions in the middle of every pause of at least `min_pause` seconds
    (runs of 10 ms frames at the pause level, see `_pause_level`)."""
    frame = max(1, round(FRAME * rate))
    energy = _frame_energy(audio, frame)
    if energy.size == 0:
        return []
    quiet = energy <= _pause_level(energy)  # (n,)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))  # run starts/ends
    runs = edges.reshape(-1, 2)
    runs = runs[(runs[:, 1] - runs[:, 0]) * frame >= min_pause * rate]
    runs = runs[(runs[:, 0] > 0) & (runs[:, 1] < energy.size)]  # leading/trailing silence is not a cut
    return [int((a + b) * frame // 2) for a, b in runs]


def trim_pauses(audio: np.ndarray, start: int, end: int, rate: int = SAMPLE_RATE,
                margin: float = 0.01) -> tuple[int, int]:
    """[start, end) without the pauses at its two ends (`margin` seconds kept), so a segment
    starts where its speech does, as training clips do; unchanged if it is all pause.

    Ends are found on a 2.5 ms grid (the pause level scaled to it), so where a segment starts
    does not depend on where it lies on a coarser grid of the whole file.
    """
    fine = max(1, round(FINE_FRAME * rate))
    level = _pause_level(_frame_energy(audio, max(1, round(FRAME * rate)))) * fine / round(FRAME * rate)
    loud = np.flatnonzero(_frame_energy(audio[start:end], fine) > level)
    if loud.size == 0:
        return start, end
    keep = round(margin * rate)
    return max(start, start + int(loud[0]) * fine - keep), min(end, start + (int(loud[-1]) + 1) * fine + keep)


def plan_windows(audio: np.ndarray, window: float, overlap: float, rate: int = SAMPLE_RATE,
                 min_pause: float | None = None) -> list[tuple[int, int]]:
    """[(start, end)] sample ranges of at most `window` seconds covering `audio`.

    With `min_pause`, the audio is first split in the middle of every pause at least that
    long (see `pause_cuts`), as a voice-activity segmenter would, and the pauses at each
    stretch's ends are trimmed (`trim_pauses`): each stretch of speech gets its own window(s),
    starting where its speech starts, as a model trained on single utterances expects (the
    windows then leave those pauses out). A stretch longer than
    `window` is cut further: a window ends at the quietest 10 ms frame of its last third, or of
    its middle third when only that one holds a pause (a frame 20 dB below the window's median
    frame energy). At a pause the next window starts right there. Otherwise the cut may split
    a word, so the next window starts at the quietest frame in the `overlap` seconds before
    it, and `merge_texts` drops the words both windows heard.

    Raises:
        ValueError: `overlap` is not below a third of `window`.
    """
    if not 0 <= overlap < window / 3:
        raise ValueError(f"overlap must be >= 0 and below window / 3 = {window / 3:g} s, got {overlap:g}")
    if min_pause:
        bounds = [0, *pause_cuts(audio, min_pause, rate), audio.size]
        segments = [trim_pauses(audio, a, b, rate) for a, b in zip(bounds, bounds[1:])]
        return [(a + x, a + y) for a, b in segments for x, y in plan_windows(audio[a:b], window, overlap, rate)]
    total, w, o, frame = audio.size, round(window * rate), round(overlap * rate), max(1, round(FRAME * rate))
    energy = _frame_energy(audio, frame)

    def quietest(lo: int, hi: int) -> int:
        a, b = lo // frame, min(hi // frame, energy.size)
        if b <= a:
            return hi
        return (a + int(np.argmin(energy[a:b]))) * frame + frame // 2

    def is_pause(at: int, start: int) -> bool:
        span = energy[start // frame:start // frame + w // frame]
        return span.size == 0 or energy[min(at // frame, energy.size - 1)] <= PAUSE_RATIO * np.median(span)

    out, start = [], 0
    while total - start > w:
        late = quietest(start + 2 * w // 3, start + w - frame)  # a pause late in the window, if any
        early = quietest(start + w // 3, start + 2 * w // 3)
        pause = is_pause(late, start) or is_pause(early, start)
        end = late if is_pause(late, start) or not pause else early
        out.append((start, end))
        nxt = end if pause or o < 2 * frame else quietest(end - o, end - o // 2)
        start = max(nxt, start + 1)
    out.append((start, total))
    return out


def merge_texts(pieces: Sequence[tuple[str, float]]) -> str:
    """Join window transcripts, keeping once the words two neighbours both heard.

    Args:
        pieces: (text, overlap_share) per window, where overlap_share is the fraction of the
            window's audio shared with the *next* window (0 for the last).

    Windows that share no audio are concatenated. Otherwise the words the overlap can hold
    are estimated from the share (plus a margin of two); the longest run of words common to
    that tail of the text so far and the head of the next text is where they join. No common
    word: the texts are concatenated.
    """
    words: list[str] = []
    for i, (text, _) in enumerate(pieces):
        nxt = text.split()
        prev_share = pieces[i - 1][1] if i else 0.0
        if prev_share <= 0 or not words or not nxt:  # no shared audio: nothing was heard twice
            words += nxt
            continue
        m = min(len(words), len(nxt), math.ceil(prev_share * len(words)) + 2)
        tail, head = [w.lower().strip(".,!?") for w in words[-m:]], [w.lower().strip(".,!?") for w in nxt[:m]]
        match = difflib.SequenceMatcher(a=tail, b=head, autojunk=False).find_longest_match(0, len(tail), 0, len(head))
        if match.size == 0:
            words += nxt
            continue
        keep = len(words) - m + match.a + match.size  # words so far, through the shared run
        words = words[:keep] + nxt[match.b + match.size:]
    return " ".join(words)
