"""configs/demo.yaml is the flagship (configs/it_fresh.yaml) scaled down, and nothing else; and
configs/demo_pretrain.yaml, on configs/pretrain.yaml + demo.yaml, only makes that stage 1.

Every key the overlay changes must be one that scale forces (`ALLOWED`, with the reason);
inside the lists it replaces (callbacks, curriculum stages) only paths, schedule lengths and
shapes may differ, and the curriculum may drop the effects `LEFT_OUT` lists, each named in the config. The recipe itself is asserted on the merged configuration as the CLI
parses it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from borealis.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP, DEMO = ROOT / "configs" / "it_fresh.yaml", ROOT / "configs" / "demo.yaml"
PRETRAIN, DEMO_PRETRAIN = ROOT / "configs" / "pretrain.yaml", ROOT / "configs" / "demo_pretrain.yaml"

# Dotted keys (or their parents) the demo may set differently from the flagship, and why.
ALLOWED = {
    "trainer.accelerator": "devices/accelerator/precision", "trainer.devices": "devices/accelerator/precision",
    "trainer.num_nodes": "devices/accelerator/precision", "trainer.strategy": "devices/accelerator/precision",
    "trainer.precision": "devices/accelerator/precision", "model.base_dtype": "devices/accelerator/precision",
    "model.activation_checkpointing": "devices (memory)", "data.num_workers": "devices (CPU cores)", "data.val_num_workers": "devices (CPU cores)",
    "trainer.accumulate_grad_batches": "batching", "data.batching": "batching", "data.val_batching": "batching",
    "data.shuffle_buffer": "batching",
    "trainer.max_epochs": "steps and epochs", "data.batches_per_epoch": "steps and epochs",
    "trainer.log_every_n_steps": "steps and epochs",
    "trainer.default_root_dir": "output folders", "trainer.logger": "output folders",
    "checkpoint.dirpath": "output folders", "model.report_dir": "output folders",
    "model.encoder": "base paths", "model.llm": "base paths",
    "model.encoder_window": "base shapes", "model.trim_audio_tokens": "base shapes",
    "model.max_new_tokens": "base shapes", "data.min_seconds": "base shapes", "data.max_seconds": "base shapes",
    "model.lora.r": "LoRA rank", "model.lora.alpha": "LoRA rank (alpha/r kept)",
    "model.learning_rate": "learning rate", "model.warmup_steps": "schedule lengths",
    "model.min_lr_ratio": "schedule lengths",
    "data.train_pools": "data paths", "data.text_pool": "data paths", "data.val_sets": "data paths",
    "data.predict": "data paths",
    "model.init_from": "the seed's two stages: instruction tuning from the demo's ASR pretrain",
}
# What demo_pretrain.yaml may set on top of pretrain.yaml + demo.yaml: what makes the run stage 1.
STAGE_ONE = {
    "seed_everything", "data.seed",  # the shipped pretrain's seed
    "trainer.max_epochs", "trainer.check_val_every_n_epoch",  # its length
    "trainer.default_root_dir", "trainer.logger", "trainer.callbacks", "checkpoint.dirpath", "model.report_dir",
    "model.init_from",  # null: from the bases
    "model.learning_rate",  # adapter and LoRA start from scratch, not from a pretrain
    "data.train_pools", "data.text_pool",  # ASR pools only (the pretrain corpus's)
    "data.allow_overlap",  # the fingerprint's one false pair in the larger corpus, named in the file
    "data.augmentation",  # every effect left out, named with the reason
}
# Lists the demo restates whole, compared element by element below.
CHECKED_LISTS = ("trainer.callbacks", "data.augmentation")
# Curriculum effects the demo leaves out of every stage; demo.yaml names each in a "# left out:"
# comment with the measured reason (BENCHMARKS.md).
LEFT_OUT = ("borealis.augmentations.Speed", "borealis.augmentations.PitchShift", "borealis.augmentations.Codec")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name not in ALLOWED and name not in CHECKED_LISTS:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_the_demo_changes_only_what_scale_forces():
    flagship, demo = _flatten(_load(FLAGSHIP)), _flatten(_load(DEMO))
    unknown = sorted(k for k in demo if k not in flagship and k not in ALLOWED)
    assert not unknown, f"the demo sets keys the flagship does not have: {unknown}"
    changed = sorted(k for k in demo if demo[k] != flagship.get(k))
    forbidden = [k for k in changed if k not in ALLOWED and k not in CHECKED_LISTS]
    assert not forbidden, f"the demo changes {forbidden}, which scale does not force (allowed: {sorted(ALLOWED)})"


def test_callbacks_differ_only_in_their_folders():
    flagship, demo = _lookup(_load(FLAGSHIP), "trainer.callbacks"), _lookup(_load(DEMO), "trainer.callbacks")
    assert [c["class_path"] for c in demo] == [c["class_path"] for c in flagship]
    for ours, theirs in zip(demo, flagship):
        strip = lambda c: {k: v for k, v in c.get("init_args", {}).items() if k != "dirpath"}  # noqa: E731
        assert strip(ours) == strip(theirs), ours["class_path"]


def test_the_curriculum_has_the_flagships_stages_and_effects():
    """Same stage names and order, same effects with the same settings, less the `LEFT_OUT`
    ones; only noise/IR pool paths, stage start epochs and SpecAugment widths may differ."""
    flagship = _lookup(_load(FLAGSHIP), "data.augmentation.stages")
    demo = _lookup(_load(DEMO), "data.augmentation.stages")
    assert [s["name"] for s in demo] == [s["name"] for s in flagship]
    starts = [s.get("start_epoch", 0) for s in demo]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    for ours, theirs in zip(demo, flagship):
        kept = [e for e in theirs.get("effects", []) if e["class_path"] not in LEFT_OUT]
        assert [e["class_path"] for e in ours.get("effects", [])] == [e["class_path"] for e in kept]
        for a, b in zip(ours.get("effects", []), kept):
            strip = lambda e: {k: v for k, v in e["init_args"].items() if k != "pool"}  # noqa: E731
            assert strip(a) == strip(b), a["class_path"]
            assert ("pool" in a["init_args"]) == ("pool" in b["init_args"])
        ours_spec, theirs_spec = ours.get("spec_augment"), theirs.get("spec_augment")
        assert (ours_spec is None) == (theirs_spec is None)
        if ours_spec:
            assert {k: v for k, v in ours_spec.items() if not k.endswith("width")} == \
                   {k: v for k, v in theirs_spec.items() if not k.endswith("width")}


def test_each_left_out_effect_is_named_in_the_config():
    """demo.yaml says which flagship effects it leaves out: a "# left out:" comment names each
    (as a whole word; the reason follows it in the comment)."""
    named = {word for line in DEMO.read_text().splitlines() if "# left out:" in line
             for word in re.findall(r"\w+", line.split("left out:", 1)[1])}
    missing = [path for path in LEFT_OUT if path.rsplit(".", 1)[1] not in named]
    assert not missing, f"demo.yaml leaves out {missing} without naming them in a '# left out:' comment"
    used = {e["class_path"] for s in _lookup(_load(FLAGSHIP), "data.augmentation.stages") for e in s.get("effects", [])}
    assert set(LEFT_OUT) <= used, "LEFT_OUT names an effect the flagship does not use"


def test_a_difference_outside_the_list_fails(tmp_path, monkeypatch):
    """The check itself: a demo that unfreezes the encoder is caught."""
    bad = _load(DEMO)
    bad["model"]["freeze_encoder"] = False
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(bad))
    monkeypatch.setattr(__import__(__name__), "DEMO", path)
    with pytest.raises(AssertionError, match="model.freeze_encoder"):
        test_the_demo_changes_only_what_scale_forces()


@pytest.mark.slow
def test_the_merged_config_is_the_recipe():
    """The CLI's own merge of the two files: frozen encoder, simple adapter, 4x stacking,
    LoRA on the seven projections, the flagship's prompt, text share and precision. And stage 1,
    pretrain.yaml + demo.yaml + demo_pretrain.yaml as the CLI merges them: plain ASR from the bases
    (no init_from, no text-only chats, ASR pools only), on the model that stage 2 trains."""
    merged = _merged(FLAGSHIP, DEMO)
    model, data = merged["model"], merged["data"]
    assert model["freeze_encoder"] is True
    assert model["adapter"] == "simple" and model["downsample_factor"] == 4
    assert sorted(model["lora"]["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert model["lora"]["alpha"] / model["lora"]["r"] == 512 / 256
    assert model["encoder"] == "models/demo/whisper" and model["llm"] == "models/demo/qwen3"
    assert model["init_from"] == "models/demo/pretrain"  # stage 2, from the shipped stage 1
    assert data["text_ratio"] == _lookup(_load(FLAGSHIP), "data.text_ratio")
    assert merged["trainer"]["accelerator"] == "cpu"
    # the flagship's precision: bf16 autocast on bf16 frozen bases, the dtype models/demo is stored in
    assert (merged["trainer"]["precision"], model["base_dtype"]) == ("bf16-mixed", "bfloat16")

    stage1 = _merged(PRETRAIN, DEMO, DEMO_PRETRAIN)
    assert stage1["model"]["init_from"] is None
    assert stage1["data"]["text_ratio"] == 0.0 and stage1["data"]["text_pool"] is None
    assert [p["name"] for p in stage1["data"]["train_pools"]] == ["asr_en", "asr_ru"]
    same = lambda m: {k: v for k, v in m.items() if k not in ("init_from", "report_dir", "learning_rate")}  # noqa: E731
    assert same(stage1["model"]) == same(model)  # stage 2 starts from a pretrain of its own model
    assert stage1["data"]["val_sets"] == data["val_sets"]


def test_the_pretrain_overlay_sets_only_what_makes_stage_one():
    overlay = _flatten(_load(DEMO_PRETRAIN))
    extra = sorted(k for k in overlay if k not in STAGE_ONE)
    assert not extra, f"demo_pretrain.yaml sets {extra}, beyond what makes the demo's stage 1: {sorted(STAGE_ONE)}"
    assert "left out:" in DEMO_PRETRAIN.read_text()  # the effects it drops are named, with the reason


def _merged(*configs) -> dict:
    """`borealis fit --config ... --print_config`: the configuration the CLI would run."""
    args = [a for c in configs for a in ("--config", str(c))]
    return yaml.safe_load(run_cli("fit", *args, "--print_config", cwd=ROOT).stdout)
