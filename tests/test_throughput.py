"""throughput.Throughput: exact per-window accounting, the data-wait/compute split, MFU, and
the tags a real `borealis fit` writes to TensorBoard."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from borealis.testing import make_pool, run_cli
from lightning.pytorch.loggers import Logger

from borealis import throughput
from borealis.data import collate
from borealis.flops import step_flops
from borealis.prompts import IGNORE_INDEX
from borealis.modeling import BorealisConfig
from borealis.shards import SAMPLE_RATE
from borealis.throughput import Throughput

TAGS = {"train/audio_sec_per_sec", "train/tokens_per_sec", "train/samples_per_sec", "train/padding_ratio",
        "train/data_wait_ms", "train/compute_ms", "train/data_wait_share", "train/tflops_per_sec"}


class Recorder(Logger):
    """A Lightning logger that keeps every (step, metrics) it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    name, version = "recorder", 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.calls.append((step, dict(metrics)))

    def steps(self, tag: str) -> list[int]:
        return [step for step, m in self.calls if tag in m]

    def values(self, tag: str) -> list[float]:
        return [m[tag] for _, m in self.calls if tag in m]


def _config() -> BorealisConfig:
    from transformers import Qwen3Config, WhisperConfig

    encoder = WhisperConfig(num_mel_bins=2, d_model=4, encoder_layers=1, encoder_attention_heads=1,
                            encoder_ffn_dim=8, max_source_positions=6)  # toy sizes: FLOPs are formulas only
    llm = Qwen3Config(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=2)
    return BorealisConfig(encoder_config=encoder, llm_config=llm, downsample_factor=2,
                          lora={"r": 1, "alpha": 2, "dropout": 0.0, "target_modules": ["q_proj"]},
                          audio_token_id=7, audio_start_id=8, audio_end_id=9)


def _frames(longest_samples: int) -> int:
    return 1 + longest_samples // 1000  # a stand-in for the batch encoder window: varies per batch


def _batch(i: int) -> dict:
    """Rows of different lengths (so padding is known), every third one text-only."""
    items = []
    for r in range(2 + i % 3):
        n = 3 + (i + 2 * r) % 7
        audio = None if (i + r) % 3 == 0 else np.zeros(800 * (1 + (i * r) % 5), dtype=np.float32)
        labels = [IGNORE_INDEX] * (n - 2) + [1, 2]  # the answer: the last two tokens
        items.append({"input_ids": list(range(n)), "labels": labels, "audio": audio, "key": f"{i}-{r}"})
    return collate(items, pad_token_id=0)


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def perf_counter(self) -> float:
        return self.t


def _fake_trainer(recorder, *, log_every: int = 2, device: str = "cpu"):
    return SimpleNamespace(global_step=0, log_every_n_steps=log_every, precision="32-true", loggers=[recorder],
                           strategy=SimpleNamespace(root_device=torch.device(device)), is_global_zero=True,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=0)))


def _drive(cb, trainer, module, batches, clock, *, accumulate: int = 1, wait: float = 0.1, compute: float = 0.3,
           between=None) -> None:
    """The hook order of Lightning's fit loop, on a fake clock: `wait` s before each batch, `compute` s in it."""
    cb.on_train_start(trainer, module)
    cb.on_train_epoch_start(trainer, module)
    for i, batch in enumerate(batches):
        clock.t += wait
        cb.on_train_batch_start(trainer, module, batch, i)
        clock.t += compute
        steps = (i + 1) % accumulate == 0
        trainer.global_step += steps
        cb.on_train_batch_end(trainer, module, None, batch, i)
        trainer.fit_loop.epoch_loop._batches_that_stepped += steps
        if between:
            between(i)
    cb.on_train_end(trainer, module)


def _expected(batches, config) -> dict:
    """What the window of these batches must report, from the batches' tensors."""
    mask = [b["attention_mask"] for b in batches]
    lengths = [b["audio_lengths"] for b in batches]
    return {"samples": sum(len(m) for m in mask), "tokens": sum(int(m.sum()) for m in mask),
            "slots": sum(m.numel() for m in mask),
            "audio_samples": sum(int(a.sum()) for a in lengths if a is not None),
            "flops": sum(step_flops(config, m.sum(-1).tolist(), 0 if a is None else len(a),
                                    None if a is None else _frames(int(a.max())),
                                    label_tokens=int((b["labels"] != IGNORE_INDEX).sum())).total
                         for m, a, b in zip(mask, lengths, batches))}


