"""Configuration of an exported Borealis model: the `AutoConfig` half of its remote code.

What: `BorealisConfig`, the `config.json` of a directory written by `tools/export.py`.
Why: a published model must load from plain transformers (`trust_remote_code=True`) without
the training package, so this file imports transformers only. Its fields are those of
`borealis.modeling.BorealisConfig` plus two for inference (`system_prompt`, `lora_adapter`), so
the training package reads an export's config.json too.
Cost: none.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig, WhisperConfig

DEFAULT_SYSTEM_PROMPT = "You are a helpful voice assistant."
ADAPTER_KINDS = ("simple", "deep")


class BorealisConfig(PretrainedConfig):
    """Whisper encoder -> k-frame stacking -> adapter -> causal LM.

    Args:
        encoder_config: the Whisper config (dict or `WhisperConfig`).
        llm_config: the causal LM config (dict with `model_type`, or a `PretrainedConfig`).
        downsample_factor: k, encoder frames stacked into one LLM position.
        adapter: `simple` (Linear -> GELU -> Linear, no bias) or `deep` (residual MLP blocks).
        trim_audio_tokens: N audio slots follow the real audio length; off = the full window.
        encoder_window: `full` pads each clip's log-mel to the encoder window (30 s); `batch`
            to the batch's longest clip (the model was trained that way).
        lora: LoRA settings the model was trained with (informational; None once merged).
        lora_adapter: subfolder holding an unmerged peft LoRA adapter of the LLM, or None.
        freeze_encoder: the encoder was frozen in training (kept for the training package).
        audio_token_id, audio_start_id, audio_end_id: ids of the three audio tokens.
        system_prompt: system turn used when `generate` gets none ("" for none).
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
        if adapter not in ADAPTER_KINDS:
            raise ValueError(f"adapter={adapter!r} is not one of {list(ADAPTER_KINDS)}")
        if downsample_factor < 1:
            raise ValueError(f"downsample_factor must be >= 1, got {downsample_factor}")
        if encoder_window not in ("full", "batch"):
            raise ValueError(f"encoder_window={encoder_window!r} is not one of ['full', 'batch']")
        super().__init__(**kwargs)  # first: it would reset the sub-configs' attention implementation
        self.encoder_config = encoder_config
        self.llm_config = llm_config
        self.downsample_factor = downsample_factor
        self.adapter = adapter
        self.trim_audio_tokens = trim_audio_tokens
        self.lora = lora
        self.lora_adapter = lora_adapter
        self.freeze_encoder = freeze_encoder
        self.audio_token_id = audio_token_id
        self.audio_start_id = audio_start_id
        self.audio_end_id = audio_end_id
        self.system_prompt = system_prompt
        self.encoder_window = encoder_window
