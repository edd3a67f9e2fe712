"""The data layer: shard pools in, padded batches out.

    pools.py       what a pool is, which shards a slot reads, the read/check/filter/shuffle stages
    stream.py      the training stream: pools mixed, augmented, encoded, bucketed, built (`MixtureStream`)
    batching.py    encoding a sample, cutting batches by a budget, bucketing, collation
    resume.py      the stream's position in a checkpoint and the replay that resumes it exactly
    benchmarks.py  validation sets scored exactly once across ranks and workers
    windows.py     audio files cut into windows for `borealis predict`
    datamodule.py  the LightningDataModule that wires them to the trainer
"""

from borealis.data.batching import Batching, bucketed, collate, encode_sample
from borealis.data.benchmarks import BenchmarkSet, RankBatches
from borealis.data.datamodule import BorealisDataModule, PredictSettings
from borealis.data.pools import Pool, PoolShards, read_pass, sample_problem, slot_units
from borealis.data.resume import ResumableLoader, replay, worker_role
from borealis.data.stream import MixtureStream, RngStream, stream_seed
from borealis.data.windows import Window, WindowSet

__all__ = ["Batching", "BenchmarkSet", "BorealisDataModule", "MixtureStream", "Pool", "PoolShards", "PredictSettings",
           "RankBatches", "ResumableLoader", "RngStream", "Window", "WindowSet", "bucketed", "collate", "encode_sample",
           "read_pass", "replay", "sample_problem", "slot_units", "stream_seed", "worker_role"]
