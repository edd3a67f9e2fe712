"""Damaged training data is skipped, named and counted; validation stays strict.

The pool is 40 traceable tone samples `p-<id>` (a sine at 200 + 10 * id Hz) in 4 shards of 10,
damaged three ways: shard 1 is truncated inside p-17's FLAC (p-17..p-19 are lost), p-23's FLAC
is garbage, p-35's JSON is not JSON and p-36's JSON lacks a transcript (3 skipped samples).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from borealis.testing import build_tokenizer, make_pool, tone_id
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from borealis.data import Batching, BenchmarkSet, BorealisDataModule, MixtureStream, Pool, read_pass, sample_problem
from borealis.module import BorealisLightningModule
from borealis.prompts import PromptBuilder
from borealis.shards import ReadErrors, ShardError, index_samples, iter_shard, list_shards, read_sample

SKIPPED = {"p-23", "p-35", "p-36"}  # corrupt FLAC, invalid JSON, JSON without 'text'
LOST = {"p-17", "p-18", "p-19"}  # from the cut inside p-17's FLAC to the end of shard 1
GOOD = {f"p-{i}" for i in range(40)} - SKIPPED - LOST


def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tf:
        return [(m, tf.extractfile(m).read()) for m in tf.getmembers()]


def _rewrite(path: Path, replace: dict[str, bytes]) -> None:
    """Rewrite a shard with some members' bytes replaced (the tar itself stays well-formed)."""
    members = _members(path)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            data = replace.get(info.name, data)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _offset(path: Path, name: str) -> tuple[int, int, int]:
    """(header offset, data offset, size) of one member."""
    with tarfile.open(path) as tf:
        m = tf.getmember(name)
        return m.offset, m.offset_data, m.size


