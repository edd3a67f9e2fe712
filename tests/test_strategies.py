"""`borealis.strategies.BorealisFSDPStrategy`: the FSDP overlay parses onto the flagship, and
`borealis fit` runs under it on 2 CPU ranks (gloo) through the real CLI in a subprocess.

The 2-rank run checks what FSDP must do here: the Whisper and Qwen3 layers are the FSDP
units and the Qwen3 layers are checkpointed; AdamW holds the trainable parameters only; both
ranks run the same number of optimizer steps; last.ckpt holds exactly the trainable weights
(gathered in full, no frozen base); `--ckpt_path last` resumes them exactly under FSDP;
the fit validates under FSDP (every rank generates in step, `generate(synced_gpus=True)`: a rank
that ran fewer forwards of the sharded layers would deadlock the others) and trains on after it;
and `borealis validate` reads the FSDP checkpoint on one process. ~50 s on 2 cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from borealis.testing import make_pool, run_cli
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

from borealis.cli import BorealisCLI
from borealis.data import BorealisDataModule
from borealis.module import BorealisLightningModule
from borealis.strategies import BorealisFSDPPrecision, BorealisFSDPStrategy, _check_dtypes

REPO = Path(__file__).resolve().parents[1]
OVERLAY = REPO / "configs" / "distributed" / "fsdp.yaml"


class DumpFSDPRank(L.Callback):
    """Test helper (loaded by the subprocess from tests/): at train start and end each rank
    saves its step, how the model was wrapped, what AdamW holds, the full trainable
    weights (gathered from the shards), keyed by checkpoint name, and the validation steps
    it ran inside the fit (sanity check excluded) with the last `val/wer_avg`."""

    def __init__(self, folder: str, tag: str) -> None:
        self.folder, self.tag = folder, tag
        self.val_batches, self.val_wer = 0, None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_batches += not trainer.sanity_checking

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_wer = float(trainer.callback_metrics["val/wer_avg"])

    def _dump(self, trainer, pl_module, when: str) -> None:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = trainer.strategy.model
        inner = [m._fsdp_wrapped_module for m in root.modules() if isinstance(m, FSDP)]
        units = sorted(type(getattr(m, "_checkpoint_wrapped_module", m)).__name__ for m in inner)
        checkpointed = sorted(type(m._checkpoint_wrapped_module).__name__ for m in root.modules()
                              if isinstance(m, CheckpointWrapper))
        trainable = [p for p in pl_module.model.parameters() if p.requires_grad]
        optimized = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        with FSDP.summon_full_params(root):
            weights = {f"model.{n}": p.detach().clone()
                       for n, p in zip(pl_module.model.trainable_parameter_names(), trainable)}
            total = sum(p.numel() for p in pl_module.model.parameters())
        torch.save({"global_step": trainer.global_step, "world_size": trainer.world_size,
                    "strategy": type(trainer.strategy).__name__, "units": units, "checkpointed": checkpointed,
                    "optimizer_is_trainable": {id(p) for p in optimized} == {id(p) for p in trainable},
                    "weights": weights, "total_numel": total, "val_batches": self.val_batches,
                    "val_wer": self.val_wer},
                   Path(self.folder) / f"{self.tag}-{when}-rank{trainer.global_rank}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module, "start")

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module, "end")


def test_fsdp_overlay_parses_onto_the_flagship(tiny_parts):
    enc, llm = tiny_parts
    cli = BorealisCLI(BorealisLightningModule, BorealisDataModule, run=False,
                      args=["--config", str(REPO / "configs" / "it_fresh.yaml"), "--config", str(OVERLAY),
                            "--model.encoder", str(enc), "--model.llm", str(llm), "--trainer.accelerator", "cpu",
                            "--trainer.devices", "1", "--trainer.logger", "false"],
                      save_config_callback=None, auto_configure_optimizers=False)
    strategy = cli.trainer.strategy
    assert type(strategy) is BorealisFSDPStrategy
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {WhisperEncoderLayer, Qwen3DecoderLayer}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Qwen3DecoderLayer}
    assert strategy.kwargs["use_orig_params"] is True and strategy._state_dict_type == "full"
    assert isinstance(strategy.precision_plugin, BorealisFSDPPrecision)
    mixed = strategy.mixed_precision_config  # bf16 compute, fp32 buffers (the log-mel fails on bf16 ones)
    assert (mixed.param_dtype, mixed.buffer_dtype) == (torch.bfloat16, torch.float32)
    assert cli.model.hparams.base_dtype == "float32"  # one dtype per FSDP unit
    assert cli.trainer.gradient_clip_val == 1.0 and cli.model.hparams.learning_rate == 1e-5  # the flagship stays


def test_mixed_dtypes_name_the_setting():
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    model.weight.requires_grad_(False)
    model.bias = torch.nn.Parameter(torch.zeros(2))  # trainable fp32 beside the frozen bf16 base
    with pytest.raises(ValueError, match=r"model\.base_dtype: float32"):
        _check_dtypes(model)


def test_wrap_layers_must_be_modules():
    with pytest.raises(ValueError, match=r"wrap_layers: <class 'int'> is not a torch.nn.Module"):
        BorealisFSDPStrategy(wrap_layers=[int])


@pytest.mark.slow
def test_fsdp_on_two_cpu_ranks(tmp_path, tiny_parts):
    enc, llm = tiny_parts
    make_pool(tmp_path / "train", "a", range(30), max_samples=10)
    make_pool(tmp_path / "bench", "v", range(100, 111), max_samples=4)  # held out from the training ids
    for pool in ("noise", "ir"):
        make_pool(tmp_path / "demo" / "shards" / pool, pool, range(4))
    (tmp_path / "dumps").mkdir()
    model = ["--model.encoder", str(enc), "--model.llm", str(llm), "--model.init_from", "null", "--model.max_new_tokens", "4",
             "--model.lora", json.dumps({"r": 4, "alpha": 8, "dropout": 0.0}),  # frozen base + LoRA in one unit
             "--model.freeze_encoder", "true"]
    data = ["--data.train_pools", json.dumps([{"name": "a", "shards": str(tmp_path / "train")}]),
            "--data.text_pool", "null", "--data.text_ratio", "0",
            "--data.val_sets", json.dumps({"bench": str(tmp_path / "bench")}),
            "--data.batching", json.dumps({"batch_size": 3}), "--data.val_batching", json.dumps({"batch_size": 2}),
            "--data.max_seconds", "2.0", "--data.num_workers", "1", "--data.batches_per_epoch", "3"]
    demo = ["--config", str(REPO / "configs" / "it_fresh.yaml"), "--config", str(REPO / "configs" / "demo.yaml")]
    fsdp = [*demo, "--config", str(OVERLAY), *model, *data, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--trainer.callbacks+=test_strategies.DumpFSDPRank", "--trainer.callbacks.folder", str(tmp_path / "dumps")]

    def fit(tag: str, epochs: int, *extra: str) -> list[dict]:
        run_cli("fit", *fsdp, "--trainer.callbacks.tag", tag, "--trainer.max_epochs", str(epochs), *extra,
                cwd=tmp_path, pythonpath=str(REPO / "tests"), interpreter=True)  # rank 1: the command line re-run
        return [{when: torch.load(tmp_path / "dumps" / f"{tag}-{when}-rank{r}.pt", weights_only=True)
                 for when in ("start", "end")} for r in (0, 1)]

    first = fit("first", 1)  # bf16-mixed as the overlay ships it, on gloo
    for rank in first:
        end = rank["end"]
        assert (end["strategy"], end["world_size"], end["global_step"]) == ("BorealisFSDPStrategy", 2, 3)
        assert end["units"] == ["BorealisLightningModule", "Qwen3DecoderLayer", "Qwen3DecoderLayer",
                                "WhisperEncoderLayer", "WhisperEncoderLayer"]  # the root + one unit per layer
        assert end["checkpointed"] == ["Qwen3DecoderLayer", "Qwen3DecoderLayer"]
        assert end["optimizer_is_trainable"]
        # 11 clips in batches of 2: 6 batches, 3 per rank; rank 1's last holds 1 clip, rank 0's 2
        assert end["val_batches"] == 3 and math.isfinite(end["val_wer"])
    weights = first[0]["end"]["weights"]
    assert any(not torch.equal(v, first[0]["start"]["weights"][k]) for k, v in weights.items())  # it trained

    ckpt_path = tmp_path / "demo" / "runs" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    state = ckpt["state_dict"]
    assert set(state) == set(weights)  # trainable only, gathered under their unwrapped names
    assert all(".lora_" in k or k.startswith("model.adapter.") for k in state)
    assert any(".lora_" in k for k in state) and any(k.startswith("model.adapter.") for k in state)
    for key, value in state.items():  # full tensors, not this rank's shard
        assert torch.equal(value, weights[key]), key
    trainable = sum(v.numel() for v in state.values())
    assert trainable < first[0]["end"]["total_numel"] / 2  # the frozen base is most of the model, and absent
    moments = ckpt["optimizer_states"][0]["state"]
    assert len(moments) == len(state)  # AdamW state for the trainable parameters only
    assert sum(m["exp_avg"].numel() for m in moments.values()) == trainable
    for m in moments.values():  # compact: not views into a whole FSDP unit's state (torch.save writes all of it)
        assert m["exp_avg"].untyped_storage().nbytes() == 4 * m["exp_avg"].numel()
    # fp32 weights + 2 AdamW moments of the trainable part, + <100 kB of RNG states, loops and hparams
    assert ckpt_path.stat().st_size < 3 * 4 * trainable + 100_000

    second = fit("second", 2, "--ckpt_path", "last")  # resume under FSDP
    for rank in second:
        assert rank["end"]["global_step"] == 6 and rank["end"]["val_batches"] == 3  # trained after the sanity check
        for key, value in rank["start"]["weights"].items():  # restored exactly from the checkpoint
            assert torch.equal(value, weights[key]), key

    out = tmp_path / "report"
    run_cli("validate", *demo, *model, *data, "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--ckpt_path", str(ckpt_path), "--model.report_dir", str(out), cwd=tmp_path)
    bench = json.loads((out / "wer.json").read_text())["benchmarks"]["bench"]
    assert bench["samples"] == 11 and bench["words"] > 0 and math.isfinite(bench["wer"])
