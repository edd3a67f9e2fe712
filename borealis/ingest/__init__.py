"""Corpus items -> shard pools, with every item written or rejected for a named reason.

What: `build_pool(items, out_dir, kind=...)` takes the items a reader in `borealis.corpora`
gives (a JSONL line, a LibriSpeech utterance, a Common Voice row, a Hugging Face row, a noise
file), checks each one (`items`), decodes and resamples its audio to 16 kHz mono FLAC in
`workers` processes and cuts long recordings at silences between their timestamped segments
(`audio`), and writes the pool (or one pool per split) with `ShardWriter` (`build`).
`borealis shards build` is its command (`borealis/shards/cli.py`).

Why: a corpus must never lose samples silently. Every item ends as exactly one of written or
rejected (REASONS), so written + rejected = read always holds and is asserted; the report
(`build_report.json`) keeps the counts and the first 20 rejections per reason, each naming
where the item came from. Output is deterministic: workers encode, the parent writes in
input order, so the same input gives byte-identical shards whatever `workers` is. Long
recordings are cut only where the transcript says where (`segments` with start/end), at the
quietest 10 ms inside the gap between two segments; without timestamps they are rejected
("too long and no timestamps"), never truncated.

Cost: per clip one soundfile decode, one soxr resample (HQ) and one FLAC encode: ~6 ms per
5 s of 44.1 kHz stereo on one core (~800x real time); `workers` processes scale that until
the parent's tar writing (~0.1 ms per clip) or the disk is the limit. BENCHMARKS.md has the
measured hours per minute (`python tools/bench_shards.py`).
"""

from borealis.ingest.audio import (CUT_FRAME, SILENCE_PEAK, Encoded, Limits, encode_item, load_audio, ordered,
                                   plan_chunks, quietest_point)
from borealis.ingest.build import MAX_EXAMPLES, Kind, build_pool, summary_line
from borealis.ingest.items import (CLIP_KINDS, PREPARERS, REASONS, Item, Prepared, Rejected, audio_key, chat_key,
                                   check_messages, parse_line, prepare_clip_item, prepare_manifest_item,
                                   prepare_text_item, split_of)
from borealis.shards import REPORT_NAME

__all__ = [
    "CLIP_KINDS", "CUT_FRAME", "MAX_EXAMPLES", "PREPARERS", "REASONS", "REPORT_NAME", "SILENCE_PEAK", "Encoded",
    "Item", "Kind", "Limits", "Prepared", "Rejected", "audio_key", "build_pool", "chat_key", "check_messages",
    "encode_item", "load_audio", "ordered", "parse_line", "plan_chunks", "prepare_clip_item",
    "prepare_manifest_item", "prepare_text_item", "quietest_point", "split_of", "summary_line",
]