def damage(pool: Path) -> None:
    shard1 = pool / "shard-000001.tar"
    _, data, size = _offset(shard1, "p-17.flac")
    shard1.write_bytes(shard1.read_bytes()[: data + size // 2])  # cut mid-way through p-17's audio
    _rewrite(pool / "shard-000002.tar", {"p-23.flac": b"\x00garbage, not FLAC" * 300})
    _rewrite(pool / "shard-000003.tar", {"p-35.json": b'{"text": ',
                                         "p-36.json": json.dumps({"language": "en", "duration": 0.3}).encode()})


@pytest.fixture(scope="module")
def prompts():
    return PromptBuilder(build_tokenizer(), downsample_factor=4, max_source_positions=100)


@pytest.fixture()
def pool(tmp_path):
    make_pool(tmp_path / "p", "p", range(40), max_samples=10)
    damage(tmp_path / "p")
    return tmp_path / "p"


def _stream(pool: Path, prompts, **kw) -> MixtureStream:
    return MixtureStream([Pool("p", str(pool))], prompts, Batching(batch_size=4, bucket_size=8), **kw)


@pytest.mark.parametrize("slots", [1, 3, 8])  # 8 slots > 4 shards: two slots share each shard
def test_one_pass_yields_every_good_sample_once_and_reports_the_bad(pool, prompts, slots, caplog):
    caplog.set_level(logging.WARNING, logger="borealis.shards")
    stream = _stream(pool, prompts)
    keys: Counter[str] = Counter()
    total = [0, 0, 0, 0]
    for slot in range(slots):
        stats = ReadErrors()
        for sample in read_pass(stream.pools[0], stats, slot=slot, slots=slots):
            keys[sample["key"]] += 1
            assert tone_id(sample["audio"]) == int(sample["key"].split("-")[1])  # the right audio, intact
        total = [t + c for t, c in zip(total, stats.counts())]
    assert set(keys) == GOOD and set(keys.values()) == {1}, "every good sample exactly once"
    assert dict(zip(ReadErrors.names, total)) == {"skipped_samples": 3, "lost_samples": 3,
                                                  "unreadable_shards": 0, "damaged_shards": 1}
    warnings = caplog.text
    assert "shard-000002.tar: sample 'p-23': undecodable .flac" in warnings
    assert "shard-000003.tar: sample 'p-35': corrupt .json" in warnings
    assert "shard-000003.tar: sample 'p-36': metadata: audio sample without 'text'" in warnings
    assert "shard-000001.tar ended after 7 of 10 samples, at sample 'p-17'" in warnings


def test_a_tar_cut_between_members_is_not_a_shorter_valid_tar(pool, prompts):
    shard0 = pool / "shard-000000.tar"
    header, _, _ = _offset(shard0, "p-4.flac")  # p-4's JSON is whole, its audio gone
    shard0.write_bytes(shard0.read_bytes()[:header])
    with pytest.raises(ShardError, match=r"shard-000000\.tar: sample 'p-4': tar is truncated.*end-of-archive"):
        list(iter_shard(shard0))  # before: p-4 came out as a text-only sample
    with pytest.raises(ShardError, match=r"shard-000000\.tar: sample 'p-4': unreadable tar"):
        index_samples([shard0])  # a benchmark would have lost p-4..p-9 quietly
    stats = ReadErrors()
    keys = [s["key"] for s in iter_shard(shard0, on_error=stats, expected=10)]
    # p-4 may be whole up to its JSON, but nothing says so: it is lost with the rest
    assert keys == [f"p-{i}" for i in range(4)]
    assert stats.counts() == (0, 6, 0, 1)


def test_the_low_level_reader_still_raises_by_default(pool):
    with pytest.raises(ShardError, match=r"shard-000002\.tar: sample 'p-23': undecodable \.flac"):
        list(iter_shard(pool / "shard-000002.tar"))
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sample 'p-17': tar is truncated"):
        list(iter_shard(pool / "shard-000001.tar"))
    with pytest.raises(ShardError, match=r"shard-000003\.tar: sample 'p-35': corrupt \.json"):
        list(iter_shard(pool / "shard-000003.tar"))
    (pool / "shard-000000.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(ShardError, match=r"shard-000000\.tar: not a readable tar"):
        list(iter_shard(pool / "shard-000000.tar"))
    (pool / "shard-000000.tar").unlink()
    with pytest.raises(FileNotFoundError):
        list(iter_shard(pool / "shard-000000.tar"))
    with pytest.raises(FileNotFoundError, match="shard-000000.tar"):
        list_shards(pool)  # the index lists it
    assert len(list_shards(pool, keep_missing=True)) == 4
    with pytest.raises(ValueError, match="part"):
        list(iter_shard(pool / "shard-000002.tar", part=2, parts=2))


def test_benchmarks_stay_strict_and_name_shard_and_key(pool, prompts, tmp_path):
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sample 'p-17': unreadable tar"):
        BenchmarkSet("bench", str(pool), prompts)
    (ref,) = [r for r in index_samples([pool / "shard-000002.tar"]) if r.key == "p-23"]
    with pytest.raises(ShardError, match=r"shard-000002\.tar: sample 'p-23': undecodable \.flac"):
        read_sample(ref)
    with pytest.raises(ShardError, match=r"shard-000003\.tar: sample 'p-35': corrupt \.json"):
        BenchmarkSet("bench", str(pool / "shard-000003.tar"), prompts)  # durations are read at setup


def test_unreadable_shards_are_named_counted_and_skipped(pool, prompts, caplog):
    caplog.set_level(logging.WARNING, logger="borealis.shards")
    (pool / "shard-000000.tar").unlink()  # still listed by index.json
    (pool / "shard-000001.tar").write_bytes(b"")  # not a tar
    unreadable = 2
    if os.geteuid() != 0:  # root reads whatever the mode says
        (pool / "shard-000002.tar").chmod(0)
        unreadable = 3
    stream = _stream(pool, prompts, batches_per_epoch=8, shuffle_buffer=4)
    stats = ReadErrors()
    keys = {s["key"] for s in read_pass(stream.pools[0], stats)}
    assert keys == {f"p-{i}" for i in range(10 * unreadable, 40)} - SKIPPED
    assert stats.unreadable_shards == unreadable and stats.lost_samples == 10 * unreadable
    assert "skipping shard" in caplog.text and "shard-000000.tar" in caplog.text and "shard-000001.tar" in caplog.text

    batches = list(stream)  # training goes on with the readable shards
    assert len(batches) == 8 and not {k for b in batches for k in b["keys"]} - GOOD
    errors = sum(b["data_errors"] for b in batches)
    assert errors.dtype == torch.long and errors.shape == (4,)
    assert errors[2] >= unreadable and errors[1] >= 10 * unreadable


def test_a_pool_with_no_readable_shard_fails_naming_pool_and_why(tmp_path, prompts):
    make_pool(tmp_path / "x", "x", range(4), max_samples=2)
    for shard in list_shards(tmp_path / "x"):
        shard.write_bytes(b"\x01" * 1024)
    stream = MixtureStream([Pool("x", str(tmp_path / "x"))], prompts, Batching(batch_size=2), batches_per_epoch=1)
    with pytest.raises(ValueError, match=r"pool 'x': no usable sample in 2 shard\(s\).* 2 unreadable shards"):
        next(iter(stream))


def test_sample_problem_catches_what_encoding_would_trip_on():
    ph = "<|start_of_audio|><|end_of_audio|>"
    assert sample_problem({"text": "hi", "language": "en"}, True) is None
    assert sample_problem({"messages": [{"role": "user", "content": f"q {ph}"},
                                        {"role": "assistant", "content": "a"}]}, True) is None
    assert "without 'text'" in sample_problem({"language": "en"}, True)
    assert "without 'messages'" in sample_problem({"text": "hi"}, False)
    assert "non-empty list" in sample_problem({"messages": "hi"}, False)
    assert "must be {" in sample_problem({"messages": [{"role": "user"}]}, False)
    assert "no assistant" in sample_problem({"messages": [{"role": "user", "content": "q"}]}, False)
    assert "exactly one" in sample_problem({"messages": [{"role": "user", "content": "q"},
                                                         {"role": "assistant", "content": "a"}]}, True)
    # the one chat rule (prompts.chat_problem): the placeholder belongs in a user turn, roles are ChatML's
    assert "in a user turn" in sample_problem({"messages": [{"role": "user", "content": "q"},
                                                           {"role": "assistant", "content": f"a {ph}"}]}, True)
    assert "must be {" in sample_problem({"messages": [{"role": "tool", "content": "q"},
                                                       {"role": "assistant", "content": "a"}]}, False)
    assert "'language'" in sample_problem({"text": "hi", "language": ["en"]}, True)


class _Recorder(L.Callback):
    """Keeps what each training batch carried."""

    def __init__(self) -> None:
        self.errors: list[torch.Tensor] = []
        self.keys: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.errors.append(batch["data_errors"].cpu())
        self.keys.update(batch["keys"])


def test_counts_reach_the_batches_and_tensorboard(pool, tiny_parts, tmp_path):
    enc, llm = tiny_parts
    model = BorealisLightningModule(str(enc), str(llm), warmup_steps=1)
    dm = BorealisDataModule(train_pools=[Pool("p", str(pool))], batching=Batching(batch_size=4, bucket_size=8),
                            batches_per_epoch=12, shuffle_buffer=4, num_workers=2,
                            prompt_builder=model.prompt_builder)
    recorder = _Recorder()
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb", version="v")
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=logger, callbacks=[recorder], log_every_n_steps=1,
                        limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=dm)

    assert len(recorder.errors) == 12 and not recorder.keys - GOOD
    # 2 workers x 6 batches of 4 (+ a shuffle buffer of 4 each) read every shard at least once
    total = torch.stack(recorder.errors).sum(0)
    skipped, lost, unreadable, damaged = total.tolist()
    assert skipped >= 3 and lost >= 3 and damaged >= 1 and unreadable == 0
    events = EventAccumulator(str(tmp_path / "tb" / "v")).Reload()
    for name, value in zip(ReadErrors.names, total.tolist()):
        logged = events.Scalars(f"train/{name}")
        assert len(logged) == 12 and logged[-1].value == value, name  # the total so far, at every step
        assert [e.value for e in logged] == sorted(e.value for e in logged)


class _RankProbe(L.LightningModule):
    """A one-weight model that logs data errors with BorealisLightningModule's own method and
    writes each batch's `data_errors` to a file per rank (forked ranks share no memory)."""

    _log_data_errors = BorealisLightningModule._log_data_errors

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.w = torch.nn.Parameter(torch.zeros(()))
        self._data_errors = self._data_errors_all = None

    def training_step(self, batch, batch_idx):
        return (self.w - 1.0) ** 2

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._log_data_errors(batch)
        with open(f"{self.out}/rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(batch["data_errors"].tolist()) + "\n")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_logged_totals_are_summed_over_ranks(pool, prompts, tmp_path):
    """Two CPU ranks (DDP over gloo) read disjoint shards; the logged value is their sum so far."""
    dm = BorealisDataModule(train_pools=[Pool("p", str(pool))], batching=Batching(batch_size=4, bucket_size=8),
                            batches_per_epoch=10, shuffle_buffer=4, num_workers=0, prompt_builder=prompts)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb", version="v")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, logger=logger,
                        log_every_n_steps=3, limit_val_batches=0, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_RankProbe(str(tmp_path)), datamodule=dm)

    per_rank = [torch.tensor([json.loads(row) for row in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()])
                for r in range(2)]
    assert [len(r) for r in per_rank] == [10, 10]
    so_far = (per_rank[0] + per_rank[1]).cumsum(0)  # (batches, 4): the all-rank totals after each batch
    assert so_far[-1, 0] >= 3 and so_far[-1, 1] >= 3
    events = EventAccumulator(str(tmp_path / "tb" / "v")).Reload()
    for i, name in enumerate(ReadErrors.names):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{name}")]
        assert [step for step, _ in logged] == [2, 5, 8]  # every 3rd step, as the logger writes
        assert [value for _, value in logged] == [so_far[step, i].item() for step, _ in logged], name
