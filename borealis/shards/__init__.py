"""WebDataset tar shards of audio samples: the format, writing, reading and checking pools.

`format` holds the layout (constants, keys, FLAC encoding, one sample's decoding, the pool
index and shard lists), `writer` builds pools (`ShardWriter`), `reader` streams and randomly
accesses them (tar members grouped by webdataset), `verify` checks them, and `cli` is
`borealis shards build|inspect`; `remote` fetches shards at URLs (s3, gs, http(s), any fsspec
protocol, `pipe:`) with retries and timeouts, through the node-local `cache`; `overlap` finds samples two pools share (a benchmark in a
training pool) by audio fingerprint and transcript. `shards/README.md` documents the layout.
"""

from borealis.shards.format import (AUDIO_EXTS, INDEX_FORMAT, INDEX_NAME, REPORT_NAME, SAMPLE_RATE, SHARD_PATTERN,
                                    ShardError, decode_sample, encode_flac, list_shards, read_index,
                                    shard_entries, shard_sample_counts, validate_key)
from borealis.shards.overlap import Finding, OverlapReport, check_overlap, find_overlaps
from borealis.shards.reader import ReadErrors, SampleRef, index_samples, iter_shard, read_sample
from borealis.shards.verify import Problem, find_pools, inspect_pool, verify_pool
from borealis.shards.writer import ShardWriter

__all__ = [
    "AUDIO_EXTS", "INDEX_FORMAT", "INDEX_NAME", "REPORT_NAME", "SAMPLE_RATE", "SHARD_PATTERN", "Finding",
    "OverlapReport", "Problem", "ReadErrors", "SampleRef", "ShardError", "ShardWriter", "check_overlap",
    "decode_sample", "encode_flac", "find_overlaps", "find_pools", "index_samples", "inspect_pool", "iter_shard",
    "list_shards", "read_index", "read_sample", "shard_entries", "shard_sample_counts", "validate_key", "verify_pool",
]
