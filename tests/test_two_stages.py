"""The seed's two stages at tiny scale on CPU: an ASR pretrain (stage 1), then instruction tuning that
starts from it through `model.init_from` (stage 2).

Stage 2 must start from exactly stage 1's trainable weights (adapter + LoRA, as its checkpoint holds
them), on the flagship's bfloat16 base; and the seed's own pretrain, whose code fine-tuned the whole
LLM, must load as a pretrain too: its LLM weights into the frozen base LLM, with LoRA fresh on top.
The subprocess run of the shipped configs (`configs/pretrain.yaml`, then `configs/it_fresh.yaml` +
an overlay with `--model.init_from`) is marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from borealis.testing import make_pool, run_cli

from borealis.data import Batching, BorealisDataModule, Pool
from borealis.modeling import LoraSettings
from borealis.module import BorealisLightningModule

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)
CONFIG_DIR = Path(__file__).parents[1] / "configs"


def _module(tiny_parts, **kw) -> BorealisLightningModule:
    enc, llm = tiny_parts
    settings = dict(lora=LORA, base_dtype="bfloat16", learning_rate=1e-2, warmup_steps=0, trim_audio_tokens=False)
    return BorealisLightningModule(str(enc), str(llm), **{**settings, **kw})  # as it_fresh: bf16 base, every window slot


def _fit(module, pools, tmp_path, callbacks=(), text_pool=None) -> L.Trainer:
    dm = BorealisDataModule(train_pools=pools, text_pool=text_pool, text_ratio=0.25 if text_pool else 0.0,
                            batching=Batching(batch_size=2), batches_per_epoch=3, shuffle_buffer=4, num_workers=0,
                            max_seconds=2.0, prompt_builder=module.prompt_builder)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path, callbacks=list(callbacks))
    trainer.fit(module, datamodule=dm)
    return trainer


def _trainable(module) -> dict[str, torch.Tensor]:
    """The trainable weights as the optimizer holds them: under bf16-mixed with LoRA the fp32
    masters (`mixed_precision.MasterWeights`) stand for the bf16 weights the model computes with."""
    names = set(module.model.trainable_parameter_names())
    weights = {k: v.detach().clone() for k, v in module.model.state_dict().items() if k in names}
    if getattr(module, "master_weights", None) is not None:
        weights.update({k.removeprefix("model."): v.detach().clone() for k, v in module.master_weights.state().items()})
    return weights


class FirstStep(L.Callback):
    """The trainable weights as training starts, before the first optimizer step."""

    def on_train_start(self, trainer, pl_module):
        self.weights = _trainable(pl_module)


def test_stage_two_starts_from_exactly_stage_ones_trainable_weights(tiny_parts, tmp_path):
    make_pool(tmp_path / "asr", "asr", range(24), max_samples=6)  # stage 1: plain ASR
    make_pool(tmp_path / "text", "t", range(12), text_only=True)  # stage 2 adds text-only chats
    torch.manual_seed(0)
    stage1 = _module(tiny_parts)
    trainer = _fit(stage1, [Pool("asr", str(tmp_path / "asr"))], tmp_path)
    trainer.save_checkpoint(tmp_path / "stage1.ckpt")  # what `borealis fit` writes: trainable weights only
    saved = {k.removeprefix("model."): v for k, v in
             torch.load(tmp_path / "stage1.ckpt", map_location="cpu", weights_only=True)["state_dict"].items()}
    assert set(saved) == set(stage1.model.trainable_parameter_names())
    assert all(v.dtype == torch.float32 for v in saved.values())  # trainable weights train in fp32
    torch.manual_seed(1)
    fresh = _module(tiny_parts)
    fresh.configure_model()
    assert any(not torch.equal(saved[k], v) for k, v in _trainable(fresh).items())  # stage 1 did train

    torch.manual_seed(2)  # another seed: nothing may come from the fresh init
    stage2 = _module(tiny_parts, init_from=str(tmp_path / "stage1.ckpt"))
    first = FirstStep()
    _fit(stage2, [Pool("asr", str(tmp_path / "asr"))], tmp_path, callbacks=[first], text_pool=str(tmp_path / "text"))
    assert set(first.weights) == set(saved)
    for k, v in saved.items():  # exactly: bit for bit, in fp32, on the bfloat16 base
        assert first.weights[k].dtype == v.dtype and torch.equal(first.weights[k], v), k
    assert any(not torch.equal(saved[k], v) for k, v in _trainable(stage2).items())  # and stage 2 trains on


def test_the_seeds_full_llm_pretrain_loads_into_the_base_with_fresh_lora(tiny_parts, tmp_path):
    """The seed's code fine-tuned the whole LLM in its pretrain: its state dict holds the adapter and
    every `llm.*` weight under the seed's names, no LoRA. As init_from it replaces the frozen base
    LLM (at base_dtype), and LoRA starts fresh on top of it."""
    torch.manual_seed(3)
    seed = _module(tiny_parts, lora=None)  # the seed's pretrain: no LoRA, the LLM trained in full
    seed.configure_model()
    with torch.no_grad():
        for p in seed.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)  # as after training: every LLM and adapter weight moved
    state = {k: v.clone() for k, v in seed.model.state_dict().items() if not k.startswith("encoder.")}
    assert any(k.startswith("llm.model.layers.0.self_attn.q_proj.weight") for k in state)  # the seed's names
    assert not any(".lora_" in k for k in state)
    torch.save({"state_dict": state}, tmp_path / "seed_pretrain.pt")

    torch.manual_seed(4)
    fresh = _module(tiny_parts)
    fresh.configure_model()
    torch.manual_seed(4)
    stage2 = _module(tiny_parts, init_from=str(tmp_path / "seed_pretrain.pt"))
    stage2.configure_model()
    got, before = stage2.model.state_dict(), fresh.model.state_dict()
    trainable = set(stage2.model.trainable_parameter_names())
    for k, v in state.items():
        if k.startswith("llm.") and k not in trainable:  # the frozen base LLM is the pretrain's, at base_dtype
            assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], v.to(torch.bfloat16)), k
        else:
            assert torch.equal(got[k], v), k  # the adapter, exactly
    lora = [k for k in trainable if ".lora_" in k]
    assert lora and all(torch.equal(got[k], before[k]) for k in lora)  # LoRA fresh, as a run without init_from
    assert all(not p.requires_grad for n, p in stage2.model.llm.named_parameters() if "lora_" not in n)
    assert all(torch.equal(got[k], before[k]) for k in got if k.startswith("encoder."))  # Whisper's encoder


def _tiny_overrides(tiny_parts, root: Path) -> list[str]:
    """The shipped configs on the tiny parts and pools, one CPU process, a few steps."""
    enc, llm = tiny_parts
    return ["--model.encoder", str(enc), "--model.llm", str(llm), "--model.max_new_tokens", "4",
            "--model.warmup_steps", "0", "--model.learning_rate", "0.01",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
            "--trainer.accumulate_grad_batches", "1", "--trainer.max_epochs", "1",
            "--data.train_pools", json.dumps([{"name": "asr", "shards": str(root / "asr")}]),
            "--data.val_sets", json.dumps({"bench": str(root / "bench")}),
            "--data.batching", json.dumps({"batch_size": 2}), "--data.val_batching", json.dumps({"batch_size": 4}),
            "--data.batches_per_epoch", "3", "--data.shuffle_buffer", "4", "--data.min_seconds", "0.1",
            "--data.max_seconds", "2.0", "--data.num_workers", "0"]


@pytest.mark.slow
def test_pretrain_then_instruction_tuning_through_the_cli(tiny_parts, tmp_path, monkeypatch):
    """README's path: `borealis fit --config configs/pretrain.yaml`, then `borealis fit --config
    configs/it_fresh.yaml --config configs/ablations/ru_text_10pct.yaml --model.init_from
    runs/pretrain/checkpoints/last.ckpt`, each with the tiny overrides."""
    from borealis.cli import BorealisCLI

    make_pool(tmp_path / "asr", "asr", range(24), max_samples=6)
    make_pool(tmp_path / "text", "t", range(12), text_only=True)
    make_pool(tmp_path / "bench", "v", range(100, 104))
    for pool in ("noise", "ir"):  # it_fresh's augmentation curriculum reads shards/noise/* and shards/ir/*
        make_pool(tmp_path / "shards" / pool / "p", pool, range(4))
    common = _tiny_overrides(tiny_parts, tmp_path)
    run_cli("fit", "--config", str(CONFIG_DIR / "pretrain.yaml"), *common, cwd=tmp_path)
    stage1 = tmp_path / "runs" / "pretrain" / "checkpoints" / "last.ckpt"
    saved = {k.removeprefix("model."): v for k, v in
             torch.load(stage1, map_location="cpu", weights_only=True)["state_dict"].items()}

    stage2 = ["--config", str(CONFIG_DIR / "it_fresh.yaml"), "--config", str(CONFIG_DIR / "ablations" / "ru_text_10pct.yaml"),
              *common, "--data.text_pool", str(tmp_path / "text"), "--model.init_from", "runs/pretrain/checkpoints/last.ckpt"]
    run_cli("fit", *stage2, cwd=tmp_path)
    hparams = torch.load(tmp_path / "runs" / "ru_text_10pct" / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=True)["hyper_parameters"]
    assert hparams["init_from"] == "runs/pretrain/checkpoints/last.ckpt"

    monkeypatch.chdir(tmp_path)  # init_from is relative to the run's folder, as on the command line
    cli = BorealisCLI(BorealisLightningModule, BorealisDataModule, run=False, args=stage2,
                      save_config_callback=None, auto_configure_optimizers=False)
    cli.model.configure_model()  # the model stage 2's fit built, before its first step
    assert cli.model.hparams.base_dtype == "bfloat16" and cli.model.hparams.trim_audio_tokens is False
    start = _trainable(cli.model)
    assert set(start) == set(saved) and all(torch.equal(start[k], v) for k, v in saved.items())
