"""borealis/hf_remote: the one model implementation, which the package imports and export copies."""

import ast
from pathlib import Path

import pytest
import torch

import borealis.hf_remote
from borealis import adapters, features, modeling, prompts
from borealis.hf_remote import (adapters_borealis, configuration_borealis, features_borealis, modeling_borealis,
                                prompts_borealis)

PACKAGE = Path(borealis.hf_remote.__file__).parent
# what the remote code may import on a machine without borealis (peft only for a kept LoRA adapter)
ALLOWED_ROOTS = {"__future__", "collections", "dataclasses", "math", "os", "torch", "transformers", "peft"}


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_remote_code_imports_torch_transformers_and_its_siblings_only(path):
    tree = ast.parse(path.read_text())
    absolute = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    absolute |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module}
    assert absolute <= ALLOWED_ROOTS, absolute
    relative = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0}
    assert all((PACKAGE / f"{m}.py").is_file() for m in relative), relative  # siblings, copied with it


def test_the_package_names_are_the_remote_codes_objects():
    assert features.WhisperLogMel is features_borealis.WhisperLogMel
    assert features.window_frames is features_borealis.window_frames
    assert adapters.stack_frames is adapters_borealis.stack_frames and adapters.ADAPTERS is adapters_borealis.ADAPTERS
    assert prompts.PromptBuilder is prompts_borealis.PromptBuilder
    assert prompts.chat_problem is prompts_borealis.chat_problem
    assert prompts.num_audio_tokens is prompts_borealis.num_audio_tokens
    assert modeling.BorealisConfig is configuration_borealis.BorealisConfig  # one config, one model_type
    assert modeling.run_encoder is modeling_borealis.run_encoder


def test_training_model_inherits_inference_unchanged():
    """Training adds LoRA, loading and the loss; the splice, prompts and generation are the remote code's."""
    training, inference = modeling.BorealisForConditionalGeneration, modeling_borealis.BorealisForConditionalGeneration
    assert issubclass(training, inference)
    shared = ("log_mel", "encode_audio", "embed", "forward", "encode_prompt", "generate", "_prefill_shared_prefix",
              "_client_batch", "decode", "prompts", "num_audio_tokens", "encoder_frames")
    assert not [name for name in shared if name in vars(training)]


def test_remote_prompts_follow_the_chat_rule(tiny_model):
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model.encode_prompt([{"role": "user", "content": "no audio"}], num_samples=16000)
    with pytest.raises(ValueError, match="messages\\[0\\] must be"):
        tiny_model.encode_prompt([{"role": "narrator", "content": prompts.AUDIO_PLACEHOLDER}], num_samples=16000)
    ids = tiny_model.encode_prompt([{"role": "user", "content": prompts.AUDIO_PLACEHOLDER}], num_samples=16000)
    assert ids.count(tiny_model.config.audio_token_id) == tiny_model.num_audio_tokens(16000)


def test_remote_checks_the_tokenizer_against_the_config(tiny_model):
    tiny_model._check_tokenizer()  # the tokenizer the model was built with
    tiny_model.config.audio_token_id += 1
    with pytest.raises(ValueError, match="the tokenizer does not match config.json"):
        tiny_model._check_tokenizer()


def test_placeholder_without_audio_raises(tiny_model):
    ids = torch.tensor([[1, 2, tiny_model.config.audio_token_id]])
    with pytest.raises(ValueError, match="tokens but no audio was given"):
        tiny_model.embed(ids)
