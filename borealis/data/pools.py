"""Training pools: what a pool is, which shards a slot reads, and the stages that read one pool.

A *slot* is one (node, rank, worker) reader. Each pass ("cycle") over a pool shuffles its
shards with a seed shared by all slots and deals them out round-robin (`slot_units`), so no
two slots read the same shard (or, with fewer shards than slots, the same samples of a
shard). One pool's samples flow through small generator stages (webdataset style):

    read_pass  one pass over the slot's share, in the cycle's order; damaged samples and
               shards, and samples whose metadata cannot be trained on (`sample_problem`),
               are skipped on purpose: warned about by name and counted (`shards.ReadErrors`)
    in_range   the passes chained forever ("resampled"), clips outside [min, max] seconds
               dropped; a pool whose passes keep nothing stops the run, naming the pool and why
    shuffled   a seeded shuffle buffer

Cost: a few dict lookups per sample on top of the ~2 ms FLAC decode.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from borealis.prompts import chat_problem
from borealis.shards import ReadErrors, ShardError, iter_shard, list_shards, shard_entries
from borealis.shards.reader import prefetch


@dataclass
class Pool:
    """A named training pool.

    Args:
        name: label used in logs and batch accounting.
        shards: a pool folder (with index.json) or a glob of .tar shards, or a pool URL
            (s3://, gs://, http(s)://, any fsspec protocol, `pipe:CMD`; see `shards.list_shards`).
        weight: relative share among the speech pools (positive).
        start_epoch: the pool joins the mixture from this epoch on (a data curriculum: e.g.
            one language first, then both). Weights are renormalised over the active pools.
    """

    name: str
    shards: str
    weight: float = 1.0
    start_epoch: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("name is empty")
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            problems.append(f"weight must be a positive number, got {self.weight!r}")
        if not (isinstance(self.start_epoch, int) and self.start_epoch >= 0):
            problems.append(f"start_epoch must be an integer >= 0, got {self.start_epoch!r}")
        if problems:
            raise ValueError(f"pool {self.name!r}: {'; '.join(problems)}")


@dataclass
class PoolShards:
    """A pool as the stream reads it: its shards listed, with index.json's sample counts.

    Shards the index lists but that are missing are kept: they are skipped and counted per
    pass. `shards` are paths, or URLs fetched (and verified against `entries`) when read. `order_tag` is the last entry of the pool's shard-order seed
    [seed, epoch, cycle, order_tag]: the pool's position among the speech pools, and for the
    text pool the position after the last of them.
    """

    name: str
    shards: list[Path] | list[str]
    counts: list[int | None]  # index.json sample counts per shard, so a damaged shard can report what it lost
    order_tag: int
    weight: float = 1.0
    start_epoch: int = 0
    entries: list[dict | None] | None = None  # index.json entries (sha256, bytes) per shard

    @classmethod
    def listed(cls, name: str, spec: str, order_tag: int, *, weight: float = 1.0,
               start_epoch: int = 0) -> PoolShards:
        shards = list_shards(spec, keep_missing=True)
        entries = shard_entries(shards)
        counts = [None if e is None else int(e["num_samples"]) for e in entries]
        return cls(name, shards, counts, order_tag, weight, start_epoch, entries)


def slot_units(num_shards: int, num_slots: int, slot: int) -> list[tuple[int, int, int]]:
    """The (shard, part, parts) units one slot reads in an epoch.

    With at least as many shards as slots, slot s reads shards s, s + S, ... (whole).
    With fewer, shard i is shared by the slots s = i (mod n), each taking every parts-th sample.
    """
    if num_shards >= num_slots:
        return [(i, 0, 1) for i in range(slot, num_shards, num_slots)]
    shard = slot % num_shards
    parts = len(range(shard, num_slots, num_shards))
    return [(shard, slot // num_shards, parts)]


def sample_problem(meta: dict, has_audio: bool) -> str | None:
    """Why a training sample's metadata cannot be trained on, or None when it can.

    What: the checks `prompts.sample_messages` and `PromptBuilder.encode` would fail on, plus
    samples that would train on nothing: `messages` must be a valid chat (`prompts.chat_problem`);
    without `messages`, an audio sample needs a string `text` (and `language` a string or
    null), and a text-only sample is unusable.
    Why: the training stream skips and counts such a sample instead of crashing a worker.
    Cost: a few dict lookups per sample, next to a ~2 ms FLAC decode.
    """
    messages = meta.get("messages")
    if messages:
        return chat_problem(messages, has_audio=has_audio)
    if not has_audio:
        return "text-only sample without 'messages'"
    if not isinstance(meta.get("text"), str):
        return "audio sample without 'text' (a string) or 'messages'"
    if not isinstance(meta.get("language"), (str, type(None))):
        return f"'language' is {meta.get('language')!r}, not a string"
    return None


def describe_errors(counts: Sequence[int]) -> str:
    """`ReadErrors` counts in words: "2 skipped samples, 0 lost samples, ..."."""
    return ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in zip(ReadErrors.names, counts))


def read_pass(pool: PoolShards, stats: ReadErrors, *, seed: int = 0, slot: int = 0, slots: int = 1,
              epoch: int = 0, cycle: int = 0) -> Iterator[dict]:
    """One slot's pass over one pool in one cycle: what the stream reads before the
    duration filter and the shuffle buffer.

    The shards are dealt to the slots by `slot_units` in the cycle's seeded order, so
    over all slots every readable sample comes once. A shard at a URL is fetched while the
    one before it is decoded (one shard ahead, one background thread). Damaged samples and shards, and
    samples whose metadata cannot be trained on (`sample_problem`), are skipped with a
    warning naming them and counted in `stats`.

    Args:
        pool: the pool.
        stats: where skipped samples and unreadable shards are counted.
        seed: the stream's base seed.
        slot: this reader's slot (rank * workers + worker).
        slots: all slots (world size * workers).
        epoch: the epoch (with `cycle`, seeds the shard order).
        cycle: the pass number within the epoch.

    Yields:
        Decoded samples (see `shards.decode_sample`) with "pool" set to the pool's name.
    """
    order = np.random.default_rng([seed, epoch, cycle, pool.order_tag]).permutation(len(pool.shards))
    shards, counts = [pool.shards[i] for i in order], [pool.counts[i] for i in order]
    entries = [pool.entries[i] for i in order] if pool.entries is not None else [None] * len(order)
    units = slot_units(len(shards), slots, slot)
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as executor:  # fetches the next URL shard
        ahead = prefetch(executor, shards[units[0][0]], entry=entries[units[0][0]]) if units else None
        try:
            for k, (shard_idx, part, parts) in enumerate(units):
                fetched, ahead = ahead, None
                if k + 1 < len(units):
                    ahead = prefetch(executor, shards[units[k + 1][0]], entry=entries[units[k + 1][0]])
                samples = iter_shard(shards[shard_idx], on_error=stats, expected=counts[shard_idx], part=part,
                                     parts=parts, entry=entries[shard_idx], fetched=fetched)
                yield from _trainable(samples, pool.name, stats)
        finally:  # a pass left early: drop the shard fetched ahead
            if ahead is not None and not ahead.cancel():
                with contextlib.suppress(Exception):  # its fetch failed: nothing to close
                    ahead.result().close()


def _trainable(samples: Iterable[dict], pool: str, stats: ReadErrors) -> Iterator[dict]:
    """Skip and count the samples `sample_problem` rejects; tag the rest with their pool."""
    for sample in samples:
        problem = sample_problem(sample["meta"], sample["audio"] is not None)
        if problem is not None:
            stats.skip(ShardError(f"metadata: {problem}", shard=sample["shard"], key=sample["key"]))
            continue
        sample["pool"] = pool
        yield sample


def in_range(pool: PoolShards, passes: Iterable[Iterator[dict]], stats: ReadErrors, *, min_seconds: float,
             max_seconds: float, slots: int) -> Iterator[dict]:
    """The passes chained, audio clips outside [min_seconds, max_seconds] dropped.

    Raises:
        ValueError: more than 10 * slots passes in a row kept nothing. A slot gets a given
            shard with probability >= 1/slots per pass, so that means "nothing usable" with a
            false alarm below e^-10. The message names the pool and says whether the samples
            were out of range or damaged.
    """
    empty_passes = 0
    for samples in passes:
        kept = 0
        before = stats.counts()
        for sample in samples:
            if sample["audio"] is not None and not min_seconds <= sample["duration"] <= max_seconds:
                continue
            kept += 1
            yield sample
        empty_passes = 0 if kept else empty_passes + 1
        if empty_passes > 10 * max(slots, 1):
            within = f"between min_seconds={min_seconds} and max_seconds={max_seconds}"
            damage = [n - b for n, b in zip(stats.counts(), before)]
            if not any(damage):
                raise ValueError(f"pool {pool.name!r}: no sample {within} in {len(pool.shards)} shard(s)")
            raise ValueError(f"pool {pool.name!r}: no usable sample in {len(pool.shards)} shard(s): in its last pass "
                             f"over its share of them, this worker found {describe_errors(damage)} (the warnings "
                             f"above name them), and no other sample {within}")


def shuffled(samples: Iterable[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """A shuffle buffer of `size` samples: once full, each new sample swaps with a random one,
    which is yielded. Endless input, so the buffer is never flushed."""
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = int(rng.integers(len(buffer)))
        buffer[j], sample = sample, buffer[j]
        yield sample


def pool_samples(pool: PoolShards, stats: ReadErrors, rng: np.random.Generator, *, seed: int, slot: int,
                 slots: int, epoch: int, min_seconds: float, max_seconds: float,
                 shuffle_buffer: int) -> Iterator[dict]:
    """A slot's endless, shuffled stream of one pool's usable samples in an epoch."""
    passes = (read_pass(pool, stats, seed=seed, slot=slot, slots=slots, epoch=epoch, cycle=cycle)
              for cycle in itertools.count())
    kept = in_range(pool, passes, stats, min_seconds=min_seconds, max_seconds=max_seconds, slots=slots)
    return shuffled(kept, shuffle_buffer, rng)
