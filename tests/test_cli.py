"""The `borealis` command: every shipped config parses, fit -> validate runs end to end, and the
non-Lightning commands (shards, export, demo) answer --help without loading Lightning."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from borealis.testing import make_pool, run_cli

from borealis.cli import BorealisCLI
from borealis.commands import main as borealis
from borealis.data import BorealisDataModule
from borealis.module import BorealisLightningModule
from borealis.shards import iter_shard, list_shards

CONFIG_DIR = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
ABLATIONS = sorted((CONFIG_DIR / "ablations").glob("*.yaml"))  # overlays on it_fresh.yaml
BASES = {"demo.yaml": ("it_fresh.yaml",),  # configs/*.yaml that are overlays, parsed on their base
         "demo_pretrain.yaml": ("pretrain.yaml", "demo.yaml")}
VARIANTS = {"no_augment.yaml": ("it_fresh.yaml",), "demo_no_augment.yaml": ("it_fresh.yaml", "demo.yaml")}  # configs/variants/ on their base


def _parse(configs, tiny_parts):
    enc, llm = tiny_parts  # hub ids need the network; a local folder is loaded the same way
    return BorealisCLI(BorealisLightningModule, BorealisDataModule, run=False,
                      args=[*(a for c in configs for a in ("--config", str(c))),
                            "--model.encoder", str(enc), "--model.llm", str(llm),
                            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                            "--trainer.logger", "false", "--trainer.precision", "32-true"],
                      save_config_callback=None, auto_configure_optimizers=False)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_parses(config, tiny_parts):
    cli = _parse([*(CONFIG_DIR / b for b in BASES.get(config.name, ())), config], tiny_parts)
    assert cli.datamodule.prompt_builder is cli.model.prompt_builder  # linked, not rebuilt
    assert cli.datamodule.val_sets, "every config names its benchmarks"
    assert cli.trainer.accelerator is not None


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_overlay_their_base_with_one_clean_stage(variant, tiny_parts):
    assert sorted(p.name for p in (CONFIG_DIR / "variants").glob("*.yaml")) == sorted(VARIANTS)
    cli = _parse([*(CONFIG_DIR / b for b in VARIANTS[variant]), CONFIG_DIR / "variants" / variant], tiny_parts)
    assert [stage.name for stage in cli.datamodule.augmentation.stages] == ["none"]


@pytest.mark.parametrize("overlay", ABLATIONS, ids=[c.name for c in ABLATIONS])
def test_seed_ablations_overlay_the_flagship(overlay, tiny_parts):
    import yaml

    cli = _parse([CONFIG_DIR / "it_fresh.yaml", overlay], tiny_parts)
    want = yaml.safe_load(overlay.read_text())["data"]
    if "train_pools" in want:  # the seed's data ablations
        assert [p.name for p in cli.datamodule.train_pools] == [p["name"] for p in want["train_pools"]]
        assert cli.datamodule.text_ratio == want["text_ratio"]
    if "augmentation" in want:  # the curriculum ablations replace every stage
        stages = [s.name for s in cli.datamodule.augmentation.stages]
        assert stages == [s["name"] for s in want["augmentation"]["stages"]] and stages != ["clean", "mild", "harsh"]
    assert cli.model.hparams.learning_rate == 1e-5  # the rest of the flagship stays


def test_unknown_key_fails_before_loading(tmp_path, tiny_parts):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  encoder: x\n  llm: y\n  lerning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        BorealisCLI(BorealisLightningModule, BorealisDataModule, run=False, args=["--config", str(bad)],
                    save_config_callback=None, auto_configure_optimizers=False)


@pytest.mark.slow
def test_fit_then_validate_through_the_cli(tmp_path, tiny_parts):
    enc, llm = tiny_parts
    make_pool(tmp_path / "train", "a", range(40), max_samples=10)
    make_pool(tmp_path / "text", "t", range(20), text_only=True)
    make_pool(tmp_path / "bench", "v", range(100, 109), max_samples=4)  # held out from the training ids
    for pool in ("noise", "ir"):  # demo.yaml's augmentation curriculum reads these (checked at setup)
        make_pool(tmp_path / "demo" / "shards" / pool, pool, range(4))
    runs = tmp_path / "demo" / "runs"  # demo.yaml's relative paths land under the working folder
    common = ["--config", str(CONFIG_DIR / "it_fresh.yaml"), "--config", str(CONFIG_DIR / "demo.yaml"),
              "--model.encoder", str(enc), "--model.llm", str(llm), "--model.max_new_tokens", "4",
              "--model.init_from", "null",  # tiny bases: models/demo/pretrain is the demo bases'
              "--data.train_pools", json.dumps([{"name": "a", "shards": str(tmp_path / "train")}]),
              "--data.text_pool", str(tmp_path / "text"),
              "--data.val_sets", json.dumps({"bench": str(tmp_path / "bench")}),
              "--data.predict.sets", json.dumps({"bench": str(tmp_path / "bench")}),
              "--data.batching", json.dumps({"batch_size": 4, "max_seconds_per_batch": None}), "--data.batches_per_epoch", "3",
              "--data.max_seconds", "2.0", "--data.num_workers", "1"]
    run_cli("fit", *common, "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
            "--trainer.num_sanity_val_steps", "0", cwd=tmp_path)  # the epoch's validation runs; no sanity pass before it
    assert (runs / "checkpoints" / "epoch=0-step=3.ckpt").is_file()  # the demo keeps the best by val/wer_avg
    ckpt = runs / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert state and all(k.startswith("model.") for k in state)
    assert any(".lora_A." in k for k in state) and any(k.startswith("model.adapter.") for k in state)
    assert not any(k.startswith("model.encoder.") for k in state)  # the demo's encoder is frozen, as the flagship's
    events = list((runs / "tb").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard events"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/audio_sec_per_sec", "train/tokens_per_sec", "train/padding_ratio",
            "train/augment_stage", "val/wer_avg"} <= tags
    assert all(e.value > 0 for e in acc.Scalars("train/tokens_per_sec"))

    out = run_cli("validate", *common, "--ckpt_path", str(ckpt), cwd=tmp_path)
    report = json.loads((runs / "report" / "wer.json").read_text())
    assert report["benchmarks"]["bench"]["samples"] == 9
    assert report["benchmarks"]["bench"]["words"] > 0
    assert report["checkpoint"] == "last.ckpt"
    assert "Avg" in out.stdout + out.stderr
    bench = report["benchmarks"]["bench"]  # speed: audio of the 9 clips / wall seconds of their generation
    audio = sum(s["audio"].size for shard in list_shards(str(tmp_path / "bench")) for s in iter_shard(shard)) / 16000
    assert bench["audio_seconds"] == report["audio_seconds"] == pytest.approx(audio, abs=1e-9)
    assert 0 < bench["seconds"] <= report["seconds"]
    assert bench["rtfx"] == pytest.approx(audio / bench["seconds"]) and report["rtfx"] > 0
    assert "RTFx" in out.stdout + out.stderr

    run_cli("predict", *common, "--ckpt_path", str(ckpt), cwd=tmp_path)
    rows = [json.loads(line) for line in (runs / "report" / "predictions.rank0.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in rows) == sorted(f"v-{i}" for i in range(100, 109))
    assert all("prediction" in r and "reference" in r for r in rows)

    run_cli("validate", *common, "--ckpt_path", str(ckpt), cwd=tmp_path)  # the same checkpoint again
    folders = {e.parent.name for e in (runs / "tb").rglob("events.out.tfevents.*")}
    assert folders == {"demo", "demo-validate-last-1", "demo-predict-last-1", "demo-validate-last-2"}
    assert len(list((runs / "tb" / "demo").glob("events.out.tfevents.*"))) == 1  # the fit's, alone
    for folder in folders - {"demo"}:  # each evaluation names the checkpoint it scored
        acc = EventAccumulator(str(runs / "tb" / folder))
        acc.Reload()
        (text,) = acc.Tensors("run/checkpoint/text_summary")
        assert str(ckpt.resolve()) in text.tensor_proto.string_val[0].decode()


def test_evaluations_log_to_runs_of_their_own(tmp_path, tiny_parts, monkeypatch):
    from borealis.cli import EvaluationRun

    monkeypatch.setattr(BorealisCLI, "_run_subcommand", lambda self, subcommand: None)
    enc, llm = tiny_parts
    bench = json.dumps({"b": str(make_pool(tmp_path / "bench", "v", range(3)))})
    torch.save({"hyper_parameters": {}}, tmp_path / "epoch=1.ckpt")
    fixed = json.dumps({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tb", "version": "demo"}})

    def run(subcommand, *args):
        """The run folder `borealis SUBCOMMAND` logs to, created as its first log would."""
        cli = BorealisCLI(BorealisLightningModule, BorealisDataModule, save_config_callback=None,
                          auto_configure_optimizers=False,
                          args=[subcommand, "--model.encoder", str(enc), "--model.llm", str(llm),
                                "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "root"),
                                "--data.train_pools", json.dumps([{"name": "a", "shards": str(tmp_path / "bench")}]),
                                "--data.val_sets", bench, "--data.predict.sets", bench,
                                "--data.allow_overlap", "true", *args])  # the benchmark is the training pool
        assert any(isinstance(cb, EvaluationRun) for cb in cli.trainer.callbacks) == (subcommand != "fit")
        folder = Path(cli.trainer.log_dir)
        folder.mkdir(parents=True)
        return folder.relative_to(tmp_path).as_posix()

    ckpt = ["--ckpt_path", str(tmp_path / "epoch=1.ckpt")]
    assert run("validate", *ckpt) == "root/lightning_logs/validate-epoch=1-1"  # Lightning's default logger
    assert run("validate", *ckpt) == "root/lightning_logs/validate-epoch=1-2"
    assert run("fit", "--trainer.logger", fixed) == "runs/tb/demo"  # training keeps the configured version
    assert run("validate", "--trainer.logger", fixed, *ckpt) == "runs/tb/demo-validate-epoch=1-1"
    assert run("validate", "--trainer.logger", fixed, *ckpt) == "runs/tb/demo-validate-epoch=1-2"
    assert run("predict", "--trainer.logger", fixed, *ckpt) == "runs/tb/demo-predict-epoch=1-1"
    assert run("validate", "--trainer.logger", fixed) == "runs/tb/demo-validate-no-checkpoint-1"


def test_help_lists_every_command(capsys):
    assert borealis(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "shards", "export", "demo"):
        assert f"\n  {command} " in out, command
    assert borealis([]) == 2 and "usage: borealis" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["shards", "--help"], ["build", "inspect"]),
    (["shards", "build", "--help"], ["manifest", "librispeech", "commonvoice", "hf", "text", "audio-folder"]),
    (["shards", "inspect", "--help"], ["--verify", "--play", "--json"]),
    (["export", "--help"], ["--ckpt", "--config", "--out", "--format", "--keep-adapter", "--dtype"]),
    (["demo", "--help"], ["--out", "--overwrite"]),
])
def test_every_command_documents_its_options(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        borealis(argv)
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: borealis ")
    assert all(word in out for word in words), [w for w in words if w not in out]


@pytest.mark.parametrize("argv, message", [
    (["shards", "inspect", ".", "--bogus"], "unrecognized arguments: --bogus"),
    (["shards", "build", "text", "--input", "x.jsonl", "--output", "o", "--kind", "noise"],
     "unrecognized arguments: --kind noise"),
    (["shards", "check"], "invalid choice: 'check'"),
    (["export", "--ckpt", "a.ckpt", "--out", "o", "--merge"], "unrecognized arguments: --merge"),
])
def test_an_unknown_option_fails_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        borealis(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_unknown_command_names_the_choices(capsys):
    assert borealis(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "shards" in err and "fit" in err


def test_shards_help_imports_no_torch():
    code = ("import sys\nfrom borealis.commands import main\ntry:\n    main(['shards', 'build', 'manifest', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'lightning' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "False False"
