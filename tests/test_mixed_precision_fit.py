"""MasterWeights inside a real `Trainer.fit` at `precision="bf16-mixed"` (CPU, tiny models).

`BorealisLightningModule` wires `mixed_precision.MasterWeights` in under bf16-mixed with LoRA:
the LoRA factors and the adapter's linears live in bf16 in the model, AdamW steps float32
masters (gradients copied over after backward, clipped there, rounded back after the step),
and checkpoints hold the masters. Four steps (2 epochs x 2 micro-batches, accumulate 1)
uninterrupted, against 2 steps, a stop at the end of epoch 0 and a resume from that epoch's
checkpoint: the resumed run must end bit for bit where the uninterrupted one does, which it
only can if the checkpoint carries the float32 masters (not their bf16 rounding) and the
optimizer state that belongs to them. (The float32-weights trajectory, outside Lightning:
tests/test_mixed_precision.py.)
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from borealis.data.batching import collate
from borealis.mixed_precision import linear_only_parameters
from borealis.modeling import LoraSettings
from borealis.module import BorealisLightningModule
from test_loss_normalisation import RankBatches, _items


class _StopAfterFirstEpoch(L.Callback):
    """Ends the fit after epoch 0 (its checkpoint is written), as an interrupted run would."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = True


def _fit(tiny_parts, tmp_path, name: str, *, stop: bool = False, ckpt_path=None):
    """A bf16-mixed fit of 2 epochs x 2 micro-batches; (module, trainer)."""
    enc, llm = tiny_parts
    torch.manual_seed(0)
    module = BorealisLightningModule(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                     whisper_baseline=False, warmup_steps=0, learning_rate=1e-2,
                                     report_dir=str(tmp_path / name))
    items = _items(module)
    pad = module.prompt_builder.pad_token_id
    batches = [collate(items[:2], pad), collate(items[2:], pad)]
    callbacks = [ModelCheckpoint(dirpath=tmp_path / name / "ckpt", save_top_k=-1)]  # one per epoch end
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_epochs=2, gradient_clip_val=1.0,
                        logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=tmp_path / name,
                        callbacks=callbacks + ([_StopAfterFirstEpoch()] if stop else []))
    trainer.fit(module, datamodule=RankBatches([batches]), ckpt_path=ckpt_path)
    return module, trainer


def _initial_masters(tiny_parts) -> list[torch.Tensor]:
    """The float32 weights the masters start from, in `MasterWeights`' order."""
    enc, llm = tiny_parts
    torch.manual_seed(0)
    module = BorealisLightningModule(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                     whisper_baseline=False)
    module.configure_model()  # no trainer: no master weights, every trainable weight float32
    return [p.detach().clone() for _, p in linear_only_parameters(module.model)]


def test_bf16_mixed_fit_steps_float32_masters_and_resumes_bit_exactly(tiny_parts, tmp_path):
    stopped, trainer = _fit(tiny_parts, tmp_path, "stopped", stop=True)
    assert trainer.global_step == 2
    mw = stopped.master_weights
    assert mw is not None and len(mw.params) == 14 * 2 + 2  # LoRA A and B of 14 layers, the adapter's w_in, w_out
    trainable = {id(p): (n, p) for n, p in stopped.model.named_parameters() if p.requires_grad}
    stored = {trainable[id(p)][0] for p in mw.params}  # the model's own parameters
    assert all(p.dtype == torch.bfloat16 for p in mw.params)  # stored in bf16 in the model
    assert stored == {n for n, _ in trainable.values()}  # every trainable weight here is a linear's:
    assert all("lora_" in n or "adapter.w_" in n for n in stored)  # LoRA's A and B, the adapter's w_in and w_out

    optimizer = trainer.optimizers[0]
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    master_ids = {id(m) for m in mw.masters}
    assert master_ids <= {id(p) for p in stepped}  # AdamW holds the masters ...
    assert not {id(p) for p in mw.params} & {id(p) for p in stepped}  # ... and none of the bf16 weights
    assert all(p.dtype == torch.float32 for p in stepped)
    assert all(optimizer.state[m]["exp_avg"].dtype == torch.float32 and int(optimizer.state[m]["step"]) == 2
               for m in mw.masters)
    for name, p, m in zip(mw.names, mw.params, mw.masters):
        assert torch.equal(p, m.to(torch.bfloat16)), name  # the weights are the masters rounded
    assert any(not torch.equal(m, m.to(torch.bfloat16).float()) for m in mw.masters)  # finer than bf16
    assert sum(not torch.equal(m, m0) for m, m0 in zip(mw.masters, _initial_masters(tiny_parts))) >= 14  # moved

    ckpt = tmp_path / "stopped" / "ckpt" / "epoch=0-step=2.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for name, m in mw.state().items():
        assert state[name].dtype == torch.float32 and torch.equal(state[name], m), name  # the masters, exactly

    full, full_trainer = _fit(tiny_parts, tmp_path, "full")
    resumed, resumed_trainer = _fit(tiny_parts, tmp_path, "stopped", ckpt_path=ckpt)
    assert full_trainer.global_step == resumed_trainer.global_step == 4
    assert resumed.master_weights.names == full.master_weights.names
    for name, a, b in zip(full.master_weights.names, full.master_weights.masters, resumed.master_weights.masters):
        assert torch.equal(b, a), name  # bit for bit
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        if a.requires_grad:
            assert b.dtype == a.dtype and torch.equal(b, a), name
    assert any(not torch.equal(a, b) for a, b in zip(full.master_weights.masters, mw.masters))  # epoch 1 trained
