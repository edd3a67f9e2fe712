"""Configuration errors: found before any weight loads, gathered into one message, exit code 2.

`borealis fit|validate|test|predict` check the data (`BorealisDataModule.problems`), the base
models' sources and `--ckpt_path` before the model, the trainer or a weight is built
(`cli.config_problems`), and `borealis` prints a `ConfigError` without a traceback.
"""

import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from borealis.testing import make_pool

from borealis.cli import BorealisCLI, config_problems
from borealis.commands import ConfigError, MissingPathError
from borealis.commands import main as borealis
from borealis.data import BorealisDataModule
from borealis.module import BorealisLightningModule

FLAGSHIP = Path(__file__).parents[1] / "configs" / "it_fresh.yaml"


def test_a_bad_path_on_the_flagship_fails_in_seconds_with_one_message(tmp_path, tiny_parts):
    enc, llm = tiny_parts
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "CUDA_VISIBLE_DEVICES": ""}
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run([sys.executable, "-m", "borealis.commands", "fit", "--config", str(FLAGSHIP),
                          "--model.encoder", str(enc), "--model.llm", str(llm),
                          "--data.val_sets", "{x: /nonexistent/pool}"],
                         check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert run.returncode == 2, run.stderr[-3000:]
    err = run.stderr
    assert "Traceback" not in err, err[-3000:]
    assert "borealis fit: error: " in err and "problem(s) with the configuration of `borealis fit`:" in err
    assert "data.val_sets.x: no shards match '/nonexistent/pool'" in err
    data = yaml.safe_load(FLAGSHIP.read_text())["data"]
    for i, pool in enumerate(data["train_pools"]):  # the flagship's pools are not under tmp_path either
        assert f"data.train_pools[{i}] ({pool['name']!r}): no shards match {pool['shards']!r}" in err
    assert f"data.text_pool: no shards match {data['text_pool']!r}" in err
    assert "augmentation stage 'harsh', ImpulseResponse: no shards match" in err  # the curriculum's IR pool
    assert "model." not in err  # the tiny local bases are fine
    # The bound is 15 s of wall time; an idle 2-core machine takes ~8 s (imports and parsing, no weights).
    # On a shared machine wall time counts the neighbours' work too, so the command's own CPU time stands in.
    assert min(seconds, cpu) < 15, f"{seconds:.1f} s ({cpu:.1f} s CPU): the bad path must come before anything heavy"


def test_hub_ids_that_cannot_load_offline_are_named_after_the_data(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.chdir(tmp_path)
    assert borealis(["fit", "--config", str(FLAGSHIP), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                     "--trainer.strategy", "auto", "--data.val_sets", "{x: /nonexistent/pool}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    offline = "is not a local folder and cannot be loaded offline: HF_HUB_OFFLINE is set"
    assert f"model.encoder: 'openai/whisper-large-v3' {offline}" in err
    assert f"model.llm: 'Qwen/Qwen3-4B' {offline}" in err
    assert err.index("data.val_sets.x") < err.index("model.encoder")  # the data first


def test_every_source_the_run_needs_is_checked(tmp_path, tiny_parts, monkeypatch):
    from jsonargparse import Namespace

    monkeypatch.chdir(tmp_path)
    enc, llm = tiny_parts
    make_pool(tmp_path / "bench", "v", range(3))
    (tmp_path / "file").write_text("not a model folder")
    data = Namespace(val_sets={"b": str(tmp_path / "bench")}, train_pools=None, text_pool=None, text_ratio=0.0)
    model = Namespace(encoder=str(tmp_path / "file"), llm="not a/hub id", init_from="gone.safetensors")
    config = Namespace(data=data, ckpt_path="gone.ckpt", model=model)
    assert [key for key, _ in config_problems(config, "validate")] == [
        "model.encoder", "model.llm", "model.init_from", "ckpt_path"]
    config = Namespace(data=data, ckpt_path="last", model=Namespace(encoder=str(enc), llm=str(llm), init_from=None))
    assert config_problems(config, "validate") == []  # `last` is resolved by Lightning
    keys = [key for key, _ in config_problems(config, "fit")]
    assert keys == ["data.train_pools"]  # fit needs something to train on
    data.text_ratio = 0.1  # the DataModule's own check, reported in place of the data problems
    assert [(k, str(e)) for k, e in config_problems(config, "fit")] == [("data", "text_ratio > 0 needs text_pool")]


def test_a_config_error_is_a_value_error_and_missing_paths_are_file_not_found():
    missing = ConfigError.gather([("data.text_pool", FileNotFoundError("no shards"))], "the data")
    assert isinstance(missing, MissingPathError) and isinstance(missing, FileNotFoundError)
    mixed = ConfigError.gather([("a", FileNotFoundError("gone")), ("b", ValueError("bad"))], "the data")
    assert type(mixed) is ConfigError and isinstance(mixed, ValueError)
    assert str(mixed) == "2 problem(s) with the data:\n  - a: gone\n  - b: bad"


@pytest.mark.parametrize("argv, message", [
    (["fit", "--config", "/nonexistent/config.yaml"], "File does not exist: '/nonexistent/config.yaml'"),
    (["fit", "--model.lerning_rate", "3"], "unrecognized arguments: --model.lerning_rate 3"),
])
def test_parser_errors_exit_2_without_a_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        borealis(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_the_early_check_draws_no_random_numbers(tmp_path, tiny_parts, monkeypatch):
    """The check runs after `seed_everything` and before the model and the data are built, so
    it must leave every generator as it found it: training then draws what it drew without it."""
    def states():
        return torch.get_rng_state().tolist(), np.random.get_state()[1].tolist(), random.getstate()

    checked = []
    early = BorealisCLI.before_instantiate_classes

    def spy(self):
        before = states()
        early(self)
        checked.append(before == states())

    monkeypatch.setattr(BorealisCLI, "before_instantiate_classes", spy)
    monkeypatch.setattr(BorealisCLI, "instantiate_classes", lambda self: None)
    monkeypatch.setattr(BorealisCLI, "_run_subcommand", lambda self, subcommand: None)
    monkeypatch.chdir(tmp_path)
    for kind in ("noise", "ir"):  # demo.yaml's curriculum reads these
        make_pool(tmp_path / "demo" / "shards" / kind, kind, range(4))
    pool = str(make_pool(tmp_path / "a", "a", range(8)))
    bench = str(make_pool(tmp_path / "bench", "v", range(100, 104)))  # held out: the overlap check runs and passes
    enc, llm = tiny_parts
    BorealisCLI(BorealisLightningModule, BorealisDataModule, save_config_callback=None, auto_configure_optimizers=False,
                args=["fit", "--config", str(FLAGSHIP), "--config", str(FLAGSHIP.with_name("demo.yaml")),
                      "--model.encoder", str(enc), "--model.init_from", "null",  # tiny bases
                      "--model.llm", str(llm), "--data.train_pools", json.dumps([{"name": "a", "shards": pool}]),
                      "--data.text_pool", pool, "--data.val_sets", json.dumps({"b": bench})])
    assert checked == [True]
