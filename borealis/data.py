"""LightningDataModule: mixed shard streams for training, exact benchmark sets for validation.

Training streams (`MixtureStream`, an IterableDataset):
  * every (node, rank, worker) is one *slot*; each epoch the shards of a pool are shuffled
    with a seed shared by all slots and dealt out round-robin, so no two slots read the
    same shard (or, with fewer shards than slots, the same samples of a shard);
  * a slot cycles through its shards forever ("resampled") through a seeded shuffle
    buffer; pools are mixed by weight and text-only chats are drawn with `text_ratio`;
  * samples are bucketed by length and cut into batches by a token or audio-seconds budget;
  * every rank yields exactly `batches_per_epoch` batches, so DDP never waits on a rank
    that ran dry;
  * clips pass through the active stage of the augmentation curriculum
    (`augmentations.AugmentationPipeline`, switched by `callbacks.AugmentationScheduler`)
    after the duration filter: before tokenisation when the stage changes clip lengths
    (`Speed`, `Delay`), so the changes are counted, else when the batch is built (`keeps_length`);
  * damaged data is skipped, not fatal: a sample that does not decode or whose metadata
    cannot be trained on (`sample_problem`), a truncated tar, a shard that cannot be opened.
    Each is warned about by name and counted (`shards.ReadErrors`); every batch carries the
    counts since the worker's previous batch as `data_errors`, and the LightningModule logs
    their totals. A pool with nothing usable still stops the run, naming the pool and why.
Randomness is a pure function of (seed, epoch, slot): reruns reproduce, workers differ.
Augmentation draws are seeded per sample (seed, epoch, slot, draw index), so a sample's
augmentation never depends on which samples were augmented before it.

Exact resume (`ResumableLoader`): the DataLoader deals batches from its workers round-robin,
in order, so batch i of an epoch is worker i % W's (i // W)-th batch, and the trainer's
position is just (epoch, batches consumed). Lightning saves it in every checkpoint; on
resume each worker replays its deterministic stream past its share of the consumed batches
(reading, decoding, shuffling and tokenising as before, so batch composition is identical,
but without collation and, for length-preserving stages, without augmentation), and the
worker that yields first takes the role of the one whose batch was next. Batches that were
prefetched but not consumed are regenerated. Cost: reading the skipped part of the epoch
once more, spread over the workers (plus its augmentation when the stage changes lengths).

Validation (`BenchmarkSet`, map-style) indexes each benchmark's tar members once, sorts by
duration, cuts batches, and deals them to ranks; ranks short of a batch get a *pad* batch
whose rows are flagged `is_pad` and never scored. Every sample is scored exactly once, so
validation stays strict: a damaged benchmark raises, naming the shard and the key.

Collation runs in the workers: the chat template with the audio placeholder expanded
(`prompts.PromptBuilder`), assistant-only labels, right padding for training and left
padding for generation, waveforms of the audio rows padded with their lengths.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from borealis.augmentations import (
    AugmentationPipeline,
    AugmentationStage,
    BackgroundNoise,
    BandPass,
    Clipping,
    Codec,
    Equalizer,
    Gain,
    ImpulseResponse,
    PitchShift,
    ResampleRoundTrip,
    Telephony,
)
from borealis.inference import WindowSet, expand_paths
from borealis.prompts import IGNORE_INDEX, PromptBuilder, chat_problem, sample_messages
from borealis.shards import (
    SAMPLE_RATE,
    ReadErrors,
    SampleRef,
    ShardError,
    index_samples,
    iter_shard,
    list_shards,
    read_sample,
    shard_sample_counts,
)

log = logging.getLogger(__name__)


@dataclass
class Pool:
    """A named training pool.

    Args:
        name: label used in logs and batch accounting.
        shards: a pool folder (with index.json) or a glob of .tar shards.
        weight: relative share among the speech pools.
        start_epoch: the pool joins the mixture from this epoch on (a data curriculum: e.g.
            one language first, then both). Weights are renormalised over the active pools.
    """

    name: str
    shards: str
    weight: float = 1.0
    start_epoch: int = 0


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


def _slot_info(rank: int, world_size: int) -> tuple[int, int, int, int]:
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info else (0, 1)
    return rank * nw + wid, world_size * nw, wid, nw


def _read_units(shards: Sequence[Path], counts: Sequence[int | None], units: Sequence[tuple[int, int, int]],
                stats: ReadErrors) -> Iterator[dict]:
    """The decoded samples of a slot's units; damaged samples and shards are skipped into `stats`."""
    for shard_idx, part, parts in units:
        yield from iter_shard(shards[shard_idx], on_error=stats, expected=counts[shard_idx], part=part, parts=parts)


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


