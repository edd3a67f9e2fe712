"""Fixtures: tiny, deterministic Whisper/Qwen3 parts built in code and saved to local folders.

Everything loads through the same `from_pretrained` code the flagship uses with hub ids;
nothing is downloaded (HF_HUB_OFFLINE=1). The configs, tokenizer and test data come from
`borealis.testing`.
"""

from __future__ import annotations

import os

import pytest
import torch

from borealis.testing import build_tokenizer, tiny_qwen3_config, tiny_whisper_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # setup.cfg runs 2 workers: one torch thread each, not two
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Run the `slow` end-to-end tests first (the order is otherwise kept): the two workers then
    end on short tests, instead of one worker finishing a minute-long run while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory):
    """(encoder_dir, llm_dir): a random tiny Whisper and a tiny Qwen3 + tokenizer on disk."""
    from transformers import Qwen3ForCausalLM, WhisperModel

    root = tmp_path_factory.mktemp("tiny_parts")
    torch.manual_seed(0)
    WhisperModel(tiny_whisper_config()).save_pretrained(root / "whisper")
    tok = build_tokenizer()
    Qwen3ForCausalLM(tiny_qwen3_config(len(tok))).save_pretrained(root / "qwen3")
    tok.save_pretrained(root / "qwen3")
    return root / "whisper", root / "qwen3"


@pytest.fixture()
def tiny_model(tiny_parts):
    from borealis.modeling import BorealisForConditionalGeneration, LoraSettings

    torch.manual_seed(0)
    enc, llm = tiny_parts
    return BorealisForConditionalGeneration.from_parts(
        str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0))