def test_window_accounting_is_exact_under_gradient_accumulation(monkeypatch):
    clock, config = _Clock(), _config()
    monkeypatch.setattr(throughput, "time", clock)
    rec = _fake_trainer(Recorder(), log_every=2)
    module = SimpleNamespace(model=SimpleNamespace(config=config, encoder_frames=_frames))
    cb = Throughput(peak_tflops=2e-9)  # 2000 FLOP/s: a peak the toy numbers can be checked against
    batches = [_batch(i) for i in range(12)]
    _drive(cb, rec, module, batches, clock, accumulate=3)  # 4 optimizer steps, windows of 2 steps = 6 batches

    recorder = rec.loggers[0]
    assert recorder.steps("train/mfu") == [1, 3]  # Lightning's step of the window's last batch
    for (_, m), window in zip(recorder.calls, (batches[:6], batches[6:])):
        want, seconds = _expected(window, config), 6 * (0.1 + 0.3)
        assert TAGS | {"train/mfu"} == set(m)
        assert m["train/samples_per_sec"] == pytest.approx(want["samples"] / seconds)
        assert m["train/tokens_per_sec"] == pytest.approx(want["tokens"] / seconds)
        assert m["train/audio_sec_per_sec"] == pytest.approx(want["audio_samples"] / SAMPLE_RATE / seconds)
        assert m["train/padding_ratio"] == pytest.approx(1 - want["tokens"] / want["slots"])
        assert 0 < m["train/padding_ratio"] < 1
        assert m["train/data_wait_ms"] == pytest.approx(100) and m["train/compute_ms"] == pytest.approx(300)
        assert m["train/data_wait_share"] == pytest.approx(0.25)
        assert m["train/tflops_per_sec"] == pytest.approx(want["flops"] / seconds / 1e12)
        assert m["train/mfu"] == pytest.approx(want["flops"] / seconds / 2000)
    want = _expected(batches, config)
    s = cb.summary
    assert (s["batches"], s["steps"], s["samples"], s["tokens"], s["slots"], s["audio_samples"], s["flops"]) == (
        12, 4, want["samples"], want["tokens"], want["slots"], want["audio_samples"], want["flops"])
    assert s["wait_s"] == pytest.approx(1.2) and s["compute_s"] == pytest.approx(3.6)
    assert s["mfu"] == pytest.approx(want["flops"] / 4.8 / 2000) and s["peak_tflops"] == pytest.approx(2e-9)


def test_no_mfu_without_a_peak_and_a_short_last_window(monkeypatch, caplog):
    clock = _Clock()
    monkeypatch.setattr(throughput, "time", clock)
    trainer = _fake_trainer(Recorder(), log_every=4)
    module = SimpleNamespace(model=SimpleNamespace(config=_config(), encoder_frames=_frames))
    cb = Throughput()
    with caplog.at_level(logging.INFO, logger="borealis.throughput"):
        _drive(cb, trainer, module, [_batch(i) for i in range(6)], clock)  # windows: 4 steps, then 2 at the end
    recorder = trainer.loggers[0]
    assert recorder.steps("train/tokens_per_sec") == [3, 6]
    assert not recorder.steps("train/mfu") and cb.summary["mfu"] is None and cb.summary["tflops_per_sec"] > 0
    assert "MFU n/a (unknown peak; set throughput.peak_tflops)" in caplog.text


