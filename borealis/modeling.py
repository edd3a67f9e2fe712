"""The Borealis audio-language model: Whisper encoder -> k-frame stacking -> adapter -> LLM.

Composed from Hugging Face parts rather than re-implemented (as transformers' Voxtral is):
`WhisperEncoder`, any `AutoModelForCausalLM`, and LoRA injected with `peft`. What Borealis
owns is small: the downsampler and adapter (`adapters.py`), the splice of adapter outputs
into the `<|AUDIO|>` slots, and checkpoint naming.

Splice: the prompt holds start + N x `<|AUDIO|>` + end (see `prompts.py`); all audio rows of
a batch go through the encoder at once, and their N_i valid adapter outputs fill the slots
with one `masked_scatter`. No Python loop runs over samples.

Checkpoint names follow the seed's module (`encoder.*`, `adapter.w_in`, `adapter.w_out`,
`llm.*`): peft's `base_layer` / adapter-name wrapping is undone by state-dict hooks, so a
state dict from the seed's code loads with `strict=True`, and LoRA factors are saved as
`llm.<...>.q_proj.lora_A.weight`. A base checkpoint without LoRA factors loads strictly
too: the fresh LoRA (B = 0) leaves the model equal to the base.

Cost at Borealis-5B shapes: ~5.2B parameters, ~0.55B trainable with the default LoRA
(r = 256 on every projection; `python -m borealis.paper` prints the table).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel,
                          WhisperConfig, WhisperModel)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from borealis.adapters import ADAPTERS, stack_frames
from borealis.features import WhisperLogMel, window_frames
from borealis.prompts import (AUDIO_END, AUDIO_START, AUDIO_TOKEN, IGNORE_INDEX, PromptBuilder, add_audio_tokens,
                              num_audio_tokens)

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """LoRA on the LLM (peft). Set `lora: null` in a config for full fine-tuning.

    Args:
        r: rank of the update.
        alpha: scale numerator; the update is scaled by alpha / r.
        dropout: dropout on the LoRA input.
        target_modules: names of the LLM's linear layers that get LoRA.
    """

    r: int = 256
    alpha: int = 512
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


class BorealisConfig(PretrainedConfig):
    """Configuration of `BorealisForConditionalGeneration`.

    Args:
        encoder_config: the Whisper config (dict or `WhisperConfig`).
        llm_config: the causal LM config (dict with `model_type`, or a `PretrainedConfig`).
        downsample_factor: k, encoder frames stacked into one LLM position.
        adapter: `simple` (the seed's 19.7M MLP) or `deep` (~80M residual MLP).
        trim_audio_tokens: N follows the real audio length; off = 375 slots per 30 s window.
        encoder_window: `full` pads every clip's log-mel to the encoder window (30 s), as
            Whisper was trained; `batch` pads to the batch's longest clip (whole LLM
            positions), so short clips cost the encoder less. `batch` needs trimmed audio
            tokens; a frozen pretrained Whisper sees inputs it was not trained on (its
            outputs change), so it suits a trained encoder or length-bucketed batches of
            models trained that way. The features of the covered frames are identical.
        lora: LoRA settings as a dict, or None for full fine-tuning of the LLM.
        freeze_encoder: keep Whisper frozen (eval mode, no grad); False for the unfreeze ablation.
        audio_token_id, audio_start_id, audio_end_id: ids of the three audio tokens.
    """

    model_type = "borealis"
    sub_configs = {"encoder_config": AutoConfig, "llm_config": AutoConfig}

    def __init__(self, encoder_config: dict | PretrainedConfig | None = None,
                 llm_config: dict | PretrainedConfig | None = None, downsample_factor: int = 4,
                 adapter: str = "simple", trim_audio_tokens: bool = True, lora: dict | None = None,
                 freeze_encoder: bool = True, audio_token_id: int | None = None, audio_start_id: int | None = None,
                 audio_end_id: int | None = None, encoder_window: str = "full", **kwargs) -> None:
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
        self.lora = asdict(lora) if isinstance(lora, LoraSettings) else lora
        self.freeze_encoder = freeze_encoder
        self.audio_token_id = audio_token_id
        self.audio_start_id = audio_start_id
        self.audio_end_id = audio_end_id
        self.encoder_window = encoder_window


ENCODER_WINDOWS = ("full", "batch")


def check_encoder_window(encoder_window: str, trim_audio_tokens: bool) -> None:
    if encoder_window not in ENCODER_WINDOWS:
        raise ValueError(f"encoder_window={encoder_window!r} is not one of {list(ENCODER_WINDOWS)}")
    if encoder_window == "batch" and not trim_audio_tokens:
        raise ValueError("encoder_window='batch' needs trim_audio_tokens=True: untrimmed prompts hold the full "
                         "window's audio slots, which a shorter encoder window cannot fill")


def run_encoder(encoder: WhisperEncoder, input_features: torch.Tensor) -> torch.Tensor:
    """`WhisperEncoder` hidden states for a log-mel of up to the full window.

    transformers' forward insists on exactly the full window; for a shorter one this runs its
    own modules (convs, the first T' positional embeddings, layers, final norm) in the same
    order, and `tests/test_modeling.py` holds the two to equality on the full window. No
    layerdrop (0 in every Whisper checkpoint).
    """
    if input_features.shape[-1] == 2 * encoder.config.max_source_positions:
        return encoder(input_features).last_hidden_state
    hidden = nn.functional.gelu(encoder.conv1(input_features))
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)  # (B, T', D)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


def _seed_name(native: str) -> str:
    """peft-wrapped parameter name -> the seed's plain name."""
    return native.replace(".base_layer.", ".").replace(".default.", ".")


def _unwrapped_name(name: str) -> str:
    """A parameter name without the FSDP and activation-checkpoint wrappers' path parts, as
    their state dicts write it (`layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp`
    -> `layers.0.mlp`); unwrapped names pass unchanged."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


class BorealisForConditionalGeneration(PreTrainedModel):
    """Frozen Whisper encoder + k-frame stacking + adapter + causal LM (optionally LoRA).

    Build it from pretrained parts with `from_parts`, reload a saved one with
    `from_pretrained`, or construct it from a `BorealisConfig` (random weights).
    """

    config_class = BorealisConfig
    base_model_prefix = "borealis"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["WhisperEncoderLayer", "Qwen3DecoderLayer"]

    def __init__(self, config: BorealisConfig, *, encoder: WhisperEncoder | None = None,
                 llm: PreTrainedModel | None = None, tokenizer=None) -> None:
        super().__init__(config)
        self.encoder = encoder if encoder is not None else WhisperEncoder(config.encoder_config)
        self.llm = llm if llm is not None else AutoModelForCausalLM.from_config(config.llm_config)
        k, d = config.downsample_factor, config.encoder_config.d_model
        self.adapter = ADAPTERS[config.adapter](k * d, config.llm_config.hidden_size)
        self.features = WhisperLogMel.from_encoder_config(config.encoder_config)
        if config.lora:
            self._inject_lora(config.lora)
        else:
            self.llm.requires_grad_(True)
        self.encoder.requires_grad_(not config.freeze_encoder)
        if config.freeze_encoder:
            self.encoder.eval()
        self.tokenizer = tokenizer
        self._prompts: PromptBuilder | None = None
        self._loaded_lora = True
        self.register_state_dict_post_hook(_to_seed_names)
        self.register_load_state_dict_pre_hook(_from_seed_names)
        self.register_load_state_dict_post_hook(_allow_missing_fresh_parts)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Each part initialises itself (HF parts in their own post_init, adapters in
        # their constructors); nothing here may overwrite pretrained weights.
        pass

    def _inject_lora(self, lora: dict) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                         target_modules=list(lora["target_modules"]), bias="none")
        inject_adapter_in_model(cfg, self.llm)
        for name, p in self.llm.named_parameters():
            p.requires_grad_("lora_" in name)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_parts(cls, encoder: str, llm: str, *, downsample_factor: int = 4, adapter: str = "simple",
                   trim_audio_tokens: bool = True, encoder_window: str = "full",
                   lora: LoraSettings | dict | None = None, freeze_encoder: bool = True,
                   dtype: torch.dtype | None = None,
                   tokenizer=None) -> BorealisForConditionalGeneration:
        """Assemble a model from a Whisper checkpoint and a causal LM checkpoint.

        Args:
            encoder: hub id or local folder of a Whisper model (only the encoder is kept).
            llm: hub id or local folder of a causal LM with its tokenizer.
            dtype: weights dtype of the pretrained parts (None keeps the checkpoint's).
            tokenizer: the LLM's tokenizer if already loaded (the audio tokens are added to it).
        """
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(llm)
        ids = add_audio_tokens(tokenizer)
        whisper_encoder = WhisperModel.from_pretrained(encoder, dtype=dtype).get_encoder()
        lm = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
        _add_token_rows(lm, len(tokenizer))
        config = BorealisConfig(
            encoder_config=whisper_encoder.config, llm_config=lm.config, downsample_factor=downsample_factor,
            adapter=adapter, trim_audio_tokens=trim_audio_tokens, encoder_window=encoder_window,
            lora=asdict(lora) if isinstance(lora, LoraSettings) else lora, freeze_encoder=freeze_encoder,
            audio_token_id=ids[AUDIO_TOKEN], audio_start_id=ids[AUDIO_START], audio_end_id=ids[AUDIO_END])
        return cls(config, encoder=whisper_encoder, llm=lm, tokenizer=tokenizer)

    def save_pretrained(self, save_directory: str | Path, **_: object) -> None:
        """Write config.json, model.safetensors (seed names) and the tokenizer."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(out)
        state = self.state_dict()
        if getattr(self.config.llm_config, "tie_word_embeddings", False):
            state.pop("llm.lm_head.weight", None)  # tied to embed_tokens; safetensors refuses aliases
        save_file({k: v.detach().contiguous() for k, v in state.items()}, out / WEIGHTS_NAME,
                  metadata={"format": "pt", "borealis": "1"})
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, **_: object) -> BorealisForConditionalGeneration:
        """Load a directory written by `save_pretrained` (strict: every weight must match)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{path / WEIGHTS_NAME} not found: is {path} a Borealis model directory?")
        config = BorealisConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").is_file() else None
        model = cls(config, tokenizer=tokenizer)
        model.load_state_dict(load_file(path / WEIGHTS_NAME), strict=True)
        if dtype is not None:
            model.to(dtype)
        return model.to(device) if device is not None else model

    def train(self, mode: bool = True) -> BorealisForConditionalGeneration:
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # frozen hard: no dropout, whatever the caller does
        return self

    # ------------------------------------------------------------------ forward
    @property
    def prompts(self) -> PromptBuilder:
        if self._prompts is None:
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer; build it with from_parts or load it with from_pretrained")
            self._prompts = PromptBuilder(
                self.tokenizer, downsample_factor=self.config.downsample_factor,
                max_source_positions=self.config.encoder_config.max_source_positions,
                trim_audio_tokens=self.config.trim_audio_tokens)
        return self._prompts

    def num_audio_tokens(self, num_samples: torch.Tensor) -> torch.Tensor:
        return num_audio_tokens(num_samples, downsample_factor=self.config.downsample_factor,
                                max_source_positions=self.config.encoder_config.max_source_positions,
                                trim=self.config.trim_audio_tokens)

    def encoder_frames(self, longest_samples: int) -> int:
        """Encoder positions a batch whose longest clip has `longest_samples` runs through."""
        if getattr(self.config, "encoder_window", "full") == "full":
            return self.config.encoder_config.max_source_positions
        return self._window_frames(longest_samples) // 2

    def _window_frames(self, longest_samples: int) -> int:
        return window_frames(longest_samples, self.config.downsample_factor,
                             self.config.encoder_config.max_source_positions)

    def log_mel(self, waveforms: torch.Tensor, audio_lengths: torch.Tensor) -> torch.Tensor:
        """(A, S) padded audio + (A,) lengths -> (A, M, T_mel) log-mel of the configured window.

        The `batch` window is sized from S, the padded width (collation pads to the longest
        clip), not from `audio_lengths.max()`, which would cost a device sync per step.
        """
        if getattr(self.config, "encoder_window", "full") == "full":
            return self.features(waveforms, audio_lengths)
        return self.features(waveforms, audio_lengths, self._window_frames(waveforms.shape[-1]))

    def encode_audio(self, input_features: torch.Tensor) -> torch.Tensor:
        """(B, M, T_mel) log-mel -> (B, N_max, H) adapter outputs for the window (T_mel / 2k)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_encoder):
            enc_dtype = next(self.encoder.parameters()).dtype
            hidden = run_encoder(self.encoder, input_features.to(enc_dtype))  # (B, T_mel / 2, D)
        stacked = stack_frames(hidden, self.config.downsample_factor)  # (B, N_max, k * D)
        return self.adapter(stacked.to(self.adapter.w_in.weight.dtype))

    def embed(self, input_ids: torch.Tensor, waveforms: torch.Tensor | None = None,
              audio_lengths: torch.Tensor | None = None, input_features: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with adapter outputs written into the `<|AUDIO|>` slots.

        Args:
            input_ids: (B, L) prompt ids holding N_i `<|AUDIO|>` tokens per audio row.
            waveforms: (A, S) padded 16 kHz audio of the A rows that have audio, in row order.
            audio_lengths: (A,) valid samples per audio row.
            input_features: (A, M, T_mel) precomputed log-mel, instead of waveforms.

        Returns:
            (B, L, H) input embeddings for the LLM.
        """
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, L, H)
        slots = input_ids == self.config.audio_token_id  # (B, L)
        if waveforms is None and input_features is None:
            if slots.any():
                raise ValueError(f"input_ids hold {int(slots.sum())} {AUDIO_TOKEN} tokens but no audio was given")
            return embeds
        if audio_lengths is None:
            raise ValueError("audio_lengths is required with audio: (A,) valid samples per clip")
        if input_features is None:
            input_features = self.log_mel(waveforms, audio_lengths)  # (A, M, T_mel)
        audio = self.encode_audio(input_features)  # (A, N_max, H)
        n = self.num_audio_tokens(audio_lengths)  # (A,)
        valid = torch.arange(audio.shape[1], device=audio.device) < n[:, None]  # (A, N_max)
        if int(slots.sum()) != int(n.sum()):
            raise ValueError(
                f"the prompts hold {int(slots.sum())} {AUDIO_TOKEN} tokens but the audio gives {int(n.sum())} "
                f"embeddings ({n.tolist()} per clip); build prompts with PromptBuilder.encode(num_samples=...) "
                f"so each clip's placeholder expands to exactly its N tokens, in the same row order as the audio")
        return embeds.masked_scatter(slots[..., None], audio[valid].to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, waveforms: torch.Tensor | None = None,
                audio_lengths: torch.Tensor | None = None, input_features: torch.Tensor | None = None, **kwargs):
        """LM loss (assistant tokens only, via `labels` = -100 elsewhere) and logits.

        Args:
            input_ids: (B, L); attention_mask: (B, L); labels: (B, L) with -100 on ignored tokens.
            waveforms / audio_lengths / input_features: see `embed`.
        """
        embeds = self.embed(input_ids, waveforms, audio_lengths, input_features)
        # No KV cache unless asked (`generate` has its own): a loss pass never reads one, and under
        # activation checkpointing (FSDP) the recomputed layers would append to it a second time.
        kwargs.setdefault("use_cache", False)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
             waveforms: torch.Tensor | None = None, audio_lengths: torch.Tensor | None = None,
             input_features: torch.Tensor | None = None) -> torch.Tensor:
        """`forward(...).loss`, with logits computed only where a label is (the training step's path).

        Why: the causal LM's own forward projects every position onto the vocabulary and casts
        those logits to float32 for the loss: at Qwen3-4B (151,936 x 2,560) that is 0.78 GFLOP
        and 0.6 MB per position, for a 505-token row 0.3 GB, of which only the transcript
        (~100 positions) carries loss. Here the decoder's hidden states of the labelled
        positions alone go through the LM head. Equal to `forward(...).loss` (mean next-token
        cross-entropy over the labelled tokens; tests/test_modeling.py). LMs whose head does
        more than a linear map (logit soft-capping, scaling) take the forward path.
        """
        llm_config = self.llm.config
        if any(getattr(llm_config, name, None) for name in ("final_logit_softcapping", "logit_scale")):
            return self(input_ids, attention_mask, labels, waveforms, audio_lengths, input_features).loss
        embeds = self.embed(input_ids, waveforms, audio_lengths, input_features)
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                        use_cache=False).last_hidden_state  # (B, L, H)
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX  # (B, L - 1): position t predicts token t + 1
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][keep])  # (labels, V)
        return nn.functional.cross_entropy(logits.float(), targets[keep])

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, audio: torch.Tensor | list[torch.Tensor] | None = None, user_prompt: str | None = None,
                 system_prompt: str | None = None, max_new_tokens: int = 256, *,
                 input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 waveforms: torch.Tensor | None = None, audio_lengths: torch.Tensor | None = None,
                 **generate_kwargs) -> torch.Tensor:
        """Greedy generation with the KV cache; returns (B, new_tokens) ids.

        In a batch, the prompt prefix every row shares (system turn, instruction) is prefilled
        once (`_prefill_shared_prefix`); pass `cache=None` to prefill every row whole.

        Two ways to call it:
          * the seed's client API: `generate(audio=<1-D 16 kHz tensor or a list>, user_prompt="...
            <|start_of_audio|><|end_of_audio|>", system_prompt="...", max_new_tokens=256)`;
          * batched: left-padded `input_ids`/`attention_mask` from the collator plus
            `waveforms`/`audio_lengths`.
        """
        if audio is not None:
            input_ids, attention_mask, waveforms, audio_lengths = self._client_batch(audio, user_prompt, system_prompt)
        if input_ids is None:
            raise ValueError("generate needs either audio= and user_prompt= or input_ids=")
        embeds = self.embed(input_ids, waveforms, audio_lengths)
        prompts = self.prompts
        generate_kwargs.setdefault("do_sample", False)
        if attention_mask is not None and "cache" not in generate_kwargs:
            embeds, attention_mask, generate_kwargs["cache"] = self._prefill_shared_prefix(
                input_ids, attention_mask, embeds)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=prompts.eos_token_id, pad_token_id=prompts.pad_token_id,
                                 **generate_kwargs)

    def _prefill_shared_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, embeds: torch.Tensor):
        """Run the prompt prefix that every row shares once and hand its KV cache to `generate`.

        Why: a benchmark's rows share the system turn and the instruction up to the audio (20 of
        ~45 prompt tokens in the demo); prefilling them once per batch instead of once per row
        saves that share of the prefill (tools/bench_validate.py). The rows are rearranged from
        [pad | prefix | rest] to [prefix | pad | rest], so each row's tokens keep their positions
        (`generate` numbers them from the attention mask) and see the same keys and values.

        Returns (embeds, attention_mask, cache) for `generate`; cache None (inputs unchanged)
        for one row, a batch that is not left-padded, or no shared prefix.
        """
        rows, width = input_ids.shape
        p, start = (0, None) if rows == 1 else shared_prefix_length(input_ids, attention_mask,
                                                                     self.config.audio_token_id)
        if p == 0:
            return embeds, attention_mask, None
        first = int(start[0])
        prefix = embeds[:1, first:first + p]  # (1, P, H)
        cache = self.llm.get_decoder()(inputs_embeds=prefix, use_cache=True).cache  # no logits: only the KV cache
        cache.batch_repeat_interleave(rows)
        embeds = torch.cat([prefix.expand(rows, -1, -1), embeds[:, p:]], dim=1)  # (B, L, H): prefix, then the rest
        rest = torch.arange(width - p, device=start.device) >= start[:, None]  # (B, L - P): a row's own tokens
        attention_mask = torch.cat([attention_mask.new_ones(rows, p), rest.to(attention_mask.dtype)], dim=1)
        return embeds, attention_mask, cache

    def _client_batch(self, audio, user_prompt: str | None, system_prompt: str | None):
        clips = [audio] if torch.is_tensor(audio) and audio.dim() == 1 else list(audio)
        if user_prompt is None:
            raise ValueError("user_prompt is required, e.g. 'What is this audio about? <|start_of_audio|><|end_of_audio|>'")
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages.append({"role": "user", "content": user_prompt})
        encoded = [self.prompts.encode(messages, num_samples=len(c), generation=True) for c in clips]
        device = self.adapter.w_in.weight.device
        width = max(len(e.input_ids) for e in encoded)
        pad = self.prompts.pad_token_id
        ids = torch.tensor([[pad] * (width - len(e.input_ids)) + e.input_ids for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e.input_ids)) + [1] * len(e.input_ids) for e in encoded], device=device)
        lengths = torch.tensor([len(c) for c in clips], device=device)
        waves = nn.utils.rnn.pad_sequence([c.float().reshape(-1).to(device) for c in clips], batch_first=True)
        return ids, mask, waves, lengths

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Text of generated ids, special tokens removed."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer to decode with")
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ------------------------------------------------------------------ LoRA
    def merge_lora(self) -> None:
        """Fold LoRA into the base weights and drop the LoRA layers (for export/inference)."""
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.llm.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(self.llm.get_submodule(parent_name) if parent_name else self.llm, child,
                        module.get_base_layer())
        self.config.lora = None

    def trainable_parameter_names(self) -> list[str]:
        """Seed-style names of the parameters that train (what a checkpoint must hold), also
        while FSDP wraps the layers."""
        return [_unwrapped_name(_seed_name(n)) for n, p in self.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------------- generation
def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         audio_token_id: int) -> tuple[int, torch.Tensor]:
    """Tokens every row of a left-padded batch starts with, before any audio slot.

    Args:
        input_ids, attention_mask: (B, L), each row's tokens right-aligned (the collator's `left_pad`).

    Returns:
        (P, start): P shared leading tokens (0 if the mask is not left padding), at most each
        row's length - 1 so that every row keeps a token to prefill; start (B,) the first real
        column of each row.
    """
    lengths = attention_mask.sum(1)  # (B,)
    width = input_ids.shape[1]
    start = width - lengths
    columns = torch.arange(width, device=input_ids.device)
    shortest = int(lengths.min())
    if shortest < 2 or not torch.equal(attention_mask.bool(), columns >= start[:, None]):
        return 0, start
    aligned = input_ids.gather(1, start[:, None] + columns[:shortest])  # (B, shortest): real tokens, left-aligned
    shared = (aligned == aligned[:1]).all(0) & (aligned[0] != audio_token_id)  # (shortest,)
    return min(int(shared.int().cumprod(0).sum()), shortest - 1), start



# ---------------------------------------------------------------------- state-dict hooks
def _to_seed_names(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + _seed_name(key[len(prefix):])
        if new != key:
            state_dict[new] = state_dict.pop(key)


def _from_seed_names(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    # Under FSDP the wrapped layers' own load hooks insert their path parts further down the load.
    names = [_unwrapped_name(n) for n, _ in (*module.named_parameters(remove_duplicate=False),
                                              *module.named_buffers(remove_duplicate=False))]
    native = {_seed_name(n): n for n in names}
    keys = [k for k in state_dict if k.startswith(prefix)]
    module._loaded_lora = any(".lora_" in k for k in keys)
    for key in keys:
        target = native.get(key[len(prefix):])
        if target is not None and prefix + target != key:
            state_dict[prefix + target] = state_dict.pop(key)


def _allow_missing_fresh_parts(module, incompatible) -> None:
    """A base checkpoint carries no LoRA factors and may omit the tied lm_head."""
    tied = getattr(module.config.llm_config, "tie_word_embeddings", False)
    for key in list(incompatible.missing_keys):
        if (".lora_" in key and not module._loaded_lora) or (tied and key.endswith("llm.lm_head.weight")):
            incompatible.missing_keys.remove(key)



def _add_token_rows(lm, vocab: int) -> None:
    """Resize the LLM's embeddings to `vocab`; new rows (the audio tokens) get the mean of the
    old ones, deterministically. transformers' default draws them at random, and the frozen
    base is not in checkpoints, so two builds would disagree on `<|start_of_audio|>`."""
    old = lm.get_input_embeddings().weight.shape[0]
    lm.resize_token_embeddings(vocab, mean_resizing=False)
    if vocab <= old:
        return
    with torch.no_grad():
        for emb in {id(e): e for e in (lm.get_input_embeddings(), lm.get_output_embeddings()) if e is not None}.values():
            emb.weight[old:] = emb.weight[:old].mean(dim=0)


# ---------------------------------------------------------------------- init_from
def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights source, for `load_init_weights`.

    Accepts a model directory (`model.safetensors`, or a sharded `model.safetensors.index.json`,
    as `save_pretrained` and `tools/export.py` write), a `.safetensors` file, or a torch file
    (`.pt`/`.bin`/`.ckpt`: a plain state dict, `{"state_dict": ...}` or `{"model": ...}`; a
    Lightning checkpoint's "model." prefix is dropped). Torch files load with
    `weights_only=True`: no pickled code runs.

    Raises:
        FileNotFoundError: nothing loadable at `path`.
    """
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        index = p / f"{WEIGHTS_NAME}.index.json"
        if index.is_file():
            import json

            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for f in files for k, v in load_file(p / f).items()}
        if (p / WEIGHTS_NAME).is_file():
            return load_file(p / WEIGHTS_NAME)
        raise FileNotFoundError(f"{p} holds neither {WEIGHTS_NAME} nor {WEIGHTS_NAME}.index.json")
    if not p.is_file():
        raise FileNotFoundError(f"init_from: {p} does not exist")
    if p.suffix == ".safetensors":
        return load_file(p)
    obj = torch.load(p, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"init_from: {p} is not a state dict of tensors")
    if obj and all(k.startswith("model.") for k in obj):  # a Lightning checkpoint of BorealisLightningModule
        obj = {k[len("model."):]: v for k, v in obj.items()}
    return obj


