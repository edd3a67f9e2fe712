"""borealis.flops: the step FLOPs formulas by hand and against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch

from borealis import flops
from borealis.modeling import BorealisConfig, BorealisForConditionalGeneration
from borealis.prompts import IGNORE_INDEX, num_audio_tokens
from borealis.shapes import tiny_config


def _toy_config(lora: dict | None, freeze_encoder: bool = True):
    from transformers import Qwen3Config, WhisperConfig

    encoder = WhisperConfig(num_mel_bins=2, d_model=4, encoder_layers=1, encoder_attention_heads=1,
                            encoder_ffn_dim=8, max_source_positions=6)
    llm = Qwen3Config(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=2)
    return BorealisConfig(encoder_config=encoder, llm_config=llm, downsample_factor=2, lora=lora,
                          freeze_encoder=freeze_encoder, audio_token_id=7, audio_start_id=8, audio_end_id=9)


def test_step_flops_by_hand():
    config = _toy_config({"r": 1, "alpha": 2, "dropout": 0.0, "target_modules": ["q_proj", "down_proj"]})
    f = flops.step_flops(config, seq_lens=[5, 3], num_clips=2)
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

    full = flops.step_flops(_toy_config(None), seq_lens=[5, 3], num_clips=2)  # full fine-tuning
    assert (full.llm_linear, full.lora, full.lm_head) == (6 * 144 * 8, 0, 6 * 10 * 4 * 8)
    trained = flops.step_flops(_toy_config(None, freeze_encoder=False), seq_lens=[5, 3], num_clips=2)
    # conv1 fwd + weight grad 4*24*12; the rest 6*(48 + 64 + 64)*6; attention fwd + 2x bwd 12*36*4
    assert trained.encoder == 2 * (4 * 24 * 12 + 6 * 176 * 6 + 12 * 36 * 4)
    assert trained.adapter == 2 * 3 * (6 * 32 + 6 * 16)  # w_in needs its input gradient too when the encoder trains


def _build(config: BorealisConfig) -> BorealisForConditionalGeneration:
    """Random weights: frozen ones in bfloat16 (the flagship's base_dtype), trainable ones float32."""
    torch.manual_seed(0)
    model = BorealisForConditionalGeneration(config)
    for param in model.parameters():
        if not param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
    return model.train()


def _batch(config: BorealisConfig, rows: int, seconds: float, text_tokens: int = 20) -> dict[str, torch.Tensor]:
    """Equal rows: 10 filler ids, start + N audio slots + end, 5 filler ids, the labelled answer + 2."""
    g = torch.Generator().manual_seed(0)
    samples = int(seconds * 16_000)
    n = num_audio_tokens(samples, downsample_factor=config.downsample_factor,
                         max_source_positions=config.encoder_config.max_source_positions,
                         trim=config.trim_audio_tokens)
    length = 10 + 1 + n + 1 + 5 + text_tokens + 2
    ids = torch.randint(0, config.audio_token_id, (rows, length), generator=g)
    ids[:, 10], ids[:, 11:11 + n], ids[:, 11 + n] = config.audio_start_id, config.audio_token_id, config.audio_end_id
    labels = torch.full_like(ids, IGNORE_INDEX)
    answer = slice(length - text_tokens - 2, length - 1)  # the answer + <|im_end|>; the final "\n" is not trained
    labels[:, answer] = ids[:, answer]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "waveforms": 0.1 * torch.randn(rows, samples, generator=g), "audio_lengths": torch.full((rows,), samples)}


def _count(config, seconds: float, rows: int = 2, lean: bool = False):
    """torch's count of one training step minus the log-mel, and the formulas' (attention doubled:
    eager attention computes the full square, twice the causal half that step_flops counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    config.encoder_config._attn_implementation = "eager"
    config.llm_config._attn_implementation = "eager"
    model = _build(config)
    counts = flops.matmul_params(config)  # the formulas' weights are the built model's
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == counts["lora"]
    assert sum(m.weight.numel() for m in model.adapter.modules() if isinstance(m, torch.nn.Linear)) == \
        counts["adapter_in"] + counts["adapter_out"]
    if not config.freeze_encoder:
        model.encoder.requires_grad_(True)
    batch = _batch(config, rows, seconds)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model.loss(**batch) if lean else model(**batch).loss
        loss.backward()
    counts = counter.get_flop_counts()  # module names are relative to the outermost module entered
    features = sum(counts["BorealisForConditionalGeneration.features" if not lean else "WhisperLogMel"].values())
    labels = int((batch["labels"][:, 1:] != -100).sum()) if lean else None
    f = flops.step_flops(config, [batch["input_ids"].shape[1]] * rows, num_clips=rows, label_tokens=labels)
    return counter.get_total_flops() - features, f.total + f.attention


@pytest.mark.parametrize(("seconds", "trim"), [(30.0, False), (10.0, True)])
def test_step_flops_match_torch_flop_counter(seconds, trim):
    measured, formula = _count(tiny_config(trim), seconds)
    assert measured == formula


def test_logits_of_labelled_positions_only_match_torch_flop_counter():
    """model.loss (the training step) runs the LM head on the labelled positions alone."""
    config = tiny_config(True)
    measured, formula = _count(config, 10.0, lean=True)
    assert measured == formula
    full = flops.step_flops(config, [200, 200], 2)
    lean = flops.step_flops(config, [200, 200], 2, label_tokens=42)
    assert full.total - lean.total == full.lm_head - lean.lm_head == 4 * 259 * 64 * (400 - 42)


def test_trained_encoder_full_llm_and_deep_adapter_match_torch_flop_counter():
    """The demo's setting (encoder and LLM trained, no LoRA) and the deep adapter ablation.

    The encoder's full attention backward is counted at 2x its forward; torch counts the
    bias-carrying deep adapter's addmm the same as a plain matmul.
    """
    config = tiny_config(True)
    config.freeze_encoder, config.lora, config.adapter = False, None, "deep"
    measured, formula = _count(config, 10.0)
    assert measured == formula


def test_adapter_counts_come_from_the_built_adapter():
    config = tiny_config(False)
    simple = flops.matmul_params(config)
    assert (simple["adapter_in"], simple["adapter_out"]) == (4 * 32 * 64, 64 * 64)
    config.adapter = "deep"
    deep = flops.matmul_params(config)
    assert deep["adapter_out"] == 64 * 64 + 3 * 2 * 64 * 96  # w_out + 3 blocks of 64 -> 96 -> 64


def test_peak_flops_is_unknown_on_cpu_and_looked_up_on_cuda(monkeypatch):
    assert flops.peak_flops(torch.device("cpu"), "bf16-mixed") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert flops.peak_flops(torch.device("cuda", 0), "bf16-mixed") == pytest.approx(989.4e12)
    assert flops.peak_flops(torch.device("cuda", 0), "bf16-true") == pytest.approx(989.4e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert flops.peak_flops(torch.device("cuda", 0), "bf16-mixed") is None
