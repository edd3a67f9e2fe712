"""The training stream: an endless, seeded mixture of shard pools, cut into batches per rank.

`MixtureStream` (an IterableDataset) composes small generator stages per slot (one
(node, rank, worker) reader; see `pools`):

    pools     each active pool's usable samples, shuffled (`pools.pool_samples`)
    mixed     pools drawn by weight, text-only chats with `text_ratio`
    augmented the active curriculum stage (`augmentations.AugmentationPipeline`, switched by
              `callbacks.AugmentationScheduler`), applied after the duration filter: at once
              when the stage changes clip lengths (`Speed`, `Delay`), so the change is counted
              in the batch budget; else deferred to the batch (`AugmentationStage.keeps_length`),
              so replayed batches are never augmented
    encoded   chat template, token ids, labels (`batching.encode_sample`)
    bucketed  sorted by length in buckets, cut by the batch budget (`batching.bucketed`)
    replay    on resume, the batches consumed before the checkpoint are drawn but not built
              (`resume.replay`)
    built     deferred augmentation, collation, and the data errors since the previous batch

Every rank yields exactly `batches_per_epoch` batches, so DDP never waits on a rank that ran
dry. Damaged data is skipped, not fatal: each skip is warned about by name and counted
(`shards.ReadErrors`); every batch carries the counts since the worker's previous batch as
`data_errors`, and the LightningModule logs their totals.

Randomness is a pure function of (seed, epoch, slot): reruns reproduce, workers differ. The
named streams (`RngStream`) are seeded [seed, epoch, slot, stream, *index]; augmentation
draws one generator per drawn sample, so a sample's augmentation never depends on which
samples were augmented before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from enum import IntEnum
from itertools import islice

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from borealis.augmentations import AugmentationPipeline
from borealis.data.batching import Batching, bucketed, collate, encode_sample
from borealis.data.pools import Pool, PoolShards, pool_samples
from borealis.data.resume import replay, worker_role
from borealis.prompts import PromptBuilder
from borealis.shards import SAMPLE_RATE, ReadErrors
from borealis.shards.remote import ShardFetcher, configure


class RngStream(IntEnum):
    """The training stream's random streams, each seeded [seed, epoch, slot, stream, *index]."""

    MIXTURE = 1  # pool and text draws, shuffle buffers, the order of a bucket's batches
    AUGMENTATION = 2  # one generator per drawn sample; index: the slot's draw count in the epoch


def stream_seed(stream: RngStream, seed: int, epoch: int, slot: int, *index: int) -> list[int]:
    """The seed of a named random stream of one slot in one epoch."""
    return [seed, epoch, slot, int(stream), *index]


class ErrorTally:
    """The read errors of a slot's pools, and what of them the last batch reported."""

    def __init__(self) -> None:
        self.stats: list[ReadErrors] = []
        self.reported = np.zeros(len(ReadErrors.names), dtype=np.int64)

    def new(self) -> ReadErrors:
        """A counter for one more pool (per pool, so an empty-pool error names its own)."""
        self.stats.append(ReadErrors())
        return self.stats[-1]

    def counts(self) -> np.ndarray:
        total = np.zeros(len(ReadErrors.names), dtype=np.int64)
        for stats in self.stats:
            total += stats.counts()
        return total

    def mark(self) -> None:
        """Count everything so far as reported (what a replay met was reported by the run that consumed it)."""
        self.reported = self.counts()

    def since_reported(self) -> torch.Tensor:
        counts = self.counts()
        delta, self.reported = counts - self.reported, counts
        return torch.from_numpy(delta)