def _describe(counts: Sequence[int]) -> str:
    return ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in zip(ReadErrors.names, counts))


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
            "windows": [it.get("window") for it in items]}  # (file, index, start, end) for predict_files


class MixtureStream(IterableDataset):
    """Endless, seeded mixture of shard pools, cut into `batches_per_epoch` batches per rank.

    Batches are `collate`'s, plus `data_errors`: a (4,) long tensor of what this worker
    skipped since its previous batch, counted as `shards.ReadErrors.names` (skipped and lost
    samples, unreadable and damaged shards). Workers cannot share counters with the main
    process, so the counts travel with the data.
    """

    def __init__(self, pools: Sequence[Pool], prompts: PromptBuilder, batching: Batching, *,
                 text_shards: str | None = None, text_ratio: float = 0.0, batches_per_epoch: int = 1000,
                 shuffle_buffer: int = 1000, min_seconds: float = 0.0, max_seconds: float = 30.0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, augmentation: AugmentationPipeline | None = None) -> None:
        if not any(p.start_epoch <= 0 for p in pools):
            raise ValueError(f"no training pool starts at epoch 0 (start_epoch: {[p.start_epoch for p in pools]})")
        # Shards the index lists but that are missing are kept: they are skipped and counted per pass.
        self.pools = [(p.name, list_shards(p.shards, keep_missing=True), p.weight, p.start_epoch) for p in pools]
        self.text = list_shards(text_shards, keep_missing=True) if text_shards and text_ratio > 0 else None
        # index.json sample counts per shard, so a damaged shard can report what it lost
        self.sample_counts = [shard_sample_counts(shards) for _, shards, _, _ in self.pools]
        self.sample_counts.append(shard_sample_counts(self.text) if self.text else [])
        self.text_ratio = text_ratio
        self.prompts, self.batching = prompts, batching
        self.batches_per_epoch = batches_per_epoch
        self.shuffle_buffer, self.min_seconds, self.max_seconds = shuffle_buffer, min_seconds, max_seconds
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.augmentation = augmentation
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

    def fingerprint(self) -> str:
        """What the stream's content depends on, besides (epoch, slot): a resumed run with a
        different fingerprint reads a different stream."""
        pools = [(name, [str(s) for s in shards], weight, start) for name, shards, weight, start in self.pools]
        text = [str(s) for s in self.text or []]
        spec = json.dumps([pools, text, self.text_ratio, vars(self.batching), self.shuffle_buffer, self.min_seconds,
                           self.max_seconds, self.seed, self._prompt_geometry()], default=str)
        return hashlib.sha256(spec.encode()).hexdigest()[:16]

    def _prompt_geometry(self) -> list:
        p = self.prompts  # token counts, hence token-budget batches, depend on these
        return [len(p.tokenizer), p.downsample_factor, p.max_source_positions, p.trim_audio_tokens, p.system_prompt]

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _pool(self, idx: int) -> tuple[str, list[Path], list[int | None]]:
        if idx == len(self.pools):
            return "text", self.text or [], self.sample_counts[idx]
        name, shards, _, _ = self.pools[idx]
        return name, shards, self.sample_counts[idx]

    def read_pass(self, idx: int, stats: ReadErrors, *, slot: int = 0, slots: int = 1, epoch: int = 0,
                  cycle: int = 0) -> Iterator[dict]:
        """One slot's pass over one pool in one cycle: what the stream reads before the
        duration filter and the shuffle buffer.

        The shards are dealt to the slots by `slot_units` in the cycle's seeded order, so
        over all slots every readable sample comes once. Damaged samples and shards, and
        samples whose metadata cannot be trained on (`sample_problem`), are skipped with a
        warning naming them and counted in `stats`.

        Args:
            idx: the pool's position in `pools`; `len(pools)` is the text pool.
            stats: where skipped samples and unreadable shards are counted.
            slot: this reader's slot (rank * workers + worker).
            slots: all slots (world size * workers).
            epoch: the epoch (with `cycle`, seeds the shard order).
            cycle: the pass number within the epoch.

        Yields:
            Decoded samples (see `shards.decode_sample`) with "pool" set to the pool's name.
        """
        name, shards, counts = self._pool(idx)
        order = np.random.default_rng([self.seed, epoch, cycle, idx]).permutation(len(shards))
        units = slot_units(len(shards), slots, slot)
        for sample in _read_units([shards[i] for i in order], [counts[i] for i in order], units, stats):
            problem = sample_problem(sample["meta"], sample["audio"] is not None)
            if problem is not None:
                stats.skip(ShardError(f"metadata: {problem}", shard=sample["shard"], key=sample["key"]))
                continue
            sample["pool"] = name
            yield sample

    def _pool_samples(self, idx: int, slot: int, slots: int, rng: np.random.Generator, epoch: int,
                      stats: ReadErrors) -> Iterator[dict]:
        name, shards, _ = self._pool(idx)
        buffer: list[dict] = []
        empty_cycles = 0
        for cycle in itertools.count():
            kept = 0
            before = stats.counts()
            for sample in self.read_pass(idx, stats, slot=slot, slots=slots, epoch=epoch, cycle=cycle):
                dur = sample["duration"]
                if sample["audio"] is not None and not self.min_seconds <= dur <= self.max_seconds:
                    continue
                kept += 1
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                    continue
                j = int(rng.integers(len(buffer)))
                buffer[j], sample = sample, buffer[j]
                yield sample
            empty_cycles = 0 if kept else empty_cycles + 1
            # A slot gets a given shard with probability >= 1/slots per cycle, so 10 * slots empty
            # cycles in a row mean "nothing in range" with a false alarm below e^-10.
            if empty_cycles > 10 * max(slots, 1):
                in_range = f"between min_seconds={self.min_seconds} and max_seconds={self.max_seconds}"
                damage = [n - b for n, b in zip(stats.counts(), before)]
                if not any(damage):
                    raise ValueError(f"pool {name!r}: no sample {in_range} in {len(shards)} shard(s)")
                raise ValueError(f"pool {name!r}: no usable sample in {len(shards)} shard(s): in its last pass over "
                                 f"its share of them, this worker found {_describe(damage)} (the warnings above name "
                                 f"them), and no other sample {in_range}")

    def __iter__(self) -> Iterator[dict]:
        _, _, wid, nw = _slot_info(self.rank, self.world_size)
        epoch = int(self.epoch.item())
        resume_epoch, consumed = (int(v) for v in self.resume.tolist())
        offset = consumed if resume_epoch == epoch else 0
        if offset >= self.batches_per_epoch:  # resumed past the end: nothing left of this epoch
            return
        # Batch i of an epoch is role i % nw's. After `offset` consumed batches the loader's worker 0
        # yields first, so worker w plays role (w + offset) % nw and skips that role's consumed batches.
        role = (wid + offset) % nw
        slot, slots = self.rank * nw + role, self.world_size * nw
        skip = len(range(role, offset, nw))
        rng = np.random.default_rng([self.seed, epoch, slot, 1])
        max_samples = int(self.max_seconds * SAMPLE_RATE)
        active = [(i, w) for i, (_, _, w, start) in enumerate(self.pools) if start <= epoch]
        stats = [ReadErrors() for _ in range(len(self.pools) + 1)]  # per pool, so the empty-pool guard names its own
        streams = [self._pool_samples(i, slot, slots, rng, epoch, stats[i]) for i, _ in active]
        weights = np.array([w for _, w in active], dtype=float)
        weights /= weights.sum()
        text = self._pool_samples(len(self.pools), slot, slots, rng, epoch, stats[-1]) if self.text else None
        quota = self.batches_per_epoch // nw + (role < self.batches_per_epoch % nw)
        pending: list[list[dict]] = []
        reported = np.zeros(len(ReadErrors.names), dtype=np.int64)
        drawn = 0  # samples drawn by this slot this epoch: with (seed, epoch, slot), seeds a sample's augmentation
        while quota > 0:
            if not pending:
                bucket = []
                for _ in range(self.batching.bucket_size):
                    deferred = None
                    if text is not None and rng.random() < self.text_ratio:
                        sample = next(text)
                    else:
                        sample = next(streams[int(rng.choice(len(streams), p=weights))])
                        stage = self.augmentation.active if self.augmentation is not None else None
                        if stage is not None and stage.effects and sample["audio"] is not None:
                            seed = [self.seed, epoch, slot, 2, drawn]
                            if keeps_length(stage):  # sizes do not depend on it: augment only what is yielded
                                deferred = (stage, seed)
                            else:
                                sample["audio"] = stage(sample["audio"], np.random.default_rng(seed), max_samples)
                    item = encode_sample(sample, self.prompts)
                    item["augment"] = deferred
                    bucket.append(item)
                    drawn += 1
                bucket.sort(key=self.batching.size)
                pending = self.batching.cut(bucket)
                pending = [pending[i] for i in rng.permutation(len(pending))]
            items = pending.pop()
            quota -= 1
            if skip:  # consumed before the checkpoint: replayed for the RNG and the shuffle buffers, not built
                skip -= 1
                if not skip:  # what the replay met was counted by the run that consumed it
                    reported = np.sum([s.counts() for s in stats], axis=0, dtype=np.int64)
                continue
            for item in items:
                if item["augment"] is not None:
                    stage, seed = item["augment"]
                    item["audio"] = stage(item["audio"], np.random.default_rng(seed), max_samples)
            batch = collate(items, self.prompts.pad_token_id)
            counts = np.sum([s.counts() for s in stats], axis=0, dtype=np.int64)
            batch["data_errors"] = torch.from_numpy(counts - reported)  # since this worker's previous batch
            reported = counts
            yield batch


