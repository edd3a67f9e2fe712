"""tools/bench_train.py: a tiny CPU run of every variant and the flagship shapes built on the
meta device (the FLOPs formulas are tests/test_flops.py's)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_train.py"  # a script, not a package: loaded by path
_spec = importlib.util.spec_from_file_location("bench_train", TOOL)
bench = sys.modules["bench_train"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_tiny_cpu_run_reports_every_variant(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == bench.VARIANT_NAMES
    for name, r in rows.items():
        assert r["status"] == "ok", name
        assert len(r["step_ms_all"]) == 2
        assert all(math.isfinite(t) and t > 0 for t in r["step_ms_all"]), name
        assert math.isfinite(r["step_ms"]) and r["step_ms"] > 0
        assert r["tokens_per_sec"] > 0 and r["audio_sec_per_sec"] > 0 and 0 < r["mfu"] < 1
        assert r["trainable_params"] < r["total_params"]
    # 30 s fills the window either way; trimming 10 s clips drops 2/3 of the audio slots
    assert rows["baseline"]["audio_tokens_per_row"] == rows["trim"]["audio_tokens_per_row"] == 375
    assert rows["short"]["audio_tokens_per_row"] == 375
    assert rows["short_trim"]["audio_tokens_per_row"] == 125
    assert rows["short_trim"]["llm_tokens_per_row"] < rows["short"]["llm_tokens_per_row"]
    assert rows["short_trim"]["flops_per_step"] < rows["short"]["flops_per_step"]
    assert rows["short_trim"]["flops_by_part"]["encoder"] == rows["short"]["flops_by_part"]["encoder"]
    assert rows["grad_ckpt"]["flops_per_step"] == rows["baseline"]["flops_per_step"]  # recompute is not counted
    # FSDP as the overlay trains (one rank, gloo): the same model FLOPs; its process group is gone again
    assert rows["fsdp"]["flops_per_step"] == rows["baseline"]["flops_per_step"]
    assert rows["fsdp"]["trainable_params"] == rows["baseline"]["trainable_params"]
    assert not torch.distributed.is_initialized()
    wrapped, checkpointed = bench.fsdp_layers()
    assert {c.__name__ for c in wrapped} == {"WhisperEncoderLayer", "Qwen3DecoderLayer"}
    assert {c.__name__ for c in checkpointed} == {"Qwen3DecoderLayer"}
    stdout = capsys.readouterr().out
    assert "short_trim" in stdout and "speed-up vs baseline" in stdout


def test_flagship_builds_on_meta_with_the_reference_counts():
    from borealis.shapes import build_meta_model

    model = bench.build_model(bench.flagship_config(trim_audio_tokens=False), torch.device("meta"))
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.device.type == "meta" for t in tensors)  # nothing left on the CPU (e.g. the mel filters)
    total = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    reference = build_meta_model()
    assert total == sum(p.numel() for p in reference.parameters())  # 5,206.90M
    assert sum(p.numel() for p in trainable) == sum(p.numel() for p in reference.parameters() if p.requires_grad)
    assert round(sum(p.numel() for p in trainable) / 1e6, 2) == 548.14
    assert all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    assert bench.matmul_params(model.config)["lora"] == 528_482_304


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bad_settings_are_gathered_into_one_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--steps", "0", "--seconds", "40"])
    err = capsys.readouterr().err
    assert "--steps=0" in err and "--seconds=40.0" in err


def test_out_of_memory_or_failure_is_a_row_not_a_crash(monkeypatch):
    def oom(variant, args, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    args, device = bench.parse_args(["--tiny", "--device", "cpu"])
    variant = bench.make_variants(30, 10)[0]
    monkeypatch.setattr(bench, "run_variant", oom)
    row = bench.measure(variant, args, device)
    assert row["status"] == "oom"
    ok = {"variant": "short_trim", "seconds": 10.0, "batch_size": 4, "step_ms": 50.0, "audio_sec_per_sec": 800.0,
          "mfu": 0.4, "status": "ok"}
    table = bench.format_table([row, ok])
    assert "oom" in table and "n/aM" not in table and "1.00x" in table  # the first timed row is the baseline
    assert "short_trim 50.0 ms/step" in bench.summary_line([row, ok], "cpu")

    def broken(variant, args, device):
        raise RuntimeError("no kernel for this")

    monkeypatch.setattr(bench, "run_variant", broken)
    assert bench.measure(variant, args, device)["status"] == "error: RuntimeError: no kernel for this"


def test_demo_shape_compares_the_reference_pipeline_on_real_samples(tmp_path, tiny_parts, capsys):
    """--shape demo on a small real corpus: every pipeline trains on the same samples, the
    accounting holds, trimming and the batch window cut work, and the table prints the ratio."""
    from borealis.testing import make_pool

    enc, llm = tiny_parts
    make_pool(tmp_path / "a", "a", range(16), seconds=lambda i: 0.2 + 0.1 * (i % 7))
    make_pool(tmp_path / "b", "b", range(16), language="ru", seconds=lambda i: 0.3 + 0.2 * (i % 4))
    config = tmp_path / "demo.yaml"
    config.write_text(json.dumps({
        "model": {"encoder": str(enc), "llm": str(llm), "lora": None, "freeze_encoder": False},
        "data": {"train_pools": [{"name": "a", "shards": str(tmp_path / "a")},
                                 {"name": "b", "shards": str(tmp_path / "b"), "weight": 0.5}],
                 "batching": {"batch_size": 4}, "min_seconds": 0.1, "max_seconds": 2.0}}))  # JSON is YAML
    out = tmp_path / "demo.json"
    report = bench.main(["--shape", "demo", "--config", str(config), "--samples", "12", "--warmup", "0",
                         "--bucket-size", "8", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == report["rows"]
    rows = {r["pipeline"]: r for r in report["rows"]}
    assert list(rows) == bench.PIPELINE_NAMES
    assert rows["reference"]["batches"] == 3 and rows["reference"]["budget"] is None  # 12 samples in fixed 4s
    for r in rows.values():
        assert r["samples"] == 12 and r["seconds"] > 0 and r["samples_per_sec"] > 0
        assert 0 <= r["llm_padding_share"] <= r["llm_waste_share"] < 1 and 0 <= r["encoder_padding_share"] < 1
    # the reference pipeline fills every prompt with the window's 25 slots (tiny window 2 s, k = 4): silence the LLM reads
    assert rows["reference"]["llm_waste_share"] > rows["trim"]["llm_waste_share"]
    assert rows["trim"]["llm_tokens"] < rows["reference"]["llm_tokens"] == rows["batched_splice"]["llm_tokens"]
    assert rows["bucket"]["encoder_padding_share"] == rows["reference"]["encoder_padding_share"]  # the full window
    assert rows["encoder_window"]["encoder_padding_share"] < rows["bucket"]["encoder_padding_share"]
    assert (rows["borealis"]["flops"] < rows["encoder_window"]["flops"] < rows["bucket"]["flops"]
            == rows["trim"]["flops"] < rows["reference"]["flops"])  # bucketing regroups the same rows
    assert rows["borealis"]["budget"] == {"max_seconds_per_batch": 4 * 2.0}  # the reference batch's audio
    tokens_run = bench.main(["--shape", "demo", "--config", str(config), "--samples", "12", "--warmup", "0",
                             "--bucket-size", "12", "--budget", "tokens", "--pipelines", "trim", "bucket"])
    rows = {r["pipeline"]: r for r in tokens_run["rows"]}
    assert rows["bucket"]["budget"] == {
        "max_tokens_per_batch": 4 * report["tokens_per_sample"]["demo"]["max_untrimmed_tokens"]}
    assert rows["bucket"]["llm_padding_share"] < rows["trim"]["llm_padding_share"]  # one sorted bucket
    tokens = report["tokens_per_sample"]
    assert tokens["demo"]["untrimmed"]["audio_tokens"] == 25 > tokens["demo"]["trimmed"]["audio_tokens"]
    assert tokens["librispeech_like"]["untrimmed"]["audio_tokens"] == 375
    assert 11 < tokens["librispeech_like"]["mean_seconds"] < 13.5
    assert 140 < tokens["librispeech_like"]["trimmed"]["audio_tokens"] < 170  # ~12.3 s / 80 ms
    stdout = capsys.readouterr().out
    first = next(line for line in stdout.splitlines() if line.startswith("bench_train demo on cpu: "))
    assert first.startswith("bench_train demo on cpu: packed ") and " vs reference " in first  # the last pipeline vs the first
    assert "librispeech_like" in stdout


def test_naive_splice_equals_the_batched_one(tiny_model):
    """The reference pipeline's per-sample loop and Borealis' masked_scatter give the same embeddings."""
    from test_modeling import _batch

    batch = _batch(tiny_model.eval(), seconds=(1.0, 0.6))
    with torch.no_grad():
        torch.testing.assert_close(
            bench.naive_embed(tiny_model, batch["input_ids"], batch["waveforms"], batch["audio_lengths"]),
            tiny_model.embed(batch["input_ids"], batch["waveforms"], batch["audio_lengths"]))


def test_suite_tiny_cpu_rows_share_samples_and_report_ratios(tmp_path):
    out = tmp_path / "suite.json"
    bench.main(["--suite", "--tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--suite-samples", "2",
                "--seconds", "2", "--text-tokens", "8", "--json", str(out)])
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == bench.SUITE_ROWS
    assert rows["seed"]["micro_batches"] == 2 and rows["packed"]["micro_batches"] == 1  # batch 1 vs one packed batch
    assert rows["seed"]["speedup"] == 1.0
    for r in rows.values():
        assert r["samples"] == 2 and r["step_ms"] > 0 and math.isfinite(r["loss"]) and r["tokens_per_sec"] > 0
    assert rows["packed"]["padding_share"] <= rows["seed"]["padding_share"] + 0.1  # packing adds at most the row tail


def test_demo_defaults_to_the_flagship_under_the_demo_overlay(monkeypatch):
    """No --config: configs/it_fresh.yaml, then configs/demo.yaml, merged as `make demo` loads them.
    The overlay sets the LoRA rank; the dropout, target modules and frozen encoder are the flagship's;
    the batching is the demo's packed one, which sets the budgets of every pipeline."""
    monkeypatch.chdir(bench.REPO_ROOT)  # the configs' paths are relative to the checkout, as for `make demo`
    args, _ = bench.parse_args(["--shape", "demo"])
    assert args.config == [bench.REPO_ROOT / "configs" / "it_fresh.yaml", bench.REPO_ROOT / "configs" / "demo.yaml"]
    model, data = bench.demo_settings(args.config)
    assert (model["encoder"], model["llm"]) == ("models/demo/whisper", "models/demo/qwen3")  # the demo's bases
    assert model["lora"] == {"r": 64, "alpha": 128, "dropout": 0.0,  # the demo's rank, the flagship's dropout
                             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"]}
    assert model["freeze_encoder"] is True and model["adapter"] == "simple" and model["downsample_factor"] == 4
    assert data["batching"] == {"pack": True, "max_tokens_per_row": 640, "max_tokens_per_batch": 2560}
    assert data["max_seconds"] == 3.0 and all(p["shards"].startswith("demo/shards/") for p in data["train_pools"])

    tokens = {"demo": {"trimmed": {"llm_tokens": 80.0}, "max_untrimmed_tokens": 90, "mean_seconds": 2.0}}
    bench.batch_budgets(args, data["batching"], data["max_seconds"], tokens)
    assert args.batch_size == 32  # 2560 packed tokens / 80 per trimmed sample: the samples a packed step holds
    assert (args.max_tokens_per_batch, args.max_tokens_per_row) == (2560, 640)  # the demo's packed batching
    assert args.max_seconds_per_batch == 32 * 3.0  # the reference batch's audio, every clip padded to 3 s

    given, _ = bench.parse_args(["--shape", "demo", "--batch-size", "5", "--max-tokens-per-row", "700"])
    bench.batch_budgets(given, data["batching"], data["max_seconds"], tokens)
    assert (given.batch_size, given.max_tokens_per_batch, given.max_tokens_per_row) == (5, 2560, 700)
    assert given.max_seconds_per_batch == 5 * 3.0
    with pytest.raises(ValueError, match="pass --batch-size"):
        bench.batch_budgets(bench.parse_args(["--shape", "demo"])[0], {"pack": False}, 3.0, tokens)


def test_demo_stacks_configs_and_builds_the_merged_model(tmp_path, tiny_parts, monkeypatch):
    """Two --config files, merged: the model the pipelines build has the base's LoRA targets and
    dropout at the overlay's rank, and the packed pipeline runs the overlay's packed batching."""
    from borealis.testing import make_pool

    enc, llm = tiny_parts
    make_pool(tmp_path / "a", "a", range(12), seconds=lambda i: 0.2 + 0.1 * (i % 7))
    base, overlay = tmp_path / "base.yaml", tmp_path / "overlay.yaml"
    base.write_text(json.dumps({  # JSON is YAML
        "model": {"encoder": "hub/whisper", "llm": "hub/qwen3", "freeze_encoder": True,
                  "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"train_pools": [{"name": "big", "shards": "shards/big"}], "max_seconds": 30.0,
                 "batching": {"pack": True, "max_tokens_per_row": 4096, "max_tokens_per_batch": 8192}}}))
    overlay.write_text(json.dumps({
        "model": {"encoder": str(enc), "llm": str(llm), "lora": {"r": 4, "alpha": 8}},
        "data": {"train_pools": [{"name": "a", "shards": str(tmp_path / "a")}], "min_seconds": 0.1,
                 "max_seconds": 2.0, "batching": {"max_tokens_per_row": 200, "max_tokens_per_batch": 400}}}))
    built = []
    from_parts = bench.BorealisForConditionalGeneration.from_parts
    monkeypatch.setattr(bench.BorealisForConditionalGeneration, "from_parts",
                        lambda *a, **kw: built.append(kw) or from_parts(*a, **kw))
    report = bench.main(["--shape", "demo", "--config", str(base), "--config", str(overlay), "--samples", "12",
                         "--warmup", "0", "--pipelines", "reference", "packed"])
    merged = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}  # the overlay's rank
    assert [kw["lora"] for kw in built] == [merged, merged]  # one model per pipeline
    assert all(kw["freeze_encoder"] is True for kw in built)
    rows = {r["pipeline"]: r for r in report["rows"]}
    assert rows["packed"]["budget"] == {"max_tokens_per_batch": 400, "max_tokens_per_row": 200}
    batch = round(400 / report["tokens_per_sample"]["demo"]["trimmed"]["llm_tokens"])  # samples a packed batch holds
    assert report["settings"]["batch_size"] == batch
    assert rows["reference"]["batches"] == math.ceil(12 / batch)
    assert report["settings"]["config"] == [str(base), str(overlay)] and str(overlay) in report["shapes"]
