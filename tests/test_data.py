"""Data contracts: mixture shares, exact validation coverage, label masks, rank balance."""

import itertools
from collections import Counter

import numpy as np

import pytest
from borealis.testing import build_tokenizer, make_pool, tone_id
from torch.utils.data import DataLoader

from borealis.data import (
    Batching,
    BorealisDataModule,
    MixtureStream,
    Pool,
    RngStream,
    bucketed,
    replay,
    slot_units,
    stream_seed,
    worker_role,
)
from borealis.prompts import IGNORE_INDEX, PromptBuilder


@pytest.fixture(scope="module")
def prompts():
    return PromptBuilder(build_tokenizer(), downsample_factor=4, max_source_positions=100)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("pools")
    make_pool(root / "a", "a", range(0, 120), max_samples=12)
    make_pool(root / "b", "b", range(200, 260), language="ru", max_samples=12)
    make_pool(root / "text", "t", range(0, 60), text_only=True, max_samples=12)
    make_pool(root / "bench", "v", range(0, 37), max_samples=5)  # odd count: ranks get uneven shares
    return root


def test_slot_units_cover_every_shard_once():
    for shards, slots in [(10, 4), (3, 8), (4, 4), (1, 3)]:
        seen = Counter()
        for s in range(slots):
            for shard, part, parts in slot_units(shards, slots, s):
                seen[(shard, part, parts)] += 1
        assert all(v == 1 for v in seen.values())
        assert {sh for sh, _, _ in seen} == set(range(shards))
        for shard in range(shards):  # every part of a shared shard is read by some slot
            parts = {(p, n) for sh, p, n in seen if sh == shard}
            n = next(iter(parts))[1]
            assert {p for p, _ in parts} == set(range(n))


def test_mixture_weights_and_text_ratio(pools, prompts):
    stream = MixtureStream([Pool("a", str(pools / "a"), 3.0), Pool("b", str(pools / "b"), 1.0)], prompts,
                           Batching(batch_size=8, bucket_size=64), text_shards=str(pools / "text"), text_ratio=0.2,
                           batches_per_epoch=100, shuffle_buffer=20, seed=3)
    counts = Counter(p for batch in stream for p in batch["pools"])
    total = sum(counts.values())
    assert total == 800
    assert abs(counts["text"] / total - 0.2) < 0.04
    assert abs(counts["a"] / (counts["a"] + counts["b"]) - 0.75) < 0.05


def test_batches_trace_back_to_their_audio_and_labels(pools, prompts):
    stream = MixtureStream([Pool("a", str(pools / "a"))], prompts, Batching(max_seconds_per_batch=2.0),
                           text_shards=str(pools / "text"), text_ratio=0.3, batches_per_epoch=6, shuffle_buffer=8)
    tok = prompts.tokenizer
    for batch in stream:
        audio_rows = [i for i, k in enumerate(batch["keys"]) if k.startswith("a-")]
        # each waveform row is the tone of its key, in row order
        for row, i in enumerate(audio_rows):
            n = batch["audio_lengths"][row]
            assert tone_id(batch["waveforms"][row, :n].numpy()) == int(batch["keys"][i].split("-")[1])
        # padded audio seconds stay within the budget
        assert batch["waveforms"] is None or batch["waveforms"].shape[1] * len(audio_rows) / 16000 <= 2.0 + 0.45
        for i in range(len(batch["keys"])):
            ids, labels = batch["input_ids"][i], batch["labels"][i]
            trained = ids[labels != IGNORE_INDEX].tolist()
            answer = tok.decode(trained[:-1])
            assert trained[-1] == prompts.eos_token_id
            if batch["keys"][i].startswith("a-"):
                assert answer == batch["references"][i]
            assert (batch["input_ids"][i] == prompts.audio_token_id).sum() == (
                prompts.num_audio_tokens(batch["audio_lengths"][audio_rows.index(i)]) if i in audio_rows else 0)


def _ranks_epoch(pools, prompts, world, workers, epoch=0):
    per_rank = []
    for rank in range(world):
        stream = MixtureStream([Pool("a", str(pools / "a"))], prompts, Batching(batch_size=4, bucket_size=8),
                               batches_per_epoch=5, shuffle_buffer=4, seed=1, rank=rank, world_size=world)
        stream.set_epoch(epoch)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        per_rank.append([k for batch in loader for k in batch["keys"]])
    return per_rank


def test_ranks_and_workers_get_equal_counts_and_disjoint_samples(pools, prompts):
    per_rank = _ranks_epoch(pools, prompts, world=2, workers=2)
    assert [len(k) for k in per_rank] == [20, 20]  # 5 batches of 4 per rank, whatever the shard split
    every = per_rank[0] + per_rank[1]
    assert len(set(every)) == len(every), "two slots read the same sample in one epoch"
    assert per_rank == _ranks_epoch(pools, prompts, world=2, workers=2), "not reproducible"
    assert per_rank != _ranks_epoch(pools, prompts, world=2, workers=2, epoch=1), "epochs must reshuffle"