class MixtureStream(IterableDataset):
    """Endless, seeded mixture of shard pools, cut into `batches_per_epoch` batches per rank.

    Batches are `collate`'s, plus `data_errors`: a (4,) long tensor of what this worker
    skipped since its previous batch, counted as `shards.ReadErrors.names` (skipped and lost
    samples, unreadable and damaged shards). Workers cannot share counters with the main
    process, so the counts travel with the data.

    Pools at URLs are fetched by `fetcher` (retries, timeouts, the node's shard cache), made
    the default of each worker process, so the augmentation's noise and IR pools use it too.
    """

    def __init__(self, pools: Sequence[Pool], prompts: PromptBuilder, batching: Batching, *,
                 text_shards: str | None = None, text_ratio: float = 0.0, batches_per_epoch: int = 1000,
                 shuffle_buffer: int = 1000, min_seconds: float = 0.0, max_seconds: float = 30.0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, augmentation: AugmentationPipeline | None = None,
                 fetcher: ShardFetcher | None = None) -> None:
        if not any(p.start_epoch <= 0 for p in pools):
            raise ValueError(f"no training pool starts at epoch 0 (start_epoch: {[p.start_epoch for p in pools]})")
        self.pools = [PoolShards.listed(p.name, p.shards, i, weight=p.weight, start_epoch=p.start_epoch)
                      for i, p in enumerate(pools)]
        self.text = (PoolShards.listed("text", text_shards, len(pools)) if text_shards and text_ratio > 0
                     else None)
        self.text_ratio = text_ratio
        self.prompts, self.batching = prompts, batching
        self.batches_per_epoch = batches_per_epoch
        self.shuffle_buffer, self.min_seconds, self.max_seconds = shuffle_buffer, min_seconds, max_seconds
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.augmentation = augmentation
        self.fetcher = fetcher
        self.epoch = torch.zeros(1, dtype=torch.long).share_memory_()  # read by workers at each epoch start
        # (epoch, batches of it the trainer consumed) to resume at; epoch -1: none. Shared, like `epoch`.
        self.resume = torch.tensor([-1, 0], dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch.fill_(epoch)

    def resume_at(self, epoch: int, consumed: int) -> None:
        """Make epoch `epoch` start after its first `consumed` batches (per rank), exactly
        where a run with the same world size and worker count stopped. Set before the
        workers start that epoch; later epochs start from their first batch."""
        self.resume[0], self.resume[1] = epoch, consumed

    def consumed(self, epoch: int) -> int:
        """Batches of `epoch` consumed before a resume (0 unless the stream resumes in it)."""
        resume_epoch, consumed = (int(v) for v in self.resume.tolist())
        return consumed if resume_epoch == epoch else 0

    def fingerprint(self) -> str:
        """What the stream's content depends on, besides (epoch, slot): a resumed run with a
        different fingerprint reads a different stream."""
        pools = [(p.name, [str(s) for s in p.shards], p.weight, p.start_epoch) for p in self.pools]
        text = [str(s) for s in self.text.shards] if self.text else []
        spec = json.dumps([pools, text, self.text_ratio, vars(self.batching), self.shuffle_buffer, self.min_seconds,
                           self.max_seconds, self.seed, self._prompt_geometry()], default=str)
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    def _prompt_geometry(self) -> list:
        p = self.prompts  # token counts, hence token-budget batches, depend on these
        return [len(p.tokenizer), p.downsample_factor, p.max_source_positions, p.trim_audio_tokens, p.system_prompt]

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if self.fetcher is not None:
            configure(self.fetcher)
        epoch = int(self.epoch.item())
        offset = self.consumed(epoch)
        if offset >= self.batches_per_epoch:  # resumed past the end: nothing left of this epoch
            return
        role, skip = worker_role(worker, workers, offset)
        slot, slots = self.rank * workers + role, self.world_size * workers
        rng = np.random.default_rng(stream_seed(RngStream.MIXTURE, self.seed, epoch, slot))
        tally = ErrorTally()
        samples = self._augmented(self._mixed(epoch, slot, slots, rng, tally), epoch, slot)
        items = (dict(encode_sample(sample, self.prompts), augment=deferred) for sample, deferred in samples)
        quota = self.batches_per_epoch // workers + (role < self.batches_per_epoch % workers)
        batches = replay(islice(bucketed(items, self.batching, rng), quota), skip, tally.mark)
        for batch in batches:
            yield self._built(batch, tally)

    def _mixed(self, epoch: int, slot: int, slots: int, rng: np.random.Generator,
               tally: ErrorTally) -> Iterator[tuple[dict, bool]]:
        """(sample, is_speech): the epoch's active pools drawn by weight, and with probability
        `text_ratio` a text-only chat. All draws come from `rng`, shuffle buffers included."""
        kw = dict(seed=self.seed, slot=slot, slots=slots, epoch=epoch, min_seconds=self.min_seconds,
                  max_seconds=self.max_seconds, shuffle_buffer=self.shuffle_buffer)
        active = [p for p in self.pools if p.start_epoch <= epoch]
        streams = [pool_samples(p, tally.new(), rng, **kw) for p in active]
        weights = np.array([p.weight for p in active], dtype=float)
        weights /= weights.sum()
        text = pool_samples(self.text, tally.new(), rng, **kw) if self.text and self.text.shards else None
        while True:
            if text is not None and rng.random() < self.text_ratio:
                yield next(text), False
            else:
                yield next(streams[int(rng.choice(len(streams), p=weights))]), True

    def _augmented(self, samples: Iterator[tuple[dict, bool]], epoch: int,
                   slot: int) -> Iterator[tuple[dict, tuple | None]]:
        """(sample, deferred): speech clips through the stage active when they are drawn, at once
        when it may change their length, else deferred as (stage, seed) to the batch."""
        max_samples = int(self.max_seconds * SAMPLE_RATE)
        for drawn, (sample, speech) in enumerate(samples):
            deferred = None
            stage = self.augmentation.active if self.augmentation is not None and speech else None
            if stage is not None and stage.effects and sample["audio"] is not None:
                seed = stream_seed(RngStream.AUGMENTATION, self.seed, epoch, slot, drawn)
                if stage.keeps_length:  # sizes do not depend on it: augment only what is yielded
                    deferred = (stage, seed)
                else:
                    sample["audio"] = stage(sample["audio"], np.random.default_rng(seed), max_samples)
            yield sample, deferred

    def _built(self, items: list[dict], tally: ErrorTally) -> dict:
        """A batch as the trainer gets it: deferred augmentation applied, collated, error counts attached."""
        max_samples = int(self.max_seconds * SAMPLE_RATE)
        for item in items:
            if item["augment"] is not None:
                stage, seed = item["augment"]
                item["audio"] = stage(item["audio"], np.random.default_rng(seed), max_samples)
        batch = collate(items, self.prompts.pad_token_id)
        batch["data_errors"] = tally.since_reported()  # since this worker's previous batch
        return batch
