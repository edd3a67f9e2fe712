"""`borealis fit` with `strategy=ddp`, 2 CPU ranks (gloo), through the real CLI in a subprocess.

Checks the three CPU-testable promises of distributed training: both ranks run the
same number of optimizer steps without a hang although the pool's shards do not split evenly
over the ranks, the gradients were synchronised (identical trainable weights on both ranks),
and `borealis validate` on 2 ranks gives the single-process WER (every sample scored once).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from borealis.testing import make_pool, run_cli

REPO = Path(__file__).resolve().parents[1]


class DumpRankWeights(L.Callback):
    """Test helper (loaded by the subprocess from tests/): each rank saves its trainable weights
    and optimizer step count when training ends."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        state = {n: p.detach().cpu().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad}
        torch.save({"state": state, "global_step": trainer.global_step, "world_size": trainer.world_size},
                   Path(self.folder) / f"rank{trainer.global_rank}.pt")


def _run(args: list[str], cwd: Path, ranks: int = 2):
    return run_cli(*args, cwd=cwd, pythonpath=str(REPO / "tests"),  # DumpRankWeights lives here
                   interpreter=ranks > 1)  # Lightning starts rank 1 by re-running the command line


@pytest.mark.slow
def test_ddp_on_two_cpu_ranks(tmp_path, tiny_parts):
    enc, llm = tiny_parts
    make_pool(tmp_path / "train", "a", range(30), max_samples=10)  # 3 shards over 2 ranks x 1 worker: uneven
    make_pool(tmp_path / "bench", "v", range(100, 111), max_samples=4)  # 11 held-out samples: ranks get unequal batches
    for pool in ("noise", "ir"):
        make_pool(tmp_path / "demo" / "shards" / pool, pool, range(4))
    (tmp_path / "weights").mkdir()
    common = ["--config", str(REPO / "configs" / "it_fresh.yaml"), "--config", str(REPO / "configs" / "demo.yaml"),
              "--model.encoder", str(enc), "--model.llm", str(llm),
              "--model.init_from", "null",  # tiny bases: models/demo/pretrain is the demo bases'
              "--model.max_new_tokens", "4", "--trainer.accelerator", "cpu",
              "--data.train_pools", json.dumps([{"name": "a", "shards": str(tmp_path / "train")}]),
              "--data.text_pool", "null", "--data.text_ratio", "0",
              "--data.val_sets", json.dumps({"bench": str(tmp_path / "bench")}),
              "--data.batching", json.dumps({"batch_size": 3}), "--data.val_batching", json.dumps({"batch_size": 2}),
              "--data.max_seconds", "2.0", "--data.num_workers", "1"]
    _run(["fit", *common, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "2",
          "--data.batches_per_epoch", "3", "--trainer.callbacks+=test_distributed.DumpRankWeights",
          "--trainer.callbacks.folder", str(tmp_path / "weights")], cwd=tmp_path)
    ranks = [torch.load(tmp_path / "weights" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 6  # 2 epochs x 3 batches on each rank
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for name, value in ranks[0]["state"].items():  # DDP averaged the gradients: the ranks never diverged
        assert torch.equal(value, ranks[1]["state"][name]), name

    ckpt = tmp_path / "demo" / "runs" / "checkpoints" / "last.ckpt"
    reports = {}
    for devices, strategy in (("1", "auto"), ("2", "ddp")):
        out = tmp_path / f"report{devices}"
        _run(["validate", *common, "--ckpt_path", str(ckpt), "--trainer.devices", devices, "--trainer.strategy",
              strategy, "--model.report_dir", str(out)], cwd=tmp_path, ranks=int(devices))
        reports[devices] = json.loads((out / "wer.json").read_text())["benchmarks"]["bench"]
    assert reports["1"]["samples"] == reports["2"]["samples"] == 11  # each sample once, no pad row counted
    assert reports["2"]["words"] == reports["1"]["words"] > 0
    assert reports["2"]["errors"] == reports["1"]["errors"]
    assert reports["2"]["wer"] == reports["1"]["wer"]
    assert reports["2"]["audio_seconds"] == reports["1"]["audio_seconds"] > 0  # pad rows' audio never counted
