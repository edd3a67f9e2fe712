"""Predict windows: audio files cut into encoder-sized windows, as a dataset of generation prompts.

`WindowSet` reads every file (`inference.read_audio`), cuts it (`inference.plan_windows`) and
serves each window as an encoded prompt, so windows of many files share batches (sorted by
duration by `benchmarks.RankBatches`, like benchmarks). `file_rows` merges the generated
window texts back into one row per file (`inference.merge_texts`), or the file's error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from borealis.features import HOP_LENGTH
from borealis.inference import InputError, merge_texts, plan_windows, read_audio
from borealis.prompts import AUDIO_PLACEHOLDER, PromptBuilder, asr_messages
from borealis.shards import SAMPLE_RATE


def encoder_window_seconds(prompts: PromptBuilder) -> float:
    """The encoder's window in seconds: two mel frames of 10 ms per encoder position (30 s for Whisper)."""
    return prompts.max_source_positions * 2 * HOP_LENGTH / SAMPLE_RATE


@dataclass
class Window:
    file: int  # index into WindowSet.files
    index: int  # window number within the file
    start: int  # samples
    end: int


class WindowSet(Dataset):
    """Every window of every readable file, as encoded generation prompts.

    Args:
        files: audio paths (see `expand_paths`); unreadable ones land in `errors`.
        prompts: the model's prompt builder.
        window: seconds per window at most (the encoder window).
        overlap: seconds shared by neighbouring windows.
        user_prompt: the instruction (None: the ASR prompt of `language`); the audio
            placeholder is appended when missing.
        language: "language" of every file (picks the ASR prompt; also written out).
        min_seconds: shorter files are errors ("too_short").
        min_pause: split at every pause at least this long (seconds; None: only where a file
            exceeds the window). See `plan_windows`.
    """

    def __init__(self, files: Sequence[str], prompts: PromptBuilder, *, window: float, overlap: float,
                 user_prompt: str | None = None, language: str | None = None, min_seconds: float = 0.25,
                 min_pause: float | None = None) -> None:
        self.files, self.prompts, self.language = list(files), prompts, language
        self.errors: dict[int, InputError] = {}
        self.audio: dict[int, np.ndarray] = {}
        self.windows: list[Window] = []
        for i, f in enumerate(self.files):
            try:
                audio = read_audio(f, min_seconds=min_seconds)
            except InputError as e:
                self.errors[i] = e
                continue
            self.audio[i] = audio
            self.windows += [Window(i, j, a, b) for j, (a, b) in
                             enumerate(plan_windows(audio, window, overlap, min_pause=min_pause))]
        if user_prompt is None:
            self.messages = asr_messages(None, language)
        else:
            content = user_prompt if AUDIO_PLACEHOLDER in user_prompt else f"{user_prompt} {AUDIO_PLACEHOLDER}"
            self.messages = [{"role": "user", "content": content}]
        self.durations = [(w.end - w.start) / SAMPLE_RATE for w in self.windows]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict:
        pad = index < 0  # pad rows (see benchmarks.RankBatches) re-read a real window and are never written
        w = self.windows[-index - 1 if pad else index]
        audio = self.audio[w.file][w.start:w.end]
        enc = self.prompts.encode(self.messages, num_samples=len(audio), generation=True)
        return {"key": f"{self.files[w.file]}#{w.index}", "input_ids": enc.input_ids, "labels": enc.labels,
                "audio": audio, "num_samples": len(audio), "reference": None, "language": self.language,
                "source": None, "pool": None, "is_pad": pad, "window": (w.file, w.index, w.start, w.end)}

    def file_rows(self, texts: dict[tuple[int, int], str]) -> list[dict]:
        """One output row per file, in input order: the merged prediction and every window's
        timing and text, or the file's error. `texts`: (file, window) -> generated text."""
        by_file: dict[int, list[Window]] = {}
        for w in self.windows:  # in file order, then window order (as built)
            by_file.setdefault(w.file, []).append(w)
        rows = []
        for i, f in enumerate(self.files):
            if i in self.errors:
                rows.append({"file": f, "error": self.errors[i].reason, "detail": self.errors[i].detail})
                continue
            wins = by_file[i]
            pieces, timing = [], []
            for k, w in enumerate(wins):
                share = (w.end - wins[k + 1].start) / (w.end - w.start) if k + 1 < len(wins) else 0.0
                text = texts.get((i, w.index), "")
                pieces.append((text, max(share, 0.0)))
                timing.append({"start": round(w.start / SAMPLE_RATE, 3), "end": round(w.end / SAMPLE_RATE, 3),
                               "text": text})
            rows.append({"file": f, "prediction": merge_texts(pieces),
                         "duration": round(self.audio[i].size / SAMPLE_RATE, 3), "windows": timing,
                         **({"language": self.language} if self.language else {})})
        return rows
