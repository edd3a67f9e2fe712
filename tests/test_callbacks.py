"""Callbacks: non-finite steps skipped and counted, RNG states saved and restored, prediction files
written, the sample log cut back on resume. (The curriculum's scheduler: tests/test_curriculum.py.)"""

import io
import json
import logging
import random
from collections import deque
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from borealis.testing import make_pool

from borealis.callbacks import NonFiniteSteps, PredictionWriter, RngState, SampleLog
from borealis.callbacks.rng_state import rng_state, set_rng_state
from borealis.checkpointing import AtomicCheckpointIO, Checkpoint
from borealis.data import Batching, BorealisDataModule, Pool
from borealis.modeling import LoraSettings
from borealis.module import BorealisLightningModule


# ---------------------------------------------------------------------------- non-finite steps
class Poison(L.Callback):
    """NaN waveforms in the chosen batches; records the trainable weights around every step."""

    def __init__(self, batches):
        self.batches, self.changed, self.keys = set(batches), {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx in self.batches:
            batch["waveforms"][:] = float("nan")
            self.keys[batch_idx] = list(batch["keys"])
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        self.steps_before = self._adam_steps(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        after = {n: p.detach() for n, p in pl_module.named_parameters() if p.requires_grad}
        self.changed[batch_idx] = (any(not torch.equal(after[n], self.before[n]) for n in after),
                                   self._adam_steps(trainer) != self.steps_before)

    @staticmethod
    def _adam_steps(trainer):
        opt = trainer.optimizers[0]
        return [float(opt.state[p]["step"]) if "step" in opt.state[p] else None
                for g in opt.param_groups for p in g["params"]]


def _fit_with_poison(tmp_path, tiny_parts, batches, **model_kw):
    enc, llm = tiny_parts
    make_pool(tmp_path / "a", "a", range(30), max_samples=6)
    torch.manual_seed(0)
    module = BorealisLightningModule(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                     learning_rate=1e-2, warmup_steps=0, **model_kw)
    dm = BorealisDataModule(train_pools=[Pool("a", str(tmp_path / "a"))], batching=Batching(batch_size=2),
                            batches_per_epoch=6, shuffle_buffer=4, num_workers=0, max_seconds=2.0,
                            prompt_builder=module.prompt_builder)
    poison = Poison(batches)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        callbacks=[poison])
    return module, trainer, dm, poison


def test_nonfinite_step_is_skipped_counted_and_logged(tmp_path, tiny_parts, caplog):
    module, trainer, dm, poison = _fit_with_poison(tmp_path, tiny_parts, [2])
    with caplog.at_level(logging.WARNING, logger="borealis.callbacks.nonfinite"):
        trainer.fit(module, datamodule=dm)
    assert poison.changed[2] == (False, False), "the poisoned step changed weights or AdamW state"
    assert all(poison.changed[i] == (True, True) for i in (0, 1, 3, 4, 5))
    assert module.non_finite_steps.skipped_total == 1 and trainer.callback_metrics["train/skipped_steps"] == 1
    assert trainer.global_step == 6  # the skipped step still counts, and moves the LR schedule
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 6
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert "optimizer step 2 skipped" in caplog.text and all(k in caplog.text for k in poison.keys[2])


def test_too_many_skips_stop_the_run_naming_the_keys(tmp_path, tiny_parts):
    module, trainer, dm, poison = _fit_with_poison(tmp_path, tiny_parts, [1, 2, 4], max_skipped_steps=2,
                                                   skipped_steps_window=10)
    with pytest.raises(RuntimeError, match=r"3 of the last 10 optimizer steps .*max_skipped_steps=2") as err:
        trainer.fit(module, datamodule=dm)
    assert all(k in str(err.value) for i in (1, 2, 4) for k in poison.keys[i])
    assert 5 not in poison.changed  # stopped at the third skip


class RankPoison(L.Callback):
    """NaN waveforms in batch `batch` of rank `rank`, for each (rank, batch); the keys go to a file."""

    def __init__(self, out, where):
        self.out, self.where = out, set(where)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.global_rank, batch_idx) in self.where:
            batch["waveforms"][:] = float("nan")
            with open(f"{self.out}/poisoned.rank{trainer.global_rank}", "a") as f:
                f.write(" ".join(batch["keys"]) + "\n")


@pytest.mark.slow
def test_ranks_skip_together_and_the_abort_names_every_ranks_keys(tmp_path, tiny_parts):
    """Two CPU ranks (DDP over gloo): one decision for both, checkpoints hold both ranks' RNG."""
    module, _, dm, _ = _fit_with_poison(tmp_path, tiny_parts, [], max_skipped_steps=1)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
                        callbacks=[RankPoison(str(tmp_path), [(0, 1), (1, 3)]),
                                   Checkpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1)])
    with pytest.raises(Exception, match=r"2 of the last 100 optimizer steps") as err:
        trainer.fit(module, datamodule=dm)
    poisoned = [(tmp_path / f"poisoned.rank{r}").read_text().split() for r in (0, 1)]
    assert all(k in str(err.value) for keys in poisoned for k in keys)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["borealis"]["skipped_steps"] == 1
    assert len(ckpt["borealis"]["rng"]) == 2


def test_skip_settings_are_checked():
    with pytest.raises(ValueError, match=r"max_skipped_steps must be >= 0 .* got -1 and 100"):
        NonFiniteSteps(max_skipped=-1)
    with pytest.raises(ValueError, match=r"skipped_steps_window >= 1"):
        NonFiniteSteps(window=0)


