"""Resume and fault tolerance: a killed run continues exactly, and a bad step never poisons the model.

The end-to-end test runs the real `borealis fit` three times on a tiny corpus: once through,
once killed with SIGKILL in the middle of an epoch (parked by a test callback right after a
checkpoint, with batches prefetched by 2 workers), and once resumed with `--ckpt_path last`.
The resumed run must train on exactly the batches, and end with exactly the weights, of the
uninterrupted one. The rest runs in-process: the training stream's resume arithmetic, a
Trainer stopped and resumed mid-epoch on packed token-budget batches, and config/data faults
failing early. (Skipped steps and RNG states: tests/test_callbacks.py; the
checkpoint writer: tests/test_checkpointing.py.)
"""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from borealis.testing import build_tokenizer, make_pool

from borealis import augmentations as A
from borealis.checkpointing import AtomicCheckpointIO
from borealis.cli import BorealisCLI
from borealis.data import Batching, BorealisDataModule, MixtureStream, Pool, ResumableLoader
from borealis.module import BorealisLightningModule
from borealis.prompts import PromptBuilder
from lightning.pytorch.callbacks import ModelCheckpoint

# ---------------------------------------------------------------------------- end to end
CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  precision: 32-true
  max_epochs: 2
  accumulate_grad_batches: 3      # 7 batches per epoch: steps after batches 3, 6 and 7
  gradient_clip_val: 1.0
  log_every_n_steps: 1
  limit_val_batches: 0
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
  default_root_dir: runs
  callbacks:
    - class_path: borealis.callbacks.SampleLog
      init_args: {path: samples.jsonl}
checkpoint: {dirpath: runs/checkpoints, every_n_train_steps: 1}
model:
  lora: {r: 4, alpha: 8, dropout: 0.2, target_modules: [q_proj, v_proj]}  # dropout: the torch RNG matters
  learning_rate: 3.0e-3
  warmup_steps: 2
  max_new_tokens: 4
data:
  train_pools: [{name: a, shards: train}]
  text_pool: text
  text_ratio: 0.2
  batching: {batch_size: 3, bucket_size: 6}
  batches_per_epoch: 7
  shuffle_buffer: 8
  max_seconds: 2.0
  num_workers: 2
  seed: 5
  augmentation:                   # resumed mid-epoch 1: its stage must reach the new workers
    stages:
      - name: gain                # length-preserving: augmented only when a batch is built
        effects: [{class_path: borealis.augmentations.Gain, init_args: {p: 0.5}}]
        spec_augment: {freq_masks: 1, freq_width: 8, time_masks: 1, time_width: 10}
      - name: speed               # changes lengths: augmented while batches are composed, replayed too
        start_epoch: 1
        effects:
          - {class_path: borealis.augmentations.Speed, init_args: {factor: [0.9, 1.1], p: 0.5}}
          - {class_path: borealis.augmentations.Gain, init_args: {p: 0.5}}
        spec_augment: {freq_masks: 2, freq_width: 8, time_masks: 1, time_width: 20}
"""

# Parks the run at the first batch of optimizer step 4 (epoch 1, after 3 of its 7 batches: the
# resumed loader's workers swap roles), right after step 4's checkpoint, until it is killed.
PARK = """
import time
from pathlib import Path
import lightning as L

