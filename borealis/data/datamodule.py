"""The LightningDataModule: shard pools in, padded batches out.

Training reads `stream.MixtureStream` through `resume.ResumableLoader` (its position is saved
in every checkpoint); validation and test read each benchmark exactly once across ranks
(`benchmarks`); prediction reads benchmark sets and audio files cut into windows (`windows`).
`problems` finds every missing or empty data source of a stage (one check, shared by the CLI,
which runs it before the model is built, and `setup`); `check` raises them as one
`commands.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader

from borealis.augmentations import AugmentationPipeline
from borealis.commands import ConfigError
from borealis.data.batching import Batching, collate
from borealis.data.benchmarks import BenchmarkSet, RankBatches
from borealis.data.pools import Pool
from borealis.data.resume import ResumableLoader
from borealis.data.stream import MixtureStream
from borealis.data.windows import WindowSet, encoder_window_seconds
from borealis.inference import expand_paths
from borealis.prompts import PromptBuilder
from borealis.shards import check_overlap, list_shards
from borealis.shards.remote import RemoteSettings, ShardFetcher, configure


@dataclass
class PredictSettings:
    """What `borealis predict` runs on.

    Args:
        sets: benchmark name -> shards; each gets one output line per sample.
        files: audio files, folders and globs (any soundfile format, rate and channel count);
            each gets one output line: its prediction, with per-window timing, or its error.
            Long files are cut into windows of at most the encoder's window (see
            `inference.plan_windows`) and the window texts merged.
        prompt: the instruction for `files` (null: the ASR prompt).
        language: language of `files` (picks the ASR prompt; written out).
        overlap: seconds neighbouring windows share where a cut falls in speech (null: a
            tenth of the encoder window).
        min_seconds: shorter files are reported as errors ("too_short").
        min_pause: also split files at every pause at least this long (seconds), as a
            voice-activity segmenter would, so each utterance gets its own window (null: cut
            only where a file exceeds the window). For models trained on single short
            utterances (the demo); long windows give an LLM more context.
    """

    sets: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    prompt: str | None = None
    language: str | None = None
    overlap: float | None = None
    min_seconds: float = 0.25
    min_pause: float | None = None

    def windows(self, files: Sequence[str], prompts: PromptBuilder) -> WindowSet:
        """`files` cut into windows of the encoder's length, as these settings say."""
        window = encoder_window_seconds(prompts)
        return WindowSet(files, prompts, window=window, overlap=window / 10 if self.overlap is None else self.overlap,
                         user_prompt=self.prompt, language=self.language, min_seconds=self.min_seconds,
                         min_pause=self.min_pause)