@pytest.mark.parametrize("workers", [0, 2])
def test_every_validation_sample_scored_once(pools, prompts, workers, monkeypatch):
    world = 2
    keys_per_rank, batches_per_rank = [], []
    for rank in range(world):
        dm = BorealisDataModule(val_sets={"bench": str(pools / "bench")}, val_batching=Batching(batch_size=4),
                                num_workers=workers, prompt_builder=prompts)
        monkeypatch.setattr(dm, "_dist", lambda rank=rank: (rank, world))
        dm.setup("validate")
        (loader,) = dm.val_dataloader()
        batches = list(loader)
        batches_per_rank.append(len(batches))
        keys_per_rank.append([k for b in batches for k, pad in zip(b["keys"], b["is_pad"].tolist()) if not pad])
        for b in batches:  # generation batches are left-padded and hold no answer
            assert (b["attention_mask"][:, -1] == 1).all()
            assert all(r is not None for r in b["references"])
    assert batches_per_rank[0] == batches_per_rank[1]  # equal steps: no DDP hang
    every = keys_per_rank[0] + keys_per_rank[1]
    assert sorted(every) == sorted(f"v-{i}" for i in range(37))


def test_config_errors_name_the_problem(pools, prompts):
    with pytest.raises(ValueError, match="exactly one"):
        Batching(batch_size=4, max_seconds_per_batch=3.0)
    with pytest.raises(ValueError, match="text_pool"):
        BorealisDataModule(text_ratio=0.1)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MixtureStream([Pool("x", str(pools / "nowhere"))], prompts, Batching(batch_size=2))


def test_every_data_problem_of_a_stage_is_named_by_its_key(pools, tmp_path):
    from borealis.augmentations import AugmentationPipeline, AugmentationStage, BackgroundNoise, ImpulseResponse
    from borealis.commands import ConfigError
    from borealis.data.datamodule import PredictSettings

    pipeline = AugmentationPipeline([AugmentationStage("clean"), AugmentationStage(
        "mild", start_epoch=1, effects=[BackgroundNoise(str(pools / "a")), ImpulseResponse(str(tmp_path / "ir"))]),
        AugmentationStage("harsh", start_epoch=2, effects=[BackgroundNoise(str(tmp_path / "noise"))])])
    dm = BorealisDataModule(train_pools=[Pool("a", str(pools / "a")), Pool("gone", str(tmp_path / "gone"))],
                            text_pool=str(pools / "text"), text_ratio=0.1, augmentation=pipeline,
                            val_sets={"bench": str(pools / "bench"), "typo": str(tmp_path / "bnech")},
                            predict=PredictSettings(sets={"p": str(tmp_path / "p")}))  # no prompt builder needed
    assert [key for key, _ in dm.problems("fit")] == [
        "data.train_pools[1] ('gone')", "data.augmentation.stages[1].effects[1]",
        "data.augmentation.stages[2].effects[0]", "data.val_sets.typo"]
    assert [key for key, _ in dm.problems("validate")] == ["data.val_sets.typo"]
    assert [key for key, _ in dm.problems("predict")] == ["data.predict.sets.p"]
    with pytest.raises(ConfigError, match=r"4 problem\(s\) with the data configuration \(stage 'fit'\)") as err:
        dm.check("fit")
    assert isinstance(err.value, FileNotFoundError)  # every problem is a missing path
    assert f"augmentation stage 'harsh', BackgroundNoise: no shards match '{tmp_path / 'noise'}'" in str(err.value)


def test_a_pool_with_nothing_in_range_fails_with_its_name(pools, prompts):
    stream = MixtureStream([Pool("a", str(pools / "a"))], prompts, Batching(batch_size=2), batches_per_epoch=1,
                           min_seconds=5.0, max_seconds=9.0)
    with pytest.raises(ValueError, match="pool 'a': no sample between"):
        next(iter(stream))


def test_pool_start_epoch_reaches_persistent_workers(pools, prompts):
    stream = MixtureStream([Pool("a", str(pools / "a")), Pool("b", str(pools / "b"), start_epoch=1)], prompts,
                           Batching(batch_size=4, bucket_size=8), batches_per_epoch=6, shuffle_buffer=4)
    loader = DataLoader(stream, batch_size=None, num_workers=2, persistent_workers=True)
    seen = []
    for epoch in range(2):
        stream.set_epoch(epoch)  # what BorealisLightningModule.on_train_epoch_start does
        seen.append(Counter(p for batch in loader for p in batch["pools"]))
    assert set(seen[0]) == {"a"}
    assert set(seen[1]) == {"a", "b"} and seen[1]["b"] > 4
    with pytest.raises(ValueError, match="no training pool starts at epoch 0"):
        MixtureStream([Pool("b", str(pools / "b"), start_epoch=1)], prompts, Batching(batch_size=4))