def test_validation_and_checkpoint_gaps_are_not_data_wait(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(throughput, "time", clock)
    trainer = _fake_trainer(Recorder())
    cb = Throughput()

    def between(i: int) -> None:
        if i == 1:  # a checkpoint save: 5 s, then the fetch
            cb.on_save_checkpoint(trainer, None, {})
            clock.t += 5.0
        if i == 3:  # validation: 7 s, a checkpoint after it
            cb.on_validation_start(trainer, None)
            clock.t += 7.0
            cb.on_validation_end(trainer, None)
            cb.on_save_checkpoint(trainer, None, {})
            clock.t += 3.0

    _drive(cb, trainer, SimpleNamespace(), [_batch(i) for i in range(6)], clock, between=between)
    assert cb.summary["wait_s"] == pytest.approx(0.1 * 4)  # batches 2 and 4 lose their fetch, not more
    assert cb.summary["compute_s"] == pytest.approx(0.3 * 6)
    assert not trainer.loggers[0].steps("train/tflops_per_sec")  # a module without a Borealis config: no FLOPs


def test_one_cuda_sync_per_window(monkeypatch):
    clock, syncs = _Clock(), []
    monkeypatch.setattr(throughput, "time", clock)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    trainer = _fake_trainer(Recorder(), log_every=3, device="cuda")
    cb = Throughput(peak_tflops=989.0)  # given, so Lightning's device table is not asked
    _drive(cb, trainer, SimpleNamespace(model=SimpleNamespace(config=_config())), [_batch(i) for i in range(9)],
           clock)
    assert len(syncs) == 3 and trainer.loggers[0].steps("train/mfu") == [2, 5, 8]


def test_bad_options_are_named_together():
    with pytest.raises(ValueError, match=r"throughput.window must be >= 1.*throughput.peak_tflops must be > 0"):
        Throughput(window=0, peak_tflops=-1.0)


def test_collate_carries_host_side_counts():
    batch = _batch(4)  # rows of 7, 9, 4 tokens; the last is text-only
    assert batch["row_tokens"] == batch["attention_mask"].sum(-1).tolist()
    assert batch["audio_samples"] == batch["audio_lengths"].tolist()
    assert all(type(n) is int for n in batch["row_tokens"] + batch["audio_samples"])
    assert collate([{"input_ids": [1], "labels": [1], "audio": None, "key": "t"}], 0)["audio_samples"] == []


class _Toy(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        loss = self.w(batch["attention_mask"][:, :1].float()).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _slow_collate(items, delay: float):
    time.sleep(delay)  # a loader that cannot keep up
    return collate(items, pad_token_id=0)


def test_a_slow_loader_shows_as_data_wait_in_a_real_trainer(tmp_path):
    delay = 0.15
    items = [{"input_ids": [1] * (3 + i % 4), "labels": [1] * (3 + i % 4), "audio": np.zeros(1600, np.float32),
              "key": str(i)} for i in range(16)]
    loader = torch.utils.data.DataLoader(items, batch_size=2, collate_fn=lambda b: _slow_collate(b, delay))
    recorder, cb = Recorder(), Throughput()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, accumulate_grad_batches=2, log_every_n_steps=2,
                        logger=recorder, callbacks=[cb], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_Toy(), loader)  # 8 batches, 4 optimizer steps, 2 windows
    assert recorder.steps("train/data_wait_ms") == recorder.steps("train/loss") == [1, 3]
    assert all(ms >= 1000 * delay for ms in recorder.values("train/data_wait_ms"))
    assert all(ms < 1000 * delay for ms in recorder.values("train/compute_ms"))  # the fetch is not in it
    s = cb.summary
    assert (s["batches"], s["steps"], s["samples"], s["audio_samples"]) == (8, 4, 16, 16 * 1600)
    assert s["data_wait_share"] > 0.5


@pytest.mark.slow
def test_borealis_fit_writes_the_throughput_tags(tmp_path, tiny_parts):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    enc, llm = tiny_parts
    make_pool(tmp_path / "train", "a", range(16), max_samples=8)
    make_pool(tmp_path / "text", "t", range(8), text_only=True)
    make_pool(tmp_path / "bench", "v", range(100, 102))  # held out from the training ids
    proc = run_cli(
        "fit", "--config", str(Path(__file__).parents[1] / "configs" / "it_fresh.yaml"),
        "--config", str(Path(__file__).parents[1] / "configs" / "demo.yaml"),
        "--model.encoder", str(enc), "--model.llm", str(llm), "--data.augmentation", "null",
        "--model.init_from", "null",  # tiny bases: models/demo/pretrain is the demo bases'
        "--data.train_pools", json.dumps([{"name": "a", "shards": str(tmp_path / "train")}]),
        "--data.text_pool", str(tmp_path / "text"), "--data.text_ratio", "0.3",
        "--data.val_sets", json.dumps({"bench": str(tmp_path / "bench")}),
        "--data.predict.sets", json.dumps({"bench": str(tmp_path / "bench")}),
        "--data.batching", json.dumps({"batch_size": 4, "max_seconds_per_batch": None}),
        "--data.batches_per_epoch", "4", "--data.max_seconds", "2.0", "--data.num_workers", "0",
        "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "2", "--throughput.peak_tflops", "1",
        cwd=tmp_path)
    events = list((tmp_path / "demo" / "runs" / "tb").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert TAGS | {"train/mfu"} <= set(acc.Tags()["scalars"])
    loss_steps = [e.step for e in acc.Scalars("train/loss")]
    assert [e.step for e in acc.Scalars("train/mfu")] == loss_steps == [1, 3]  # one point per window
    for tflops, mfu in zip(acc.Scalars("train/tflops_per_sec"), acc.Scalars("train/mfu")):
        assert mfu.value == pytest.approx(tflops.value / 1.0, rel=1e-5) and mfu.value > 0
    summary = [line for line in proc.stderr.splitlines() if "borealis.throughput" in line]
    assert len(summary) == 1 and "over 4 optimizer steps" in summary[0] and "MFU" in summary[0], proc.stderr[-2000:]


def test_packed_batches_count_samples_tokens_and_attention_per_sample(monkeypatch):
    """The same 6 samples as one padded batch and as one packed batch (3 rows): the same samples,
    tokens, clips and FLOPs, attention charged per sample (sum L_i^2), not per row; padding of R x W."""
    from borealis.data import Batching

    config = _config()
    lengths = [9, 8, 6, 5, 4, 3]  # packed into rows of 12: [9, 3], [8, 4], [6, 5]
    items = [{"input_ids": list(range(n)), "labels": [IGNORE_INDEX] * (n - 2) + [1, 2], "key": f"s{i}",
              "audio": None if i % 2 else np.zeros(800 * (i + 1), dtype=np.float32)} for i, n in enumerate(lengths)]
    (packed_items,) = Batching(pack=True, max_tokens_per_batch=36, max_tokens_per_row=12).cut(items)
    packed, padded = collate(packed_items, pad_token_id=0), collate(items, pad_token_id=0)
    assert packed["input_ids"].shape == (3, 12) and packed["attention_mask"] is None
    assert padded["input_ids"].shape == (6, 9)

    summaries = {}
    for name, batch in (("packed", packed), ("padded", padded)):
        clock = _Clock()
        monkeypatch.setattr(throughput, "time", clock)
        cb = Throughput(peak_tflops=2e-9)
        _drive(cb, _fake_trainer(Recorder(), log_every=1), SimpleNamespace(model=SimpleNamespace(config=config)),
               [batch], clock)
        summaries[name] = cb.summary
    p, u = summaries["packed"], summaries["padded"]
    assert p["samples"] == u["samples"] == 6
    assert p["tokens"] == u["tokens"] == sum(lengths)
    assert p["audio_samples"] == u["audio_samples"] == 800 * (1 + 3 + 5)
    assert p["slots"] == 3 * 12 and u["slots"] == 6 * 9
    assert p["padding_ratio"] == pytest.approx(1 - 35 / 36) and u["padding_ratio"] == pytest.approx(1 - 35 / 54)

    labels = 2 * len(lengths)  # the last two tokens of each sample; packing drops a first label, never labelled here
    want = step_flops(config, lengths, 3, label_tokens=labels)
    per_row = step_flops(config, packed["row_tokens"], 3, label_tokens=labels)
    attention = config.llm_config.num_hidden_layers * 6 * (2 * 2) * sum(n * n for n in lengths)  # heads x head_dim
    assert want.attention == attention and per_row.attention > attention  # rows' squares would overcharge
    assert p["flops"] == u["flops"] == want.total
    bare = {k: v for k, v in packed.items() if k not in ("row_tokens", "seq_tokens", "audio_samples")}
    with pytest.raises(ValueError, match="packed rows.*must carry row_tokens, seq_tokens"):
        Throughput()._counts(bare)  # without the lists, pad tails and sample bounds cannot be told apart
