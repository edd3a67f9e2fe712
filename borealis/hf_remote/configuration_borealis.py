"""Configuration of a Borealis model: the `AutoConfig` half of its remote code.

What: `BorealisConfig`, the `config.json` of every Borealis model directory, both those the
training package saves and those `borealis.export` writes for plain transformers
(`trust_remote_code=True`). Why here: the published model must load without the training
package, so this file imports transformers and its sibling files only.
Cost: none.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass

from transformers import AutoConfig, PretrainedConfig, WhisperConfig

from .adapters_borealis import ADAPTERS
from .prompts_borealis import DEFAULT_SYSTEM_PROMPT

ENCODER_WINDOWS = ("full", "batch")


def check_encoder_window(encoder_window: str, trim_audio_tokens: bool) -> None:
    """Raise ValueError unless `encoder_window` is one of `ENCODER_WINDOWS` and fits the token trimming."""
    if encoder_window not in ENCODER_WINDOWS:
        raise ValueError(f"encoder_window={encoder_window!r} is not one of {list(ENCODER_WINDOWS)}")
    if encoder_window == "batch" and not trim_audio_tokens:
        raise ValueError("encoder_window='batch' needs trim_audio_tokens=True: untrimmed prompts hold the full "
                         "window's audio slots, which a shorter encoder window cannot fill")


class BorealisConfig(PretrainedConfig):
    """Whisper encoder -> k-frame stacking -> adapter -> causal LM.

    Args:
        encoder_config: the Whisper config (dict or `WhisperConfig`).
        llm_config: the causal LM config (dict with `model_type`, or a `PretrainedConfig`).
        downsample_factor: k, encoder frames stacked into one LLM position.
        adapter: `simple` (the reference 19.7M MLP) or `deep` (~80M residual MLP).
        trim_audio_tokens: N follows the real audio length; off = 375 slots per 30 s window.
        lora: LoRA settings (a dict or a dataclass such as `borealis.modeling.LoraSettings`),
            or None for full fine-tuning of the LLM and for a model whose LoRA was merged.
        lora_adapter: subfolder holding an unmerged peft LoRA adapter of the LLM (exports made
            with `--keep-adapter`), or None.
        freeze_encoder: keep Whisper frozen (eval mode, no grad); False for the unfreeze ablation.
        audio_token_id, audio_start_id, audio_end_id: ids of the three audio tokens.
        system_prompt: system turn used for chats that have none ("" for none).
        encoder_window: `full` pads every clip's log-mel to the encoder window (30 s), as
            Whisper was trained; `batch` pads to the batch's longest clip (whole LLM
            positions), so short clips cost the encoder less. `batch` needs trimmed audio
            tokens; a frozen pretrained Whisper sees inputs it was not trained on (its
            outputs change), so it suits a trained encoder or length-bucketed batches of
            models trained that way. The features of the covered frames are identical.
    """

    model_type = "borealis"
    sub_configs = {"encoder_config": AutoConfig, "llm_config": AutoConfig}

    def __init__(self, encoder_config: dict | PretrainedConfig | None = None,
                 llm_config: dict | PretrainedConfig | None = None, downsample_factor: int = 4,
                 adapter: str = "simple", trim_audio_tokens: bool = True, lora: dict | None = None,
                 lora_adapter: str | None = None, freeze_encoder: bool = True, audio_token_id: int | None = None,
                 audio_start_id: int | None = None, audio_end_id: int | None = None,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, encoder_window: str = "full", **kwargs) -> None:
        if isinstance(encoder_config, dict):
            encoder_config = WhisperConfig(**{k: v for k, v in encoder_config.items() if k != "model_type"})
        if isinstance(llm_config, dict):
            llm_config = AutoConfig.for_model(**llm_config)
        if adapter not in ADAPTERS:
            raise ValueError(f"adapter={adapter!r} is not one of {sorted(ADAPTERS)}")
        if downsample_factor < 1:
            raise ValueError(f"downsample_factor must be >= 1, got {downsample_factor}")
        check_encoder_window(encoder_window, trim_audio_tokens)
        super().__init__(**kwargs)  # first: it would reset the sub-configs' attention implementation
        self.encoder_config = encoder_config
        self.llm_config = llm_config
        self.downsample_factor = downsample_factor
        self.adapter = adapter
        self.trim_audio_tokens = trim_audio_tokens
        self.lora = asdict(lora) if is_dataclass(lora) else lora
        self.lora_adapter = lora_adapter
        self.freeze_encoder = freeze_encoder
        self.audio_token_id = audio_token_id
        self.audio_start_id = audio_start_id
        self.audio_end_id = audio_end_id
        self.system_prompt = system_prompt
        self.encoder_window = encoder_window
