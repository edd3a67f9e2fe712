"""Benchmarks for validation: exact, batched, dealt across ranks.

`BenchmarkSet` (map-style) indexes a benchmark's tar members once and reads each sample's
duration from its JSON; `RankBatches` sorts by duration, cuts batches and deals them to
ranks; ranks short of a batch get a *pad* batch whose rows are flagged `is_pad` and never
scored. Every sample is scored exactly once, so validation is strict: a damaged benchmark
raises, naming the shard and the key. Predict windows (`windows.WindowSet`) are batched by
the same sampler.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from borealis.data.batching import Batching, encode_sample
from borealis.prompts import PromptBuilder
from borealis.shards import SAMPLE_RATE, SampleRef, ShardError, index_samples, list_shards, read_sample


class BenchmarkSet(Dataset):
    """Map-style view of a benchmark's samples for exact, batched generation."""

    def __init__(self, name: str, shards: str, prompts: PromptBuilder) -> None:
        self.name, self.prompts = name, prompts
        self.refs: list[SampleRef] = index_samples(list_shards(shards))
        if not self.refs:
            raise ValueError(f"benchmark {name!r}: no samples in {shards!r}")
        self.durations = [_ref_duration(r) for r in self.refs]

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict:
        pad = index < 0  # pad rows (see RankBatches) re-read a real sample and are never scored
        item = encode_sample(read_sample(self.refs[-index - 1 if pad else index]), self.prompts, generation=True)
        item["is_pad"] = pad
        return item


def _ref_duration(ref: SampleRef) -> float:
    offset, size = ref.members["json"]
    with open(ref.shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    try:
        return float(json.loads(data).get("duration", 0.0))
    except (ValueError, TypeError, AttributeError) as e:  # JSON and Unicode errors are ValueErrors
        raise ShardError(f"corrupt .json, no duration ({type(e).__name__}: {e})", shard=ref.shard, key=ref.key) from e


class RankBatches(torch.utils.data.Sampler):
    """Duration-sorted batches of a benchmark, dealt to ranks; short ranks get pad batches."""

    def __init__(self, durations: Sequence[float], batching: Batching, rank: int = 0, world_size: int = 1) -> None:
        if batching.max_tokens_per_batch:
            raise ValueError("val_batching takes batch_size or max_seconds_per_batch (token counts are not "
                             "known before a benchmark sample is read)")
        order = sorted(range(len(durations)), key=lambda i: -durations[i])
        items = [{"i": i, "num_samples": durations[i] * SAMPLE_RATE} for i in order]
        batches = [[it["i"] for it in b] for b in batching.cut(items)]
        per_rank = math.ceil(len(batches) / world_size)
        mine = batches[rank::world_size]
        self.batches = mine + [[-1 - i for i in batches[0]]] * (per_rank - len(mine))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