class BorealisDataModule(L.LightningDataModule):
    """Shard pools in, padded batches out.

    Args:
        train_pools: speech (and instruction) pools, mixed by weight.
        text_pool: pool of text-only chats (folder or glob), drawn with `text_ratio`.
        text_ratio: share of text-only samples in training (the seed: 10-15% helps, 25% hurts).
        val_sets: benchmark name -> shards; one validation dataloader each, scored exactly once.
        predict: what `borealis predict` runs on: benchmark sets and audio files (`PredictSettings`).
        batching: training batch composition: `data.Batching`'s fields as a mapping, e.g.
            `{batch_size: 12}` or `{pack: true, max_tokens_per_batch: 8192, max_tokens_per_row:
            4096}`. A mapping, so that a later config file or flag replaces it whole instead of
            merging its keys into an earlier one's (two budgets would conflict).
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
        allow_overlap: train even when a benchmark of `val_sets` shares audio or a transcript
            with a training pool or the text pool. By default `fit` refuses to start, naming
            the pools, the counts and example keys (`borealis.shards.check_overlap`).
        cache_dir: node-local folder caching shards read from URLs (s3://, gs://, http(s)://,
            pipe:), shared by every worker and rank of the node: a shard fetched once is kept
            by its index.json sha256, verified at each use and fetched again when corrupt
            (null: each shard is fetched into a temporary file every time it is read).
        cache_max_gb: size cap of `cache_dir` in GB; least recently used shards are evicted.
        remote: retries, timeouts and fsspec storage options for shards at URLs.
        prompt_builder: linked from the model by the CLI (tokenizer + audio geometry).
    """

    def __init__(self, train_pools: list[Pool] | None = None, text_pool: str | None = None, text_ratio: float = 0.0,
                 val_sets: dict[str, str] | None = None, predict: PredictSettings = PredictSettings(),
                 batching: dict | Batching | None = None, val_batching: Batching | None = None,
                 batches_per_epoch: int = 1000, shuffle_buffer: int = 1000, min_seconds: float = 0.1,
                 max_seconds: float = 30.0, num_workers: int = 2, val_num_workers: int | None = None, seed: int = 0,
                 augmentation: AugmentationPipeline | None = None, allow_overlap: bool = False,
                 cache_dir: str | None = None, cache_max_gb: float = 100.0,
                 remote: RemoteSettings = RemoteSettings(), prompt_builder: PromptBuilder | None = None) -> None:
        super().__init__()
        if not 0.0 <= text_ratio < 1.0:
            raise ValueError(f"text_ratio must be in [0, 1), got {text_ratio}")
        if text_ratio > 0 and not text_pool:
            raise ValueError("text_ratio > 0 needs text_pool")
        self.train_pools = train_pools or []
        self.text_pool, self.text_ratio = text_pool, text_ratio
        self.val_sets = dict(val_sets or {})
        self.predict = predict
        self.windows: WindowSet | None = None  # predict.files, cut into windows
        self.batching = Batching.of(batching, "data.batching", Batching(batch_size=8))
        self.val_batching = val_batching or Batching(batch_size=16)
        self.batches_per_epoch, self.shuffle_buffer = batches_per_epoch, shuffle_buffer
        self.min_seconds, self.max_seconds = min_seconds, max_seconds
        self.num_workers, self.seed = num_workers, seed
        self.allow_overlap = allow_overlap
        self.val_num_workers = num_workers if val_num_workers is None else val_num_workers
        if min(num_workers, self.val_num_workers) < 0:
            raise ValueError(f"num_workers and val_num_workers must be >= 0, got {num_workers} and {val_num_workers}")
        self.augmentation = augmentation
        self.fetcher = ShardFetcher(remote, cache_dir, cache_max_gb)
        configure(self.fetcher)  # benchmarks, noise/IR pools and the checks read URLs through it
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
                world_size=world, augmentation=self.augmentation, fetcher=self.fetcher)
        if stage == "predict" and self.predict.files and self.windows is None:
            files = expand_paths(self.predict.files)[rank::world]  # whole files per rank: windows merge locally
            self.windows = self.predict.windows(files, prompts)
        sets = self.predict.sets if stage == "predict" else self.val_sets
        for name, shards in sets.items():
            if name not in self.benchmarks:
                self.benchmarks[name] = BenchmarkSet(name, shards, prompts)

    def check(self, stage: str) -> None:
        """Raise one `ConfigError` listing every problem `problems(stage)` finds (a
        `MissingPathError`, also a FileNotFoundError, when each is a missing path)."""
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn (a str enum)
        problems = self.problems(stage)
        if problems:
            raise ConfigError.gather(problems, f"the data configuration (stage {stage!r})")

    def problems(self, stage: str) -> list[tuple[str, Exception]]:
        """Every missing or empty data source of `stage`, as (config key, error) pairs.

        A training pool, the text pool or a benchmark whose spec matches no shard (or whose
        index.json is invalid), an empty `train_pools` (fit) or `val_sets` (validate/test), a
        missing or empty noise or IR pool of the augmentation curriculum (each effect that
        reads one). Cost: listing the shards (index.json reads and globs) and the noise/IR
        pools' tar headers; no training or benchmark tar is opened. `borealis` runs this on a
        copy of the DataModule before the model is built (`cli.BorealisCLI`), and `setup`
        runs it again for code that builds a DataModule itself.
        """
        problems: list[tuple[str, Exception]] = []

        def probe(key: str, spec: str, *, keep_missing: bool) -> None:
            try:
                list_shards(spec, keep_missing=keep_missing)
            except (OSError, ValueError) as err:  # OSError: a URL pool unreachable after the retries
                problems.append((key, err))

        if stage == "fit":
            if not self.train_pools:
                problems.append(("data.train_pools", ValueError("empty: name at least one pool to train on")))
            for i, pool in enumerate(self.train_pools):  # missing listed shards are skipped and counted in training
                probe(f"data.train_pools[{i}] ({pool.name!r})", pool.shards, keep_missing=True)
            if self.text_pool and self.text_ratio > 0:
                probe("data.text_pool", self.text_pool, keep_missing=True)
            if self.augmentation is not None:
                problems += [(f"data.augmentation.{key}", err) for key, err in self.augmentation.problems()]
        if stage in ("validate", "test") and not self.val_sets:
            problems.append(("data.val_sets", ValueError(f"empty: `{stage}` scores benchmarks; name at least one")))
        sets = ("data.predict.sets", self.predict.sets) if stage == "predict" else ("data.val_sets", self.val_sets)
        for name, spec in sets[1].items():
            if name not in self.benchmarks:  # benchmarks are read strictly: every listed shard must exist
                probe(f"{sets[0]}.{name}", spec, keep_missing=False)
        if stage == "fit" and self.val_sets and not self.allow_overlap and not problems:
            problems += self._overlap_problems()
        return problems

    def _overlap_problems(self) -> list[tuple[str, Exception]]:
        """A benchmark of `val_sets` that shares audio or a transcript with a training pool or the
        text pool (`borealis.shards.check_overlap`), as one problem; checked once every source
        exists. Cost: the first time per pool, decoding it (its fingerprints are then cached
        beside its shards); after that, reading the caches and comparing (seconds)."""
        train = {pool.name: pool.shards for pool in self.train_pools}
        if self.text_pool and self.text_ratio > 0:
            train["text_pool"] = self.text_pool
        try:
            check_overlap(train, self.val_sets, hint="Or set data.allow_overlap: true to train anyway.")
        except ValueError as err:
            return [("data.val_sets", err)]
        return []

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
        # that the checkpoint restores (see callbacks.RngState).
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
        loaders = self._benchmark_loaders(list(self.predict.sets))
        if self.windows is not None and len(self.windows):
            pad = self._need_prompts().pad_token_id
            loaders.append(self._loader(self.windows, batch_sampler=RankBatches(self.windows.durations,
                                                                                self.val_batching),
                                        collate_fn=partial(collate, pad_token_id=pad, left_pad=True)))
        return loaders
