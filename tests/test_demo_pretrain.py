"""`borealis demo pretrain`: a stage-1 run's trainable weights, saved beside the bases it trained on,
are exactly what stage 2 starts from; a checkpoint of other bases, or of a stage-2 run, is refused."""

from __future__ import annotations

import json
import shutil

import lightning as L
import pytest
import torch
from borealis.testing import make_pool
from safetensors.torch import load_file

from borealis.data import Batching, BorealisDataModule, Pool
from borealis.demo import main as demo_main
from borealis.demo.bases import check_sums
from borealis.demo.pretrain import save_pretrain
from borealis.modeling import LoraSettings, load_init_weights
from borealis.module import BorealisLightningModule


@pytest.fixture()
def stage1(tiny_parts, tmp_path):
    """(bases folder, checkpoint): two steps of plain ASR on a copy of the tiny bases."""
    bases = tmp_path / "bases"
    for part in tiny_parts:
        shutil.copytree(part, bases / part.name)
    make_pool(tmp_path / "asr", "asr", range(12), max_samples=6)
    torch.manual_seed(0)
    module = BorealisLightningModule(str(bases / "whisper"), str(bases / "qwen3"), learning_rate=1e-2,
                                     warmup_steps=0, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    dm = BorealisDataModule(train_pools=[Pool("asr", str(tmp_path / "asr"))], batching=Batching(batch_size=2),
                            batches_per_epoch=2, shuffle_buffer=4, num_workers=0, max_seconds=2.0,
                            prompt_builder=module.prompt_builder)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return bases, ckpt


def _trained(ckpt) -> dict[str, torch.Tensor]:
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("model."): v for k, v in saved.items()}


def test_the_saved_pretrain_is_the_runs_trainable_weights_and_stage_two_starts_from_it(stage1, tiny_parts):
    bases, ckpt = stage1
    summary = save_pretrain(ckpt, bases)
    written = load_file(bases / "pretrain" / "model.safetensors")
    trained = _trained(ckpt)
    assert written.keys() == trained.keys() and any(k.startswith("adapter.") for k in written)
    assert all(torch.equal(written[k], trained[k]) and written[k].dtype == torch.float32 for k in written)
    assert summary["global_step"] == 2 and summary["tensors"] == len(written)
    assert summary["parameters"] == sum(v.numel() for v in written.values()) and summary["wer"] == {}
    assert json.loads((bases / "pretrain.json").read_text()) == summary
    listed = [line.split(maxsplit=1)[1] for line in (bases / "SHA256SUMS").read_text().splitlines()]
    assert "pretrain/model.safetensors" in listed and "pretrain.json" not in listed
    assert check_sums(bases) == []

    torch.manual_seed(5)  # stage 2's own seed: nothing of its fresh init may survive the load
    module = BorealisLightningModule(str(bases / "whisper"), str(bases / "qwen3"),
                                     lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    module.configure_model()
    load_init_weights(module.model, str(bases / "pretrain"))
    state = module.model.state_dict()
    assert all(torch.equal(state[k], written[k]) for k in written)


def test_the_runs_wer_goes_into_the_summary_only_if_it_scored_this_step(stage1):
    bases, ckpt = stage1
    report = ckpt.parent.parent / "report" / "wer.json"
    report.parent.mkdir(parents=True)
    for step, expected in ((2, {"bench": 12.35}), (1, {})):
        report.write_text(json.dumps({"checkpoint": f"step-{step}", "benchmarks": {"bench": {"wer": 0.1235}}}))
        assert save_pretrain(ckpt, bases)["wer"] == expected


def test_a_checkpoint_of_other_bases_or_of_a_stage_two_run_is_refused(stage1, tmp_path, capsys):
    bases, ckpt = stage1
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(bases, elsewhere)
    assert demo_main(["pretrain", "--ckpt", str(ckpt), "--out", str(elsewhere)]) == 2
    assert f"not {elsewhere / 'whisper'}" in capsys.readouterr().out
    assert not (elsewhere / "pretrain").exists()

    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    saved["hyper_parameters"]["init_from"] = str(bases / "pretrain")
    stage2 = tmp_path / "stage2.ckpt"
    torch.save(saved, stage2)
    with pytest.raises(ValueError, match="not a stage-1 run"):
        save_pretrain(stage2, bases)

    assert demo_main(["pretrain", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(bases)]) == 2
    assert "missing.ckpt not found" in capsys.readouterr().out
    assert not (bases / "pretrain").exists()