def test_skip_counters_travel_in_the_checkpoint():
    cb = NonFiniteSteps()
    cb.skipped_total, cb.skips = 3, deque([(7, ["a", "b"]), (9, ["c"])])
    fit = SimpleNamespace(state=SimpleNamespace(fn="fit"))
    checkpoint = {"borealis": {"rng": ["kept"]}}
    cb.on_save_checkpoint(fit, None, checkpoint)
    assert checkpoint["borealis"] == {"rng": ["kept"], "skipped_steps": 3, "skips": [[7, ["a", "b"]], [9, ["c"]]]}
    again = NonFiniteSteps()
    again.on_load_checkpoint(fit, None, checkpoint)
    assert again.skipped_total == 3 and list(again.skips) == [(7, ["a", "b"]), (9, ["c"])]
    validate = SimpleNamespace(state=SimpleNamespace(fn="validate"))
    untouched: dict = {}
    cb.on_save_checkpoint(validate, None, untouched)
    assert untouched == {}


# ---------------------------------------------------------------------------- RNG state
def _draws(module) -> list:
    return [torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist(),
            torch.rand(2, generator=module.mask_generator).tolist()]


def test_rng_states_round_trip_every_generator():
    module = SimpleNamespace(device=torch.device("cpu"), mask_generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's legacy state
    state = rng_state(module)
    want = _draws(module)
    fresh = SimpleNamespace(device=torch.device("cpu"), mask_generator=None)
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    set_rng_state(fresh, state)
    assert _draws(fresh) == want
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["numpy"]["pos"] == state["numpy"]["pos"]  # plain types only


def test_rng_states_restore_at_train_start_only_for_the_same_world_size(caplog):
    module = SimpleNamespace(device=torch.device("cpu"), mask_generator=None)
    torch.manual_seed(4)
    state = rng_state(module)
    want = torch.rand(2)
    trainer = SimpleNamespace(world_size=1, global_rank=0, state=SimpleNamespace(fn="fit"))
    cb = RngState()
    cb.on_load_checkpoint(trainer, module, {"borealis": {"rng": [state]}})
    torch.manual_seed(0)
    cb.on_train_start(trainer, module)
    assert torch.equal(torch.rand(2), want)
    cb.on_load_checkpoint(trainer, module, {"borealis": {"rng": [state, state]}})  # saved by 2 ranks
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="borealis.callbacks.rng_state"):
        cb.on_train_start(trainer, module)
    assert "RNG states of 2 rank(s), this run has 1" in caplog.text
    assert torch.equal(torch.rand(2), torch.rand(2, generator=torch.Generator().manual_seed(0)))  # left alone


# ---------------------------------------------------------------------------- prediction files
class _Windows:
    def file_rows(self, texts):
        return [{"file": "a.wav", "prediction": " ".join(texts[k] for k in sorted(texts))},
                {"file": "b.wav", "error": "silent", "detail": "b.wav: silent"}]


def test_prediction_writer_writes_real_rows_and_merged_files(tmp_path):
    trainer = SimpleNamespace(global_rank=1, log_dir=None, default_root_dir=str(tmp_path), datamodule=None)
    writer = PredictionWriter(str(tmp_path / "reports"))
    path = tmp_path / "reports" / "predictions.rank1.jsonl"
    path.parent.mkdir()
    path.write_text("stale\n")
    writer.on_predict_start(trainer, None)
    assert not path.exists()
    shard_batch = {"keys": ["k0", "k1", "k0"], "references": ["ref", None, "ref"],
                   "is_pad": torch.tensor([False, False, True]), "windows": [None, None, None]}
    writer.write_on_batch_end(trainer, None, ["h0", "h1", "pad"], None, shard_batch, 0, 0)
    window_batch = {"keys": ["a#0", "a#1", "a#0"], "references": [None] * 3,
                    "is_pad": torch.tensor([False, False, True]),
                    "windows": [(0, 0, 0, 10), (0, 1, 10, 20), (0, 0, 0, 10)]}
    writer.write_on_batch_end(trainer, None, ["one", "two", "pad"], None, window_batch, 0, 1)
    trainer.datamodule = SimpleNamespace(windows=_Windows())
    writer.on_predict_end(trainer, None)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"key": "k0", "prediction": "h0", "reference": "ref"}, {"key": "k1", "prediction": "h1"},
                    {"file": "a.wav", "prediction": "one two"},
                    {"file": "b.wav", "error": "silent", "detail": "b.wav: silent"}]


# ---------------------------------------------------------------------------- sample log
def test_sample_log_is_cut_back_to_the_resumed_step(tmp_path):
    trainer = SimpleNamespace(global_rank=0, world_size=1, default_root_dir=str(tmp_path), global_step=0,
                              current_epoch=0)
    log = SampleLog("samples.rank{rank}.jsonl")
    log.on_train_start(trainer, None)
    for step, keys in enumerate([["a"], ["b"], ["c"]]):
        trainer.global_step = step
        log.on_train_batch_start(trainer, None, {"keys": keys}, step)
        log.on_train_batch_end(trainer, None, None, {"keys": keys}, step)
    trainer.global_step = 2  # resumed from the checkpoint of step 2: step 2's batch trains again
    SampleLog("samples.rank{rank}.jsonl").on_train_start(trainer, None)
    rows = [json.loads(line) for line in (tmp_path / "samples.rank0.jsonl").read_text().splitlines()]
    assert [(r["step"], r["keys"]) for r in rows] == [(0, ["a"]), (1, ["b"])]
    with pytest.raises(ValueError, match=r"needs a \{rank\} placeholder with 2 ranks"):
        SampleLog("samples.jsonl").on_train_start(SimpleNamespace(world_size=2, global_rank=0), None)
