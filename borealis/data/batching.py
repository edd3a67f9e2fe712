"""Batching: one sample encoded for the LLM, samples cut into batches by a budget, batches padded.

* `encode_sample` renders a decoded shard sample's chat with the audio placeholder expanded
  (`prompts.PromptBuilder`) into token ids and assistant-only labels.
* `Batching` cuts length-sorted samples into batches by a fixed count, a budget of padded LLM
  tokens or of padded audio seconds; `bucketed` is the training stream's stage that sorts
  `bucket_size` samples at a time and deals their batches in a seeded random order, so
  batches hold samples of similar length (little padding) without a length-ordered epoch.
* Packing (`Batching.pack`, training only): several samples share a row of up to
  `max_tokens_per_row` tokens (first-fit decreasing over a length-sorted bucket), and rows
  are cut into batches of `max_tokens_per_batch // max_tokens_per_row` rows. Each sample
  keeps its own positions (restarting at 0) and, in the model, attention confined to itself
  (`position_ids` with no attention mask: see `modeling.BorealisForConditionalGeneration.loss`).
  Why: the flagship's micro-batch of one padded sample gives a GPU ~500 tokens per step;
  a packed 8k-token budget gives it 16 samples' worth with almost no padding.
* `collate` pads in the DataLoader workers: right padding for training, left padding for
  generation, waveforms of the audio rows padded with their lengths; packed items (those
  `Batching.cut` marked with a `row`) are laid out row by row.
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
        max_tokens_per_batch: budget of padded LLM tokens (rows x longest row); with `pack`,
            rows x `max_tokens_per_row`.
        max_seconds_per_batch: budget of padded audio seconds (rows x longest clip).
        max_batch_size: cap on rows whatever the budget.
        bucket_size: samples sorted together by length before cutting batches (training).
        pack: several samples per row (training only; needs `max_tokens_per_batch` and
            `max_tokens_per_row`). Each keeps its own positions and attention; the loss is
            the same as unpacked (tests/test_packing.py).
        max_tokens_per_row: a packed row's capacity in LLM tokens. A sample longer than it
            gets a row of its own, as wide as the sample.
    """

    batch_size: int | None = None
    max_tokens_per_batch: int | None = None
    max_seconds_per_batch: float | None = None
    max_batch_size: int = 64
    bucket_size: int = 256
    pack: bool = False
    max_tokens_per_row: int | None = None

    def __post_init__(self) -> None:
        problems = []
        set_ = [n for n in ("batch_size", "max_tokens_per_batch", "max_seconds_per_batch") if getattr(self, n)]
        if len(set_) != 1:
            problems.append(f"needs exactly one of batch_size, max_tokens_per_batch, max_seconds_per_batch; "
                            f"got {set_ or 'none'}")
        if self.pack and (not self.max_tokens_per_batch or not self.max_tokens_per_row):
            problems.append(f"pack: true needs max_tokens_per_batch and max_tokens_per_row (got "
                            f"{self.max_tokens_per_batch} and {self.max_tokens_per_row})")
        elif self.pack and self.max_tokens_per_row > self.max_tokens_per_batch:
            problems.append(f"max_tokens_per_row ({self.max_tokens_per_row}) exceeds max_tokens_per_batch "
                            f"({self.max_tokens_per_batch}): a batch holds at least one row")
        if self.max_tokens_per_row is not None and not self.pack:
            problems.append(f"max_tokens_per_row ({self.max_tokens_per_row}) is a packing setting: set pack: true "
                            f"or remove it")
        if problems:
            raise ValueError("batching: " + "; ".join(problems))

    @classmethod
    def of(cls, value: Batching | dict | None, key: str, default: Batching) -> Batching:
        """A `Batching` from a config mapping (or one already built; None: `default`); unknown
        keys and bad values raise a ValueError naming `key`.

        The mapping's values are checked against the fields' types by jsonargparse, which also
        reads the strings a command-line flag gives (`--data.batching.max_tokens_per_row 160`).
        """
        if value is None or isinstance(value, Batching):
            return default if value is None else value
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{key}: unknown key(s) {unknown}; allowed: {list(cls.__dataclass_fields__)}")
        from jsonargparse import ArgumentError, ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument(f"--{key}", type=cls)
        nested: dict = dict(value)
        for part in reversed(key.split(".")):
            nested = {part: nested}
        try:
            fields = parser.parse_object(nested, defaults=False)[key].as_dict()
        except ArgumentError as err:
            raise ValueError(f"{key}: {err}") from err
        try:
            return cls(**fields)
        except ValueError as err:
            raise ValueError(f"{key}: {str(err).removeprefix('batching: ')}") from err

    def cut(self, items: Sequence[dict]) -> list[list[dict]]:
        """Split length-sorted items into batches within the budget (packed: see `pack_rows`)."""
        if self.pack:
            rows = pack_rows([len(it["input_ids"]) for it in items], self.max_tokens_per_row)
            per_batch = min(self.max_tokens_per_batch // self.max_tokens_per_row, self.max_batch_size)
            return [[dict(items[i], row=r) for r, row in enumerate(rows[start:start + per_batch]) for i in row]
                    for start in range(0, len(rows), per_batch)]
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


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: item indices grouped into rows of at most `capacity` tokens.

    Longest first, each into the first row with room (a row of its own when none has, or when
    it alone exceeds `capacity`); rows come out in the order they were opened, each listing its
    items longest first. Deterministic. Cost: O(items x rows) in the DataLoader worker, ~1 ms
    for a 256-sample bucket.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        r = next((r for r, room in enumerate(free) if room >= n), None)
        if r is None:
            rows.append([i])
            free.append(max(capacity - n, 0))
        else:
            rows[r].append(i)
            free[r] -= n
    return rows


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
    labelled tokens, seq_tokens, each sample's tokens (the sequences attention runs over), and
    audio_samples (A,), each clip's samples ([] when no row has audio).

    Packed items (`Batching.cut` with `pack` gives each a `row`) go to `collate_packed`.
    """
    if items and "row" in items[0]:
        return collate_packed(items, pad_token_id)
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
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, **_audio(items),
            "row_tokens": [len(it["input_ids"]) for it in items], "seq_tokens": [len(it["input_ids"]) for it in items],
            "label_tokens": [_label_count(it["labels"]) for it in items], **_per_sample(items)}


def collate_packed(items: Sequence[dict], pad_token_id: int) -> dict:
    """Lay out packed items row by row (`item["row"]`, rows numbered from 0, items in row order).

    Returns input_ids / labels / position_ids (R, W), W the longest row, and attention_mask
    None: each sample's positions restart at 0, and so do the pad tokens' at a row's end (a
    segment of their own, never labelled), which is how the LLM tells the samples apart
    (transformers' packed-sequence mask; flash-attention's varlen path). Each sample's first
    label is dropped: position t predicts token t + 1, so the row's previous sample must
    never predict it (a chat's first token is never labelled anyway). Clips are in the order
    of their slots, row-major, as `embed`'s splice fills them. row_tokens / label_tokens
    count per row, seq_tokens and the sample lists (keys, ...) per sample.
    """
    rows = [it["row"] for it in items]
    if rows != sorted(rows) or rows[0] != 0 or any(b - a > 1 for a, b in zip(rows, rows[1:])):
        raise ValueError(f"packed items must come row by row from 0 (Batching.cut), got rows {rows}")
    lengths = [len(it["input_ids"]) for it in items]
    row_tokens = [0] * (rows[-1] + 1)
    for r, n in zip(rows, lengths):
        row_tokens[r] += n
    width = max(row_tokens)
    starts = [0] * len(items)
    for i in range(1, len(items)):
        starts[i] = starts[i - 1] + lengths[i - 1] if rows[i] == rows[i - 1] else 0
    flat_ids = torch.tensor([t for it in items for t in it["input_ids"]], dtype=torch.long)
    flat_labels = torch.tensor([t for it in items for t in it["labels"]], dtype=torch.long)
    sizes = torch.tensor(lengths)
    first = torch.cumsum(sizes, 0) - sizes  # (N,) each sample's first flat index
    flat_labels[first] = IGNORE_INDEX
    row_of = torch.repeat_interleave(torch.tensor(rows), sizes)  # (T,)
    pos = torch.arange(len(flat_ids)) - torch.repeat_interleave(first, sizes)  # (T,) position within its sample
    col = torch.repeat_interleave(torch.tensor(starts), sizes) + pos  # (T,) column within its row
    shape = (len(row_tokens), width)
    ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = (torch.arange(width)[None, :] - torch.tensor(row_tokens)[:, None]).clamp(min=0)  # pad: 0, 1, ...
    ids[row_of, col], labels[row_of, col], position_ids[row_of, col] = flat_ids, flat_labels, pos
    return {"input_ids": ids, "attention_mask": None, "labels": labels, "position_ids": position_ids,
            **_audio(items), "row_tokens": row_tokens, "seq_tokens": lengths,
            "label_tokens": (labels != IGNORE_INDEX).sum(1).tolist(), **_per_sample(items)}


def _label_count(labels: list[int]) -> int:
    return len(labels) - labels.count(IGNORE_INDEX)


def _audio(items: Sequence[dict]) -> dict:
    """waveforms (A, S) padded, audio_lengths (A,), audio_samples [A ints] of the items with a clip, in order."""
    clips = [torch.from_numpy(np.asarray(it["audio"], dtype=np.float32)) for it in items if it["audio"] is not None]
    waveforms = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True) if clips else None
    samples = [len(c) for c in clips]
    lengths = torch.tensor(samples, dtype=torch.long) if clips else None
    return {"waveforms": waveforms, "audio_lengths": lengths, "audio_samples": samples}


def _per_sample(items: Sequence[dict]) -> dict:
    return {"keys": [it["key"] for it in items],
            "references": [it.get("reference") for it in items], "languages": [it.get("language") for it in items],
            "pools": [it.get("pool") for it in items],
            "is_pad": torch.tensor([bool(it.get("is_pad")) for it in items]),
            "windows": [it.get("window") for it in items]}  # (file, index, start, end) for predict files
