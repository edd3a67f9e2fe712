"""Tests for borealis/demo/models.py: the tiny Whisper, Qwen3 and tokenizer reload offline
through `from_pretrained`, and bad sizes fail naming the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from borealis.demo.models import (
    Qwen3Size,
    WhisperSize,
    build_tiny_qwen3,
    build_tiny_whisper,
    train_tokenizer,
    whisper_config,
)
from borealis.demo.plan import Counts, plan_corpus


def test_tiny_models_and_tokenizer_reload_offline(tmp_path):
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        WhisperFeatureExtractor,
        WhisperModel,
    )

    plan = plan_corpus(0, Counts(asr=50, instruct=10, text=10, bench=1))
    tok = train_tokenizer(plan.train_texts, vocab_size=600)
    whisper = build_tiny_whisper(tmp_path / "whisper", WhisperSize(dim=32, layers=1, heads=2, ffn=64))
    qwen = build_tiny_qwen3(tmp_path / "qwen3", tok, Qwen3Size(dim=32, layers=1, heads=2, kv_heads=1, head_dim=16,
                                                               ffn=64))
    assert 0 < whisper["encoder"] < whisper["total"] and qwen["total"] > 0

    fe = WhisperFeatureExtractor.from_pretrained(tmp_path / "whisper")
    enc = WhisperModel.from_pretrained(tmp_path / "whisper").get_encoder()
    feats = fe(np.zeros(16000, dtype=np.float32), sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape == (1, 80, 300)  # 3 s window
    assert enc(feats).last_hidden_state.shape == (1, 150, 32)

    tok2 = AutoTokenizer.from_pretrained(tmp_path / "qwen3")
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen3")
    assert lm.config.vocab_size == len(tok2) == len(tok) and lm.config.tie_word_embeddings
    assert (tok2.eos_token, tok2.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert lm.config.eos_token_id == tok2.convert_tokens_to_ids("<|im_end|>")
    for text in plan.train_texts + ["Transcribe the audio.", "Расшифруй аудио."]:
        assert tok2.decode(tok2(text, add_special_tokens=False)["input_ids"]) == text
    chat = tok2.apply_chat_template([{"role": "user", "content": "два три"}], tokenize=False,
                                    add_generation_prompt=True)
    assert chat == "<|im_start|>user\nдва три<|im_end|>\n<|im_start|>assistant\n"
    assert len(tok2("<|im_start|>user", add_special_tokens=False)["input_ids"]) == 2


def test_the_tests_tokenizer_is_plain_byte_level():
    """`qwen3=False` (borealis.testing.build_tokenizer): GPT-2's split keeps digit runs whole; no chat template."""
    tok = train_tokenizer(["call 12 34", "ноль один"] * 4, vocab_size=300, qwen3=False)
    demo = train_tokenizer(["call 12 34", "ноль один"] * 4, vocab_size=300)
    assert tok.chat_template is None and demo.chat_template is not None
    assert tok.tokenize("12") != demo.tokenize("12") and len(demo.tokenize("12")) == 2  # Qwen3: single digits
    for t in (tok, demo):
        assert (t.eos_token, t.pad_token) == ("<|im_end|>", "<|endoftext|>")
        assert t.decode(t("call 12 34 ноль", add_special_tokens=False)["input_ids"]) == "call 12 34 ноль"


def test_whisper_config_decoder_width_and_init():
    small = WhisperSize(dim=32, layers=2, heads=2, ffn=64)
    assert whisper_config(small).decoder_ffn_dim == 32 and whisper_config(small).init_std == 0.3
    config = whisper_config(small, decoder_ffn=64, init_std=0.02)
    assert (config.decoder_ffn_dim, config.init_std, config.encoder_ffn_dim, config.decoder_layers) == (64, 0.02, 64, 1)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="multiple of 50"):
        build_tiny_whisper(Path("unused"), WhisperSize(max_source_positions=301))
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        build_tiny_whisper(Path("unused"), WhisperSize(heads=3))
    with pytest.raises(ValueError, match="multiple of llm kv heads"):
        build_tiny_qwen3(Path("unused"), train_tokenizer(["a b"], 300), Qwen3Size(heads=4, kv_heads=3))
