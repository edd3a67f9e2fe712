"""The flagship's shapes and parameter counts, measured on the meta device.

Builds Whisper-large-v3 and Qwen3-4B from their known hyper-parameters (no download, no
memory: every tensor is on `meta`), assembles Borealis-5B, and measures the numbers the
reference write-up reports: token flow 1500x1280 -> 375x5120 -> 375x2560, a 19.66M adapter,
377 prompt tokens per 30 s without trimming, ~5B parameters, ~0.5B trainable.

    python -m borealis.shapes          # prints the table
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

import torch
from transformers import Qwen3Config, WhisperConfig

from borealis.adapters import stack_frames
from borealis.modeling import BorealisConfig, BorealisForConditionalGeneration, LoraSettings
from borealis.prompts import num_audio_tokens

QWEN3_TOKENIZER_VOCAB = 151_669  # len(AutoTokenizer("Qwen/Qwen3-4B")): 151643 BPE + 26 specials
N_AUDIO_TOKENS_ADDED = 3


def whisper_large_v3_config() -> WhisperConfig:
    """openai/whisper-large-v3 hyper-parameters."""
    return WhisperConfig(
        num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
        decoder_layers=32, decoder_attention_heads=20, decoder_ffn_dim=5120, max_source_positions=1500,
        max_target_positions=448, vocab_size=51866)


def qwen3_4b_config(vocab_size: int = QWEN3_TOKENIZER_VOCAB + N_AUDIO_TOKENS_ADDED) -> Qwen3Config:
    """Qwen/Qwen3-4B hyper-parameters, embeddings resized to the tokenizer + audio tokens."""
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rope_theta=1_000_000, tie_word_embeddings=True)


def build_meta_model(lora: LoraSettings | None = LoraSettings(), trim_audio_tokens: bool = False,
                     adapter: str = "simple") -> BorealisForConditionalGeneration:
    """Borealis-5B with every weight on the meta device."""
    vocab = QWEN3_TOKENIZER_VOCAB + N_AUDIO_TOKENS_ADDED
    config = BorealisConfig(
        encoder_config=whisper_large_v3_config(), llm_config=qwen3_4b_config(vocab), adapter=adapter,
        trim_audio_tokens=trim_audio_tokens, lora=asdict(lora) if lora else None,
        audio_token_id=QWEN3_TOKENIZER_VOCAB, audio_start_id=QWEN3_TOKENIZER_VOCAB + 1,
        audio_end_id=QWEN3_TOKENIZER_VOCAB + 2)
    with torch.device("meta"):
        return BorealisForConditionalGeneration(config)


def tiny_config(trim_audio_tokens: bool) -> BorealisConfig:
    """The flagship's geometry at tiny widths: the real 30 s window (1500 encoder frames -> 375
    slots), large-v3's 128 mel bins, k = 4, LoRA on all 7 projections, Qwen3's GQA; for step
    costs and FLOP formulas that must mean the same as at full size, on a CPU."""
    encoder = WhisperConfig(
        num_mel_bins=128, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,  # unused by Borealis
        max_source_positions=1500, max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1)  # special ids inside that vocab (the decoder is never built)
    vocab = 256  # filler ids; the 3 audio tokens follow
    llm = Qwen3Config(
        vocab_size=vocab + N_AUDIO_TOKENS_ADDED, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,  # GQA like Qwen3-4B (32q/8kv)
        max_position_embeddings=1024, tie_word_embeddings=True)
    return BorealisConfig(
        encoder_config=encoder, llm_config=llm, adapter="simple", trim_audio_tokens=trim_audio_tokens,
        lora=LoraSettings(r=8, alpha=16), audio_token_id=vocab, audio_start_id=vocab + 1, audio_end_id=vocab + 2)


def flagship_numbers(lora: LoraSettings | None = LoraSettings()) -> dict[str, object]:
    """Measure the reference write-up's headline numbers on a meta-device Borealis-5B."""
    model = build_meta_model(lora)
    cfg = model.config
    with torch.device("meta"):
        features = torch.empty(1, cfg.encoder_config.num_mel_bins, 2 * cfg.encoder_config.max_source_positions)
        encoded = model.encoder(features).last_hidden_state
        stacked = stack_frames(encoded, cfg.downsample_factor)
        adapted = model.adapter(stacked)
    n_30s = num_audio_tokens(30 * 16000, downsample_factor=cfg.downsample_factor,
                             max_source_positions=cfg.encoder_config.max_source_positions, trim=False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "encoder_out": tuple(encoded.shape[1:]),
        "stacked": tuple(stacked.shape[1:]),
        "adapter_out": tuple(adapted.shape[1:]),
        "adapter_params": sum(p.numel() for p in model.adapter.parameters()),
        "vocab": model.llm.get_input_embeddings().weight.shape[0],
        "prompt_tokens_30s": n_30s + 2,  # <|start_of_audio|> + N x <|AUDIO|> + <|end_of_audio|>
        "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
        "llm_params": sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" not in n),
        "lora_params": sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n),
        "total_params": total,
        "trainable_params": trainable,
        "lora": asdict(lora) if lora else None,
    }


def format_table(numbers: dict[str, object]) -> str:
    """The numbers beside the reference write-up's, one row each."""
    reference = {
        "encoder_out": "1500 x 1280", "stacked": "375 x 5120", "adapter_out": "375 x 2560",
        "adapter_params": "19.66M", "vocab": "151669 + added", "prompt_tokens_30s": "377",
        "total_params": "~5B", "trainable_params": "~500M",
    }
    rows = []
    for key, value in numbers.items():
        if key == "lora":
            continue
        if isinstance(value, tuple):
            shown = " x ".join(str(v) for v in value)
        elif key.endswith("_params"):
            shown = f"{value / 1e6:,.2f}M"
        else:
            shown = str(value)
        rows.append((key, shown, reference.get(key, "")))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'quantity':<{width}}  {'measured':>16}  reference", "-" * (width + 35)]
    lines += [f"{k:<{width}}  {v:>16}  {s}" for k, v, s in rows]
    lines.append(f"LoRA: {numbers['lora']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lora-r", type=int, default=LoraSettings.r, help="LoRA rank (0 = full fine-tuning)")
    parser.add_argument("--lora-alpha", type=int, default=LoraSettings.alpha, help="LoRA alpha")
    args = parser.parse_args(argv)
    lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha) if args.lora_r > 0 else None
    print(format_table(flagship_numbers(lora)))


if __name__ == "__main__":
    main()
