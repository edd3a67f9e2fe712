"""tools/bench_validate.py on tiny models: the two modes score the same samples once, and its
figures add up (audio seconds = the shards' audio, RTFx = audio / wall, ratio = RTFx / RTFx)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import lightning
import pytest
import torch
from borealis.testing import make_pool

from borealis.shards import SAMPLE_RATE, iter_shard, list_shards

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FLAGSHIP, DEMO = CONFIGS / "it_fresh.yaml", CONFIGS / "demo.yaml"  # the demo is an overlay on the flagship
TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_validate.py"  # a script, not a package: loaded by path
_spec = importlib.util.spec_from_file_location("bench_validate", TOOL)
tool = sys.modules["bench_validate"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def _checkpoint(path: Path, tiny_parts) -> Path:
    """A Lightning-style checkpoint of the random tiny model with the demo's trainable set: the model
    the merged configs build (LoRA and the adapter on a frozen encoder), seeded by their seed_everything."""
    enc, llm = tiny_parts
    module = tool.build_cli([FLAGSHIP, DEMO], ["--model.encoder", str(enc), "--model.llm", str(llm),
                                               "--model.init_from", "null"]).model  # tiny bases
    module.configure_model()
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)  # the trainable weights only, as borealis fit writes them
    torch.save(checkpoint, path)
    return path


def _audio_seconds(pool: Path, first: int) -> float:
    clips = [s["audio"].size for shard in list_shards(str(pool)) for s in iter_shard(shard)]
    return sum(clips[:first]) / SAMPLE_RATE


def test_bench_validate_accounting(tmp_path, tiny_parts, capsys):
    enc, llm = tiny_parts
    make_pool(tmp_path / "a", "a", range(7), max_samples=3)   # 3 shards; --limit 5 keeps 5 of 7
    make_pool(tmp_path / "b", "b", range(4), max_samples=3)   # fewer than --limit: all 4
    ckpt = _checkpoint(tmp_path / "last.ckpt", tiny_parts)
    out = tmp_path / "bench.json"
    code = tool.main([
        "--config", str(FLAGSHIP), "--config", str(DEMO), "--ckpt_path", str(ckpt), "--limit", "5", "--repeats", "2", "--json", str(out), "--",
        "--model.encoder", str(enc), "--model.llm", str(llm), "--model.max_new_tokens", "4", "--model.init_from", "null",
        "--trainer.precision", "32-true", "--data.val_batching", json.dumps({"batch_size": 2}),
        "--data.val_sets", json.dumps({"a": str(tmp_path / "a"), "b": str(tmp_path / "b")})])
    assert code == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("bench_validate: RTFx ")
    result = json.loads(out.read_text())
    assert result["batching"] == {"batched": "batch_size 2", "single": "batch_size 1"}
    for name, samples in (("a", 5), ("b", 4)):
        r = result["benchmarks"][name]
        assert r["samples"] == r["hypotheses"] == samples  # each sample scored once, in both modes (checked equal)
        assert r["audio_seconds"] == pytest.approx(_audio_seconds(tmp_path / name, samples), abs=1e-9)
        assert 0 <= r["differ"] <= samples
        for mode in ("batched", "single"):
            assert math.isfinite(r[mode]["wer"]) and r[mode]["words"] > 0
            assert r[mode]["seconds"] > 0
            assert r[mode]["rtfx"] == pytest.approx(r["audio_seconds"] / r[mode]["seconds"])
        assert r["ratio"] == pytest.approx(r["batched"]["rtfx"] / r["single"]["rtfx"])
    o, rows = result["overall"], result["benchmarks"].values()
    assert o["samples"] == 9 and o["hypotheses"] == 9
    assert o["audio_seconds"] == pytest.approx(sum(r["audio_seconds"] for r in rows))
    for mode in ("batched", "single"):  # the epoch's wall time covers every benchmark's steps
        assert o[mode]["seconds"] >= sum(r[mode]["seconds"] for r in rows) - 1e-6
        assert o[mode]["rtfx"] == pytest.approx(o["audio_seconds"] / o[mode]["seconds"])
    assert o["ratio"] == pytest.approx(o["batched"]["rtfx"] / o["single"]["rtfx"])
    rounds = result["rounds"]  # 2 alternating rounds; each mode reports its median (here the faster) round
    assert result["repeats"] == 2 and len(rounds["ratio"]) == 2
    for mode in ("batched", "single"):
        assert o[mode]["seconds"] == min(rounds["seconds"][mode])
        assert rounds["unstable"][mode] == 0  # greedy decoding repeats itself
    for mode in ("batched", "single"):  # the phases add up to the median round's wall time
        phases = result["phases"][mode]
        assert set(phases) == {"log-mel", "encoder+adapter", "shared prefix", "llm generate", "other"}
        assert sum(phases.values()) == pytest.approx(o[mode]["seconds"])
        assert phases["encoder+adapter"] > 0 and phases["llm generate"] > 0 and phases["other"] > 0
    assert rounds["ratio"] == pytest.approx([s / b for b, s in zip(*(rounds["seconds"][m] for m in ("batched", "single")))])


def test_bench_validate_missing_inputs(tmp_path, capsys):
    assert tool.main(["--config", str(DEMO), "--ckpt_path", str(tmp_path / "missing.ckpt")]) == 2
    assert "not found: --ckpt_path" in capsys.readouterr().err
    assert tool.main(["--config", str(tmp_path / "none.yaml"), "--ckpt_path", str(DEMO), "--limit", "0",
                      "--repeats", "0"]) == 2
    err = capsys.readouterr().err
    assert "not found: --config" in err and "--limit must be >= 1" in err and "--repeats must be >= 1" in err
