"""Checkpoints: written atomically, linked as `last`, saved on optimizer steps, configured from the CLI."""

import os
from datetime import timedelta

import lightning as L
import pytest
import torch
from borealis.testing import make_pool

from borealis import checkpointing
from borealis.checkpointing import AtomicCheckpointIO, Checkpoint
from borealis.cli import BorealisCLI
from borealis.data import Batching, BorealisDataModule, Pool
from borealis.modeling import LoraSettings
from borealis.module import BorealisLightningModule


def test_crash_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def crash(checkpoint, f):  # half a checkpoint reaches the disk, then the writer dies
        torch.save(checkpoint, f)
        f.truncate(f.tell() // 2)
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpointing, "_write", crash)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    again = io.load_checkpoint(path)
    assert again["global_step"] == 1 and torch.equal(again["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_last_link_is_replaced_atomically(tmp_path):
    class Trainer:
        is_global_zero = True
        strategy = type("S", (), {"barrier": staticmethod(lambda *a: None)})()

    for name in ("a.ckpt", "b.ckpt"):
        torch.save({"name": name}, tmp_path / name)
    (tmp_path / "last.ckpt").write_bytes(b"an old regular file")
    for name in ("a.ckpt", "b.ckpt"):
        Checkpoint._link_checkpoint(Trainer(), str(tmp_path / name), str(tmp_path / "last.ckpt"))
        assert torch.load(tmp_path / "last.ckpt", weights_only=True)["name"] == name
    assert os.readlink(tmp_path / "last.ckpt") == "b.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "last.ckpt"]


def test_last_checkpoint_holds_the_final_step(tmp_path, tiny_parts):
    enc, llm = tiny_parts
    make_pool(tmp_path / "a", "a", range(30), max_samples=6)
    module = BorealisLightningModule(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    dm = BorealisDataModule(train_pools=[Pool("a", str(tmp_path / "a"))], batching=Batching(batch_size=2),
                            batches_per_epoch=6, num_workers=0, max_seconds=2.0, prompt_builder=module.prompt_builder)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                        callbacks=[Checkpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=4)])
    trainer.fit(module, datamodule=dm)
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 6  # not 4


def test_time_triggered_saves_wait_for_an_optimizer_step(monkeypatch):
    calls = []
    monkeypatch.setattr(L.pytorch.callbacks.ModelCheckpoint, "on_train_batch_end",
                        lambda self, trainer, *a: calls.append(trainer.global_step))
    trainer = type("T", (), {"global_step": 0})()
    cb = Checkpoint(train_time_interval=timedelta(0))
    cb._step_seen = 0
    for step in (0, 0, 1, 1, 1, 2):  # accumulate_grad_batches 3 after a first step of 2 batches
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, None, None, 0)
    assert calls == [1, 2]


def test_help_documents_checkpoint_options(capsys):
    with pytest.raises(SystemExit):
        BorealisCLI(BorealisLightningModule, BorealisDataModule, args=["fit", "--help"], save_config_callback=None,
                    auto_configure_optimizers=False)
    out = capsys.readouterr().out
    assert "--checkpoint.every_n_train_steps" in out and "--checkpoint.train_time_interval" in out
    assert "--model.max_skipped_steps" in out


def test_save_every_n_steps_shortcut(tiny_parts):
    enc, llm = tiny_parts
    cli = BorealisCLI(BorealisLightningModule, BorealisDataModule, run=False, save_config_callback=None,
                      auto_configure_optimizers=False,
                      args=["--model.encoder", str(enc), "--model.llm", str(llm), "--trainer.accelerator", "cpu",
                            "--trainer.logger", "false", "--save_every_n_steps", "7"])
    (ckpt,) = [c for c in cli.trainer.callbacks if isinstance(c, Checkpoint)]
    assert ckpt._every_n_train_steps == 7
