"""tools/bench_train.py: a tiny CPU run of every variant, the FLOPs formulas checked by hand
and against torch's FLOP counter, and the flagship shapes built on the meta device."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from conftest import load_tool

os.environ.setdefault("HF_HUB_OFFLINE", "1")
bench = load_tool("bench_train")


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
    stdout = capsys.readouterr().out
    assert "short_trim" in stdout and "speed-up vs baseline" in stdout


def _toy_config(lora: dict | None):
    from transformers import Qwen3Config, WhisperConfig

    from borealis.modeling import BorealisConfig

    encoder = WhisperConfig(num_mel_bins=2, d_model=4, encoder_layers=1, encoder_attention_heads=1,
                            encoder_ffn_dim=8, max_source_positions=6)
    llm = Qwen3Config(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=2)
    return BorealisConfig(encoder_config=encoder, llm_config=llm, downsample_factor=2, lora=lora,
                          audio_token_id=7, audio_start_id=8, audio_end_id=9)


def test_step_flops_by_hand():
    config = _toy_config({"r": 1, "alpha": 2, "dropout": 0.0, "target_modules": ["q_proj", "down_proj"]})
    f = bench.step_flops(config, seq_lens=[5, 3], num_clips=2)
    # encoder, per clip (M=2, D=4, F=8, T=6 frames, 12 mel frames), forward only:
    #   conv1 2*(3*2*4)*12 = 576; conv2 + layer 2*(3*4*4 + 4*16 + 2*4*8)*6 = 2112; attention 4*36*4 = 576
    assert f.encoder == 2 * (576 + 2112 + 576)
    # adapter: N = 6/2 = 3 frames per clip, w_in 2*4*4 = 32 (4x), w_out 4*4 = 16 (6x)
    assert f.adapter == 2 * 3 * (4 * 32 + 6 * 16)
    # projections q 4x4, k 4x2, v 4x2, o 4x4, gate/up/down 4x8 = 144 weights; S = 5 + 3 tokens
    assert f.llm_linear == 4 * 144 * 8
    assert f.lora == 6 * (1 * (4 + 4) + 1 * (8 + 4)) * 8  # q_proj and down_proj, r = 1
    assert f.attention == 6 * (2 * 2) * (5 * 5 + 3 * 3)  # 1 layer, heads * head_dim = 4
    assert f.lm_head == 4 * 10 * 4 * 8
    assert f.total == 15536

    full = bench.step_flops(_toy_config(None), seq_lens=[5, 3], num_clips=2)  # full fine-tuning
    assert (full.llm_linear, full.lora, full.lm_head) == (6 * 144 * 8, 0, 6 * 10 * 4 * 8)


@pytest.mark.parametrize(("seconds", "trim"), [(30.0, False), (10.0, True)])
def test_step_flops_match_torch_flop_counter(seconds, trim):
    """Autograd's own count of one tiny step equals the formulas (frozen parts get no weight grads).

    Eager attention makes the score/value matmuls visible to the counter; it computes the full
    square, twice the causal half that `step_flops` counts. The log-mel matmul is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    config = bench.tiny_config(trim)
    config.encoder_config._attn_implementation = "eager"
    config.llm_config._attn_implementation = "eager"
    model = bench.build_model(config, torch.device("cpu"))
    batch = bench.synthetic_batch(config, 2, seconds, 20, torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
    features = sum(counter.get_flop_counts()["BorealisForConditionalGeneration.features"].values())
    f = bench.step_flops(config, [batch["input_ids"].shape[1]] * 2, num_clips=2)
    assert counter.get_total_flops() - features == f.total + f.attention


def test_flagship_builds_on_meta_with_the_paper_counts():
    from borealis.paper import build_meta_model

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