def load_init_weights(model: BorealisForConditionalGeneration, path: str | Path) -> dict[str, int]:
    """Start `model` from released weights: an exported/saved Borealis model or the seed's state dict.

    Names are the seed's (`encoder.*`, `adapter.w_in/w_out`, `llm.*`, LoRA as
    `llm.<...>.lora_A.weight`). The source may omit the frozen base (it comes from the model's
    `encoder`/`llm` checkpoints) and may omit every LoRA factor (fresh LoRA on top, e.g. of a
    merged export); it must hold every other trainable weight, and nothing the model lacks.

    Returns:
        {"loaded": tensors loaded, "fresh_lora": LoRA factors left at their init}.

    Raises:
        ValueError: listing every unexpected key, missing trainable key, or shape mismatch.
    """
    state = read_weights(path)
    own = model.state_dict()
    if getattr(model.config.llm_config, "tie_word_embeddings", False):
        state.pop("llm.lm_head.weight", None)
    unexpected = sorted(set(state) - set(own))
    has_lora = any(".lora_" in k for k in state)
    missing = sorted(k for k in model.trainable_parameter_names() if k not in state
                     and not (".lora_" in k and not has_lora))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} vs the model's {tuple(own[k].shape)}"
                    for k in set(state) & set(own) if state[k].shape != own[k].shape)
    problems = [f"{len(unexpected)} unexpected key(s): {unexpected[:20]}" if unexpected else "",
                f"{len(missing)} missing trainable key(s): {missing[:20]}" if missing else "",
                f"{len(shapes)} shape mismatch(es): {shapes[:10]}" if shapes else ""]
    problems = [x for x in problems if x]
    if problems:
        raise ValueError(f"init_from {path}: " + "; ".join(problems) + ". Was it saved from a model with the same "
                         "encoder, LLM, adapter and LoRA settings?")
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    fresh = sum(".lora_" in k for k in own) if not has_lora else 0
    log.info("init_from %s: loaded %d tensors%s", path, len(state),
             f", {fresh} LoRA factors fresh" if fresh else "")
    return {"loaded": len(state), "fresh_lora": fresh}
