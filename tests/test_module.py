"""The LightningModule: lean checkpoints checked on load, the LR schedule, its own callbacks."""

import math
from types import SimpleNamespace

import pytest
import torch

from borealis.callbacks import LearningCurve, NonFiniteSteps, PredictionWriter, RngState
from borealis.modeling import LoraSettings
from borealis.module import BorealisLightningModule


@pytest.fixture(scope="module")
def module(tiny_parts):
    enc, llm = tiny_parts
    module = BorealisLightningModule(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                     warmup_steps=4, min_lr_ratio=0.1, report_dir="reports")
    module.configure_model()
    return module


def test_checkpoints_hold_the_trainable_weights_only_and_must_match(module):
    trainable = {f"model.{n}" for n in module.model.trainable_parameter_names()}
    checkpoint = {"state_dict": module.state_dict()}
    assert set(checkpoint["state_dict"]) > trainable  # the frozen base is in the module
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == trainable and any(".lora_" in k for k in trainable)
    module.on_load_checkpoint(checkpoint)  # its own checkpoint loads
    missing = dict(checkpoint["state_dict"])
    dropped = sorted(missing)[0]
    del missing[dropped]
    with pytest.raises(ValueError, match=r"the checkpoint does not match .*1 missing trainable key"):
        module.on_load_checkpoint({"state_dict": missing})
    extra = {**checkpoint["state_dict"], "model.adapter.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): \['adapter.extra.weight'\]"):
        module.on_load_checkpoint({"state_dict": extra})


def test_learning_rate_warms_up_then_decays_to_its_floor(module):
    module._trainer = SimpleNamespace(estimated_stepping_batches=24)
    try:
        config = module.configure_optimizers()
    finally:
        module._trainer = None
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in module.model.parameters() if p.requires_grad}  # AdamW holds trainable weights only
    factor = scheduler.lr_lambdas[0]
    assert [factor(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # (s + 1) / (warmup + 1)
    assert factor(4) == pytest.approx(1.0)
    assert factor(14) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(24) == pytest.approx(0.1) and factor(100) == pytest.approx(0.1)


def test_module_installs_its_own_callbacks(module):
    first, again = module.configure_callbacks(), module.configure_callbacks()
    assert [type(c) for c in first] == [NonFiniteSteps, RngState, PredictionWriter, LearningCurve]
    assert first[0] is again[0]  # the skip counters outlive one trainer run
    assert first[2].folder == "reports"
    assert first[3].folder == "reports"  # the learning curve goes beside wer.json


def test_skip_settings_fail_naming_the_key(tiny_parts):
    enc, llm = tiny_parts
    with pytest.raises(ValueError, match=r"model.max_skipped_steps must be >= 0"):
        BorealisLightningModule(str(enc), str(llm), max_skipped_steps=-1)


def test_hyperparameters_are_plain_types(module, tmp_path):
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "h.ckpt")
    hp = torch.load(tmp_path / "h.ckpt", weights_only=True)["hyper_parameters"]
    assert hp["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": list(LoraSettings().target_modules)}
