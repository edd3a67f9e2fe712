"""Batching: one sample encoded for the LLM, samples cut into batches by a budget, batches padded.

* `encode_sample` renders a decoded shard sample's chat with the audio placeholder expanded
  (`prompts.PromptBuilder`) into token ids and assistant-only labels.
* `Batching` cuts length-sorted samples into batches by a fixed count, a budget of padded LLM
  tokens or of padded audio seconds; `bucketed` is the training stream's stage that sorts
  `bucket_size` samples at a time and deals their batches in a seeded random order, so
  batches hold samples of similar length (little padding) without a length-ordered epoch.
* `collate` pads in the DataLoader workers: right padding for training, left padding for
  generation, waveforms of the audio rows padded with their lengths.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from borealis.prompts import IGNORE_INDEX, PromptBuilder, sample_messages
from borealis.shards import SAMPLE_RATE


@dataclass
class Batching:
    """How samples are grouped into batches. Set exactly one budget.

    Args:
        batch_size: fixed number of samples per batch.
        max_tokens_per_batch: budget of padded LLM tokens (rows x longest row).
        max_seconds_per_batch: budget of padded audio seconds (rows x longest clip).
        max_batch_size: cap on rows whatever the budget.
        bucket_size: samples sorted together by length before cutting batches (training).
    """

    batch_size: int | None = None
    max_tokens_per_batch: int | None = None
    max_seconds_per_batch: float | None = None
    max_batch_size: int = 64
    bucket_size: int = 256

    def __post_init__(self) -> None:
        set_ = [n for n in ("batch_size", "max_tokens_per_batch", "max_seconds_per_batch") if getattr(self, n)]
        if len(set_) != 1:
            raise ValueError(f"batching needs exactly one of batch_size, max_tokens_per_batch, "
                             f"max_seconds_per_batch; got {set_ or 'none'}")

    def cut(self, items: Sequence[dict]) -> list[list[dict]]:
        """Split length-sorted items into batches within the budget."""
        batches: list[list[dict]] = []
        current: list[dict] = []
        longest = 0.0
        for item in items:
            size = self.size(item)
            grown = max(longest, size) * (len(current) + 1)
            full = (len(current) >= (self.batch_size or self.max_batch_size)
                    or (self.batch_size is None and current and grown > self._budget()))
            if full:
                batches.append(current)
                current, longest = [], 0.0
            current.append(item)
            longest = max(longest, size)
        if current:
            batches.append(current)
        return batches

    def size(self, item: dict) -> float:
        """What the budget counts for one encoded sample: its tokens, or its audio seconds."""
        if self.max_tokens_per_batch:
            return len(item["input_ids"])
        return item["num_samples"] / SAMPLE_RATE

    def _budget(self) -> float:
        return self.max_tokens_per_batch or self.max_seconds_per_batch


def bucketed(items: Iterator[dict], batching: Batching, rng: np.random.Generator) -> Iterator[list[dict]]:
    """Endless batches of an endless item stream: `bucket_size` items at a time are sorted by
    size and cut (`Batching.cut`); the bucket's batches come out in an order drawn from `rng`.

    A bucket is read only when the previous one's batches are all taken, so a consumer that
    stops after n batches reads no further.
    """
    while True:
        bucket = list(itertools.islice(items, batching.bucket_size))
        bucket.sort(key=batching.size)
        batches = batching.cut(bucket)
        pending = [batches[i] for i in rng.permutation(len(batches))]
        while pending:
            yield pending.pop()


def encode_sample(sample: dict, prompts: PromptBuilder, *, generation: bool = False) -> dict:
    """A decoded shard sample -> token ids, labels and audio, ready to collate."""
    audio = sample["audio"]
    num = None if audio is None else len(audio)
    enc = prompts.encode(sample_messages(sample["meta"], audio is not None), num_samples=num, generation=generation)
    meta = sample["meta"]
    return {"key": sample["key"], "input_ids": enc.input_ids, "labels": enc.labels, "audio": audio,
            "num_samples": num or 0, "reference": enc.reference if generation else meta.get("text"),
            "language": meta.get("language"), "source": meta.get("source"), "pool": sample.get("pool")}


def collate(items: Sequence[dict], pad_token_id: int, *, left_pad: bool = False) -> dict:
    """Pad a list of encoded samples into a batch.

    Returns input_ids / attention_mask / labels (B, L); waveforms (A, S) and audio_lengths
    (A,) for the A rows that carry audio, in row order (None when none do); plus keys,
    references, languages, pools, and is_pad (B,). Also host-side counts as plain int lists,
    which Lightning leaves on the host, so `throughput.Throughput` reads them without a
    device sync: row_tokens (B,), each row's non-pad LLM tokens, label_tokens (B,), each row's
    labelled tokens, and audio_samples (A,), each clip's samples ([] when no row has audio).
    """
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        cols = slice(width - n, width) if left_pad else slice(0, n)
        ids[i, cols] = torch.tensor(it["input_ids"])
        labels[i, cols] = torch.tensor(it["labels"])
        mask[i, cols] = 1
    clips = [torch.from_numpy(np.asarray(it["audio"], dtype=np.float32)) for it in items if it["audio"] is not None]
    waveforms = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True) if clips else None
    samples = [len(c) for c in clips]
    lengths = torch.tensor(samples, dtype=torch.long) if clips else None
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "waveforms": waveforms,
            "audio_lengths": lengths, "row_tokens": [len(it["input_ids"]) for it in items], "audio_samples": samples,
            "label_tokens": [len(it["labels"]) - it["labels"].count(IGNORE_INDEX) for it in items],
            "keys": [it["key"] for it in items],
            "references": [it.get("reference") for it in items], "languages": [it.get("language") for it in items],
            "pools": [it.get("pool") for it in items],
            "is_pad": torch.tensor([bool(it.get("is_pad")) for it in items]),
            "windows": [it.get("window") for it in items]}  # (file, index, start, end) for predict files