def test_prompt_token_cache_is_bounded_and_changes_no_ids(prompts, monkeypatch):
    """`PromptBuilder._tok` caches segment ids; with a 3-entry cache that keeps evicting, every chat
    must still encode to what the tokenizer gives, segment by segment."""
    monkeypatch.setattr(PromptBuilder, "CACHED_TEXTS", 3)
    fresh = PromptBuilder(prompts.tokenizer, downsample_factor=4, max_source_positions=100)
    for i in range(12):
        chat = [{"role": "user", "content": f"say {i % 4}"}, {"role": "assistant", "content": f"{i} {i * 7}"}]
        got = fresh.encode(chat)
        segments = ["<|im_start|>system\n", fresh.system_prompt + "<|im_end|>", "\n", "<|im_start|>user\n",
                    f"say {i % 4}<|im_end|>", "\n", "<|im_start|>assistant\n", f"{i} {i * 7}<|im_end|>", "\n"]
        want = [t for ids in prompts.tokenizer(segments, add_special_tokens=False)["input_ids"] for t in ids]
        assert got.input_ids == want
        assert len(fresh._ids) <= 3


@pytest.mark.parametrize("kwargs, message", [
    ({"weight": 0.0}, "weight must be a positive number, got 0.0"),
    ({"weight": -1.0}, "weight must be a positive number"),
    ({"weight": float("nan")}, "weight must be a positive number"),
    ({"start_epoch": -1}, "start_epoch must be an integer >= 0, got -1"),
    ({"name": ""}, "name is empty"),
])
def test_pool_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Pool(**{"name": "a", "shards": "x", **kwargs})


def test_named_rng_streams_keep_their_seeds():
    """The stream tags are part of every seed: changing one changes every draw of a run."""
    assert (int(RngStream.MIXTURE), int(RngStream.AUGMENTATION)) == (1, 2)
    assert stream_seed(RngStream.MIXTURE, 5, 2, 3) == [5, 2, 3, 1]
    assert stream_seed(RngStream.AUGMENTATION, 5, 2, 3, 17) == [5, 2, 3, 2, 17]
    want = np.random.default_rng([5, 2, 3, 2, 17]).random(4)
    assert np.array_equal(np.random.default_rng(stream_seed(RngStream.AUGMENTATION, 5, 2, 3, 17)).random(4), want)


def test_text_pool_is_its_own_pool_after_the_speech_pools(pools, prompts):
    stream = MixtureStream([Pool("a", str(pools / "a")), Pool("b", str(pools / "b"))], prompts,
                           Batching(batch_size=4), text_shards=str(pools / "text"), text_ratio=0.1)
    assert [p.name for p in stream.pools] == ["a", "b"] and stream.text.name == "text"
    assert [p.order_tag for p in stream.pools] == [0, 1] and stream.text.order_tag == 2
    no_text = MixtureStream([Pool("a", str(pools / "a"))], prompts, Batching(batch_size=4),
                            text_shards=str(pools / "text"), text_ratio=0.0)
    assert no_text.text is None


def test_worker_roles_and_replay_resume_where_the_loader_stopped():
    """After c consumed batches, the loader's worker 0 yields batch c: it plays role c % W."""
    for workers in (1, 2, 3):
        for consumed in range(8):
            roles = [worker_role(w, workers, consumed) for w in range(workers)]
            assert roles[0][0] == consumed % workers
            assert sorted(r for r, _ in roles) == list(range(workers))
            assert sum(skip for _, skip in roles) == consumed  # every consumed batch replayed once
    marks = []
    out = list(replay(iter([["a"], ["b"], ["c"], ["d"]]), 2, lambda: marks.append("caught up")))
    assert out == [["c"], ["d"]] and marks == ["caught up"]


def test_bucketed_sorts_cuts_and_stops_reading_when_the_consumer_does():
    read = []

    def items():
        for i in itertools.count():
            read.append(i)
            yield {"input_ids": [0] * (i % 5 + 1), "num_samples": 1600 * (i % 5 + 1)}  # sorted by seconds

    batching = Batching(batch_size=2, bucket_size=6)
    batches = list(itertools.islice(bucketed(items(), batching, np.random.default_rng(0)), 3))
    assert len(read) == 6  # one bucket: three batches of two
    assert sorted(len(it["input_ids"]) for b in batches for it in b) == [1, 1, 2, 3, 4, 5]
    for b in batches:  # neighbours in length share a batch
        assert abs(len(b[0]["input_ids"]) - len(b[1]["input_ids"])) <= 1