# Effects whose output has the input's length (checked by tests/test_resume.py). With only these
# in a stage, a clip's size, hence batch composition, does not depend on its augmentation.
_LENGTH_PRESERVING = (BackgroundNoise, ImpulseResponse, Equalizer, Gain, BandPass, ResampleRoundTrip, Telephony,
                      Codec, Clipping, PitchShift)


def keeps_length(stage: AugmentationStage) -> bool:
    """Whether every effect of `stage` keeps a clip's length (unknown effect types count as not)."""
    return all(type(e) in _LENGTH_PRESERVING for e in stage.effects)


class ResumableLoader(DataLoader):
    """The training DataLoader: Lightning saves its position in every checkpoint and restores it.

    The state is small and plain: the epoch, the batches the trainer consumed in it (this
    loader counts what it hands out; Lightning does not prefetch from a sized loader), the
    curriculum stage to resume in, and the topology and stream fingerprint it is exact for.
    `load_state_dict` must run before the loader is first iterated, so before any worker
    (persistent ones too) starts: `BorealisDataModule` saves the state as its own and applies
    it when Lightning asks it for the loader. (Lightning's own stateful-loader path, which
    this class also serves, restores too late whenever `configure_optimizers` reads
    `trainer.estimated_stepping_batches`: that creates and iterates the loader before the
    checkpoint's loop states are loaded. Applying the same state twice is harmless.)

    On resume with another world size or worker count the shards are dealt differently, so the
    rest of the interrupted epoch cannot be told apart from what was read: the loader ends that
    epoch at once (with a warning saying how many batches it drops) and the next epoch starts
    on the new topology. No sample is read twice within an epoch; the dropped batches are not
    trained on. With a changed data configuration (fingerprint) the stream continues at the
    same position of the new stream, with a warning.

    Args:
        dataset: the training stream.
        progress: the trainer's (is the batch last handed out the last of Lightning's epoch,
            e.g. with `limit_train_batches`; global step), read when a checkpoint is saved.
        **kwargs: DataLoader arguments.
    """

    def __init__(self, dataset: MixtureStream, *, progress: Callable[[], tuple[bool, int]] | None = None,
                 **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.progress = progress
        self.position = (0, 0)  # (epoch, batches handed out in it)
        self._applied: dict | None = None

    def _topology(self) -> dict:
        stream = self.dataset
        return {"world_size": stream.world_size, "workers": max(self.num_workers, 1)}

    def __iter__(self):
        stream = self.dataset
        epoch = int(stream.epoch.item())
        resume_epoch, consumed = (int(v) for v in stream.resume.tolist())
        self.position = (epoch, consumed if resume_epoch == epoch else 0)
        if resume_epoch != epoch and resume_epoch >= 0:
            stream.resume_at(-1, 0)  # the resumed epoch is over
        for batch in super().__iter__():
            self.position = (epoch, self.position[1] + 1)
            yield batch

    def state_dict(self) -> dict:
        epoch, consumed = self.position
        last, step = self.progress() if self.progress is not None else (False, 0)
        end = bool(last or consumed >= len(self))
        pipeline = self.dataset.augmentation  # the stage the resumed epoch runs in, a function of (epoch, step)
        stage = pipeline.stage_at(epoch + end, step) if pipeline is not None else None
        return {"epoch": epoch, "consumed": consumed, "end_of_epoch": end, "stage": stage, **self._topology(),
                "fingerprint": self.dataset.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if state == self._applied:
            return
        self._applied = dict(state)
        stream = self.dataset
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if state["end_of_epoch"]:
            epoch, consumed = epoch + 1, 0
        saved = {k: state[k] for k in self._topology()}
        if consumed and saved != self._topology():
            log.warning("resume is approximate: the checkpoint's training stream ran on %s, this run on %s, so the "
                        "rest of epoch %d cannot be told apart from what was read; that epoch ends now (its last "
                        "%d batches per rank are dropped, none is repeated) and epoch %d starts on the new "
                        "topology", saved, self._topology(), epoch, max(len(self) - consumed, 0), epoch + 1)
            consumed = len(self)
        elif state["fingerprint"] != stream.fingerprint():
            log.warning("the data configuration (pools, batching, seed, prompt geometry) differs from the "
                        "checkpoint's: the training stream continues at epoch %d, batch %d of the new stream, "
                        "which is not the one the interrupted run read (samples may repeat or be skipped)",
                        epoch, consumed)
        else:
            log.info("resuming the training stream exactly: epoch %d after %d of its %d batches per rank",
                     epoch, consumed, len(self))
        stream.set_epoch(epoch)
        stream.resume_at(epoch, consumed)
        self.position = (epoch, consumed)
        if stream.augmentation is not None and state.get("stage") is not None:
            stream.augmentation.set_stage(int(state["stage"]))  # the scheduler's epoch hook runs too late


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


class BorealisDataModule(L.LightningDataModule):
    """Shard pools in, padded batches out.

    Args:
        train_pools: speech (and instruction) pools, mixed by weight.
        text_pool: pool of text-only chats (folder or glob), drawn with `text_ratio`.
        text_ratio: share of text-only samples in training (the seed: 10-15% helps, 25% hurts).
        val_sets: benchmark name -> shards; one validation dataloader each, scored exactly once.
        predict_sets: name -> shards for `borealis predict`.
        predict_files: audio files, folders and globs for `borealis predict` (any soundfile
            format, rate and channel count); each gets one output line: its prediction, with
            per-window timing, or its error. Long files are cut into windows of at most the
            encoder's window (see `inference.plan_windows`) and the window texts merged.
        predict_prompt: the instruction for `predict_files` (null: the ASR prompt).
        predict_language: language of `predict_files` (picks the ASR prompt; written out).
        predict_overlap: seconds neighbouring windows share where a cut falls in speech
            (null: a tenth of the encoder window).
        predict_min_seconds: shorter files are reported as errors ("too_short").
        predict_min_pause: also split files at every pause at least this long (seconds), as a
            voice-activity segmenter would, so each utterance gets its own window (null: cut
            only where a file exceeds the window). For models trained on single short
            utterances (the demo); long windows give an LLM more context.
        batching: training batch composition.
        val_batching: validation/predict batch composition.
        batches_per_epoch: training batches per rank per epoch (all ranks run the same number).
        shuffle_buffer: samples held per pool and worker for shuffling.
        min_seconds: drop shorter training clips.
        max_seconds: drop longer training clips (the encoder window is 30 s).
        num_workers: DataLoader worker processes per rank.
        val_num_workers: worker processes of the validation and predict loaders (null: as
            num_workers). 0 reads benchmarks in the main process: on a small CPU machine a
            worker competes with the model for the cores (decoding a benchmark is cheap).
        seed: base seed of every shuffle, mixture and augmentation draw.
        augmentation: the augmentation curriculum (stages of waveform effects + SpecAugment);
            null trains on clean audio. `callbacks.AugmentationScheduler` switches its stages.
        prompt_builder: linked from the model by the CLI (tokenizer + audio geometry).
    """

    def __init__(self, train_pools: list[Pool] | None = None, text_pool: str | None = None, text_ratio: float = 0.0,
                 val_sets: dict[str, str] | None = None, predict_sets: dict[str, str] | None = None,
                 batching: Batching | None = None, val_batching: Batching | None = None,
                 batches_per_epoch: int = 1000, shuffle_buffer: int = 1000, min_seconds: float = 0.1,
                 max_seconds: float = 30.0, num_workers: int = 2, val_num_workers: int | None = None, seed: int = 0,
                 augmentation: AugmentationPipeline | None = None, prompt_builder: PromptBuilder | None = None,
                 predict_files: list[str] | None = None, predict_prompt: str | None = None,
                 predict_language: str | None = None, predict_overlap: float | None = None,
                 predict_min_seconds: float = 0.25, predict_min_pause: float | None = None) -> None:
        super().__init__()
        if not 0.0 <= text_ratio < 1.0:
            raise ValueError(f"text_ratio must be in [0, 1), got {text_ratio}")
        if text_ratio > 0 and not text_pool:
            raise ValueError("text_ratio > 0 needs text_pool")
        self.train_pools = train_pools or []
        self.text_pool, self.text_ratio = text_pool, text_ratio
        self.val_sets, self.predict_sets = dict(val_sets or {}), dict(predict_sets or {})
        self.predict_files, self.predict_prompt, self.predict_language = list(predict_files or []), predict_prompt, \
            predict_language
        self.predict_overlap, self.predict_min_seconds = predict_overlap, predict_min_seconds
        self.predict_min_pause = predict_min_pause
        self.windows: WindowSet | None = None  # predict_files, cut into windows
        self.batching = batching or Batching(batch_size=8)
        self.val_batching = val_batching or Batching(batch_size=16)
        self.batches_per_epoch, self.shuffle_buffer = batches_per_epoch, shuffle_buffer
        self.min_seconds, self.max_seconds = min_seconds, max_seconds
        self.num_workers, self.seed = num_workers, seed
        self.val_num_workers = num_workers if val_num_workers is None else val_num_workers
        if min(num_workers, self.val_num_workers) < 0:
            raise ValueError(f"num_workers and val_num_workers must be >= 0, got {num_workers} and {val_num_workers}")
        self.augmentation = augmentation
        self.prompt_builder = prompt_builder
        self.train_stream: MixtureStream | None = None
        self._train_loader: ResumableLoader | None = None  # the one Lightning iterates: its position is saved
        self._resume_state: dict | None = None  # a checkpoint's stream position, for the next train loader
        self.benchmarks: dict[str, BenchmarkSet] = {}

    def _dist(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _need_prompts(self) -> PromptBuilder:
        if self.prompt_builder is None:
            raise ValueError("BorealisDataModule needs prompt_builder (the CLI links it from the model)")
        return self.prompt_builder

    def setup(self, stage: str) -> None:
        prompts = self._need_prompts()
        rank, world = self._dist()
        self.check(stage)
        if stage == "fit" and self.train_stream is None:
            self.train_stream = MixtureStream(
                self.train_pools, prompts, self.batching, text_shards=self.text_pool, text_ratio=self.text_ratio,
                batches_per_epoch=self.batches_per_epoch, shuffle_buffer=self.shuffle_buffer,
                min_seconds=self.min_seconds, max_seconds=self.max_seconds, seed=self.seed, rank=rank,
                world_size=world, augmentation=self.augmentation)
        if stage == "predict" and self.predict_files and self.windows is None:
            window = prompts.max_source_positions * 2 * 160 / SAMPLE_RATE  # encoder window: 10 ms per mel frame
            files = expand_paths(self.predict_files)[rank::world]  # whole files per rank: windows merge locally
            self.windows = WindowSet(files, prompts, window=window,
                                     overlap=window / 10 if self.predict_overlap is None else self.predict_overlap,
                                     user_prompt=self.predict_prompt, language=self.predict_language,
                                     min_seconds=self.predict_min_seconds, min_pause=self.predict_min_pause)
        sets = self.predict_sets if stage == "predict" else self.val_sets
        for name, shards in sets.items():
            if name not in self.benchmarks:
                self.benchmarks[name] = BenchmarkSet(name, shards, prompts)

    def check(self, stage: str) -> None:
        """Fail before any weights load if a data source of `stage` is missing or empty.

        Every problem is gathered into one error naming the config key and the path: a
        training pool, the text pool or a benchmark whose spec matches no shard (or whose
        index.json is invalid), an empty `train_pools` (fit) or `val_sets` (validate/test), a
        missing noise or IR pool of the augmentation curriculum. Cost: listing the shards
        (index.json reads and globs), no tar is opened. FileNotFoundError when every problem
        is a missing path, else ValueError.
        """
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn (a str enum)
        problems: list[tuple[str, Exception]] = []

        def probe(key: str, spec: str, *, keep_missing: bool) -> None:
            try:
                list_shards(spec, keep_missing=keep_missing)
            except (FileNotFoundError, ValueError) as err:
                problems.append((key, err))

        if stage == "fit":
            if not self.train_pools:
                problems.append(("data.train_pools", ValueError("empty: name at least one pool to train on")))
            for i, pool in enumerate(self.train_pools):  # missing listed shards are skipped and counted in training
                probe(f"data.train_pools[{i}] ({pool.name!r})", pool.shards, keep_missing=True)
            if self.text_pool and self.text_ratio > 0:
                probe("data.text_pool", self.text_pool, keep_missing=True)
            if self.augmentation is not None:
                try:
                    self.augmentation.check()
                except (FileNotFoundError, ValueError) as err:
                    problems.append(("data.augmentation", err))
        if stage in ("validate", "test") and not self.val_sets:
            problems.append(("data.val_sets", ValueError(f"empty: `{stage}` scores benchmarks; name at least one")))
        sets = ("data.predict_sets", self.predict_sets) if stage == "predict" else ("data.val_sets", self.val_sets)
        for name, spec in sets[1].items():
            if name not in self.benchmarks:  # benchmarks are read strictly: every listed shard must exist
                probe(f"{sets[0]}.{name}", spec, keep_missing=False)
        if problems:
            kind = FileNotFoundError if all(isinstance(e, FileNotFoundError) for _, e in problems) else ValueError
            lines = "".join(f"\n  - {key}: {err}" for key, err in problems)
            raise kind(f"{len(problems)} problem(s) with the data configuration (stage {stage!r}):{lines}")

    def set_epoch(self, epoch: int) -> None:
        if self.train_stream is not None:
            self.train_stream.set_epoch(epoch)

    def _loader(self, dataset, **kwargs) -> DataLoader:
        return DataLoader(dataset, num_workers=self.val_num_workers, persistent_workers=self.val_num_workers > 0,
                          pin_memory=torch.cuda.is_available(), **kwargs)

    def _progress(self) -> tuple[bool, int]:
        trainer = self.trainer
        if trainer is None:
            return False, 0
        return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch), trainer.global_step

    def state_dict(self) -> dict:
        """The training stream's position (`ResumableLoader.state_dict`), saved in every checkpoint."""
        return {"train_stream": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Keep the checkpoint's stream position for the training loader. Lightning restores a
        DataModule before it first asks for (and iterates) that loader."""
        self._resume_state = state_dict.get("train_stream")

    def train_dataloader(self) -> ResumableLoader:
        # Its own generator: creating the iterator draws its base seed from it, not from the global RNG
        # that the checkpoint restores (see module.BorealisLightningModule.on_train_start).
        loader = ResumableLoader(self.train_stream, batch_size=None, num_workers=self.num_workers,
                                 persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                                 generator=torch.Generator().manual_seed(self.seed), progress=self._progress)
        if self._resume_state is not None:
            loader.load_state_dict(self._resume_state)
            self._resume_state = None
        self._train_loader = loader
        return loader

    def _benchmark_loaders(self, names: Sequence[str]) -> list[DataLoader]:
        rank, world = self._dist()
        pad = self._need_prompts().pad_token_id
        loaders = []
        for name in names:
            ds = self.benchmarks[name]
            loaders.append(self._loader(ds, batch_sampler=RankBatches(ds.durations, self.val_batching, rank, world),
                                        collate_fn=partial(collate, pad_token_id=pad, left_pad=True)))
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._benchmark_loaders(list(self.val_sets))

    def test_dataloader(self) -> list[DataLoader]:
        return self._benchmark_loaders(list(self.val_sets))

    def predict_dataloader(self) -> list[DataLoader]:
        loaders = self._benchmark_loaders(list(self.predict_sets))
        if self.windows is not None and len(self.windows):
            pad = self._need_prompts().pad_token_id
            loaders.append(self._loader(self.windows, batch_sampler=RankBatches(self.windows.durations,
                                                                                self.val_batching),
                                        collate_fn=partial(collate, pad_token_id=pad, left_pad=True)))
        return loaders