class Park(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 4:
            Path("parked").write_text(str(trainer.current_epoch))
            time.sleep(600)
"""


def _borealis(args, cwd, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "borealis.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc):
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    return out


def _run_dir(root, tiny_parts, name):
    enc, llm = tiny_parts
    run = root / name
    run.mkdir()
    (run / "config.yaml").write_text(CONFIG)
    for sub in ("train", "text"):
        (run / sub).symlink_to(root / sub)
    return run, ["fit", "--config", "config.yaml", "--model.encoder", str(enc), "--model.llm", str(llm)]


def _rows(run):
    return [json.loads(line) for line in (run / "runs" / "samples.jsonl").read_text().splitlines()]


def _last(run):
    return torch.load(run / "runs" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, tiny_parts):
    make_pool(tmp_path / "train", "a", range(40), max_samples=6)
    make_pool(tmp_path / "text", "t", range(12), text_only=True)

    ref, args = _run_dir(tmp_path, tiny_parts, "ref")
    _finish(_borealis(args, ref))

    run, args = _run_dir(tmp_path, tiny_parts, "killed")
    (run / "park.py").write_text(PARK)
    proc = _borealis([*args, "--trainer.callbacks+", "park.Park"], run, {"PYTHONPATH": str(run)})
    try:
        deadline = time.monotonic() + 240
        while not (run / "parked").exists():
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "the run never reached step 4"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the run and its DataLoader workers, as a node failure would
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _last(run)
    assert killed_at["global_step"] == 4 and killed_at["epoch"] == 1
    assert killed_at["BorealisDataModule"]["train_stream"]["consumed"] == 3

    out = _finish(_borealis([*args, "--ckpt_path", "last"], run))
    assert "resuming the training stream exactly: epoch 1 after 3 of its 7 batches" in out, out[-6000:]

    want, got = _rows(ref), _rows(run)
    assert [r["step"] for r in want] == [s for s in range(6) for _ in range(3 if s % 3 < 2 else 1)]
    assert got == want, "the resumed run trained on other batches than the uninterrupted one"

    a, b = _last(ref), _last(run)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][key], a["state_dict"][key], rtol=1e-5, atol=1e-6, msg=key)
    assert b["hyper_parameters"]["lora"]["r"] == 4  # plain types: read with weights_only=True above
    assert not list((run / "runs" / "checkpoints").glob(".ckpt-*")), "a temp file was left behind"


# ---------------------------------------------------------------------------- the stream's position
@pytest.fixture(scope="module")
def prompts():
    return PromptBuilder(build_tokenizer(), downsample_factor=4, max_source_positions=100)


def _stream(root, prompts, stages):
    return MixtureStream([Pool("a", str(root / "a"))], prompts, Batching(max_seconds_per_batch=1.5, bucket_size=9),
                         batches_per_epoch=11, shuffle_buffer=5, seed=3,
                         augmentation=A.AugmentationPipeline([A.AugmentationStage("s", effects=stages)]))


def _batches(loader):
    return [(b["keys"], b["waveforms"]) for b in loader]


@pytest.mark.parametrize("stages", [[A.Gain(p=0.5)], [A.Speed(p=0.5), A.Gain(p=0.5)]], ids=["gain", "speed"])
def test_stream_resumes_at_any_batch(tmp_path, prompts, stages):
    """Token-budget batches from 3 workers: the rest of the epoch after any consumed count is the
    uninterrupted run's, waveforms included, and the next epoch starts at its first batch."""
    make_pool(tmp_path / "a", "a", range(60), max_samples=7)
    full = _batches(ResumableLoader(_stream(tmp_path, prompts, stages), batch_size=None, num_workers=3))
    assert len(full) == 11
    for consumed in (1, 5, 11):
        stream = _stream(tmp_path, prompts, stages)
        loader = ResumableLoader(stream, batch_size=None, num_workers=3)
        state = {**loader.state_dict(), "consumed": consumed, "end_of_epoch": False}
        loader.load_state_dict(state)
        rest = _batches(loader)
        assert [k for k, _ in rest] == [k for k, _ in full[consumed:]]
        for (_, got), (_, want) in zip(rest, full[consumed:]):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert loader.state_dict()["consumed"] == 11 and loader.state_dict()["end_of_epoch"]
        stream.set_epoch(1)
        assert len(_batches(loader)) == 11 and loader.position == (1, 11)


def test_other_topology_ends_the_epoch_and_says_so(tmp_path, prompts, caplog):
    make_pool(tmp_path / "a", "a", range(60), max_samples=7)
    stream = _stream(tmp_path, prompts, [])
    loader = ResumableLoader(stream, batch_size=None, num_workers=2)
    state = {**loader.state_dict(), "consumed": 4, "end_of_epoch": False, "workers": 3}
    with caplog.at_level(logging.WARNING):
        loader.load_state_dict(state)
    assert "resume is approximate" in caplog.text and "last 7 batches per rank are dropped" in caplog.text
    assert _batches(loader) == []  # no batch of the interrupted epoch comes twice
    stream.set_epoch(1)
    assert len(_batches(loader)) == 11
    loader.load_state_dict({**loader.state_dict(), "end_of_epoch": True})  # saved at an epoch's last batch
    assert int(stream.epoch.item()) == 2 and loader.position == (2, 0)


# ---------------------------------------------------------------------------- config and data faults
def _cli(args, *, run=True):
    return BorealisCLI(BorealisLightningModule, BorealisDataModule, args=args, run=run, save_config_callback=None,
                       auto_configure_optimizers=False)


def _base(tiny_parts):
    enc, llm = tiny_parts
    return ["--model.encoder", str(enc), "--model.llm", str(llm), "--trainer.accelerator", "cpu",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


@pytest.mark.parametrize("bad, key", [(["--data.batches_per_epoch", "many"], "batches_per_epoch"),
                                      (["--checkpoint.save_every", "5"], "save_every"),
                                      (["--model.adapter", "wide"], "adapter")])
def test_bad_options_fail_naming_the_key(tiny_parts, capsys, bad, key):
    with pytest.raises(SystemExit):
        _cli(["fit", *_base(tiny_parts), *bad])
    assert key in capsys.readouterr().err


def test_missing_data_fails_before_weights_load(tmp_path, tiny_parts, monkeypatch):
    from borealis.modeling import BorealisForConditionalGeneration

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded before the data was checked")

    monkeypatch.setattr(BorealisForConditionalGeneration, "from_parts", no_weights)
    make_pool(tmp_path / "a", "a", range(4))
    pools = json.dumps([{"name": "a", "shards": str(tmp_path / "a")}, {"name": "b", "shards": str(tmp_path / "b*")}])
    with pytest.raises(FileNotFoundError) as err:
        _cli(["fit", *_base(tiny_parts), "--data.train_pools", pools,
              "--data.val_sets", json.dumps({"bench": str(tmp_path / "nowhere")})])
    message = str(err.value)
    assert "2 problem(s)" in message
    assert f"data.train_pools[1] ('b'): no shards match '{tmp_path / 'b*'}'" in message
    assert "data.val_sets.bench" in message and str(tmp_path / "nowhere") in message
    with pytest.raises(ValueError, match=r"data.val_sets: empty: `validate` scores benchmarks"):
        _cli(["validate", *_base(tiny_parts)])


def test_given_model_options_win_over_the_checkpoint(tmp_path, tiny_parts, monkeypatch, caplog):
    enc, llm = tiny_parts
    stored = BorealisLightningModule(str(enc), str(llm), report_dir="stored", max_new_tokens=7,
                                     lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]})
    torch.save({"hyper_parameters": dict(stored.hparams)}, tmp_path / "p.ckpt")
    monkeypatch.setattr(BorealisCLI, "_run_subcommand", lambda self, sub: None)
    with caplog.at_level(logging.WARNING, logger="borealis.cli"):
        cli = _cli(["predict", *_base(tiny_parts), "--ckpt_path", str(tmp_path / "p.ckpt"),
                    "--model.report_dir", "given"])
    hp = cli.model.hparams
    assert hp.report_dir == "given"  # given on the command line: wins
    assert hp.max_new_tokens == 7 and hp.lora == {"r": 4, "alpha": 8, "dropout": 0.0,  # not given: the
                                                  "target_modules": ["q_proj"]}       # checkpoint's
    assert "report_dir: checkpoint 'stored', given 'given'" in caplog.text
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ---------------------------------------------------------------------------- packed batches, through a Trainer
class _KeyRecorder(L.LightningModule):
    """One weight; records the sample keys of every training batch (packed rows: several per row)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.keys: list[list[str]] = []
        self.rows: list[int] = []

    def on_train_epoch_start(self) -> None:
        self.trainer.datamodule.set_epoch(self.current_epoch)  # as BorealisLightningModule does

    def training_step(self, batch, batch_idx):
        self.keys.append(batch["keys"])
        self.rows.append(batch["input_ids"].shape[0])
        return self.w * batch["input_ids"].float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _packed_fit(data, run, prompts, max_steps: int = -1, ckpt_path=None) -> _KeyRecorder:
    """One fit of 2 epochs x 7 packed batches over the pools under `data` (or its first `max_steps`
    steps), checkpointed every step into `run`/ckpt."""
    dm = BorealisDataModule(train_pools=[Pool("a", str(data / "a"))], text_pool=str(data / "t"), text_ratio=0.2,
                            batching={"pack": True, "max_tokens_per_batch": 320, "max_tokens_per_row": 160,
                                      "bucket_size": 12},  # rows of 2 samples (~75 tokens each), 2 rows a batch
                            batches_per_epoch=7, shuffle_buffer=8, num_workers=2, seed=3, prompt_builder=prompts)
    module = _KeyRecorder()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, max_steps=max_steps, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[ModelCheckpoint(dirpath=run / "ckpt", every_n_train_steps=1, save_top_k=-1)],
                        default_root_dir=run)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


def test_packed_run_stopped_mid_epoch_resumes_with_the_remaining_batches(tmp_path, prompts, caplog):
    """Packed token-budget batches from 2 workers: a run stopped after 3 of epoch 0's 7 batches
    (odd: the resumed loader's workers swap roles) and resumed from that step's checkpoint sees
    exactly the uninterrupted run's remaining batches, sample keys in order, into epoch 1."""
    make_pool(tmp_path / "a", "a", range(40), max_samples=6)
    make_pool(tmp_path / "t", "t", range(12), text_only=True)
    full = _packed_fit(tmp_path, tmp_path / "full", prompts)
    assert len(full.keys) == 14 and max(len(k) / r for k, r in zip(full.keys, full.rows)) >= 2  # packed rows
    assert full.keys[7:] != full.keys[:7]  # epoch 1 draws other batches: a resume that restarts an epoch shows

    stopped = _packed_fit(tmp_path, tmp_path / "cut", prompts, max_steps=3)
    assert stopped.keys == full.keys[:3]
    ckpt = tmp_path / "cut" / "ckpt" / "epoch=0-step=3.ckpt"
    assert torch.load(ckpt, weights_only=True)["BorealisDataModule"]["train_stream"]["consumed"] == 3
    with caplog.at_level(logging.INFO, logger="borealis.data.resume"):
        resumed = _packed_fit(tmp_path, tmp_path / "cut", prompts, ckpt_path=ckpt)
    assert "resuming the training stream exactly: epoch 0 after 3 of its 7 batches" in caplog.text
    assert resumed.keys == full.keys[3:], "the resumed run saw other packed batches than the uninterrupted one"
