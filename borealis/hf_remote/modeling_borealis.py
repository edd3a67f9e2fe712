"""An exported Borealis model: the `AutoModel` half of its remote code.

What: `BorealisForConditionalGeneration` for directories written by `tools/export.py`:

    model = AutoModel.from_pretrained(path, trust_remote_code=True, device="cuda")
    ids = model.generate(audio=<1-D float tensor, 16 kHz>,
                         user_prompt="What is this audio about? <|start_of_audio|><|end_of_audio|>",
                         system_prompt="You are a helpful voice assistant.", max_new_tokens=256)
    text = model.decode(ids[0])

Why: the published model is used from plain transformers, where the training package
(`borealis`) is not installed, so this file imports only torch and transformers. It repeats
the few pieces Borealis owns (log-mel in torch, k-frame stacking, the adapters, the ChatML
prompt with N `<|AUDIO|>` slots, the `masked_scatter` splice) with the same arithmetic and
the same parameter names as the training package (`encoder.*`, `adapter.w_in`, `llm.*`);
`tests/test_export.py` holds greedy outputs equal, token for token, to
`borealis.modeling.BorealisForConditionalGeneration.generate` on the same weights.

LoRA: exports merge it by default. An export made with `--keep-adapter` holds the LLM's
peft adapter in the `lora_adapter` subfolder (a standard `adapter_config.json` +
`adapter_model.safetensors`); `from_pretrained` applies it with peft and raises if peft is
missing rather than silently running the base model. It is a subfolder because transformers
treats an `adapter_config.json` at the top of a directory as an adapter for the whole model.

Cost: one STFT + one matmul for the log-mel, the Whisper encoder on the full window (30 s for
large-v3) per clip, then ordinary KV-cached greedy decoding of the LLM.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .configuration_borealis import BorealisConfig

SAMPLE_RATE = 16_000
HOP_LENGTH = 160  # 10 ms per mel frame
N_FFT = 400
AUDIO_TOKEN, AUDIO_START, AUDIO_END = "<|AUDIO|>", "<|start_of_audio|>", "<|end_of_audio|>"
AUDIO_PLACEHOLDER = AUDIO_START + AUDIO_END
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


# ---------------------------------------------------------------------- audio front end
class WhisperLogMel(nn.Module):
    """Batched Whisper log-mel of the encoder's full window (as `borealis.features`)."""

    def __init__(self, num_mel_bins: int = 128, max_source_positions: int = 1500) -> None:
        super().__init__()
        self.num_mel_bins = num_mel_bins
        self.num_frames = 2 * max_source_positions
        self.num_samples = self.num_frames * HOP_LENGTH
        self.register_buffer("mel_filters", self._filters(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT, dtype=torch.float32), persistent=False)

    def _filters(self) -> torch.Tensor:
        extractor = WhisperFeatureExtractor(
            feature_size=self.num_mel_bins, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH, n_fft=N_FFT,
            chunk_length=max(1, math.ceil(self.num_samples / SAMPLE_RATE)))
        return torch.from_numpy(extractor.mel_filters).float().T  # (M, n_fft // 2 + 1)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute the (non-persistent) buffers, e.g. after transformers built the model on `meta`."""
        self.mel_filters.copy_(self._filters())
        self.window.copy_(torch.hann_window(N_FFT, dtype=torch.float32))

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                num_frames: int | None = None) -> torch.Tensor:
        """(B, S) 16 kHz audio, zero-padded on the right, and (B,) valid samples -> (B, M, num_frames).

        A window shorter than the full one (`num_frames`, from `window_frames`) gives the full
        window's first frames exactly: two extra frames are computed for the peak.
        """
        frames = self.num_frames if num_frames is None else num_frames
        extra = 0 if frames >= self.num_frames else 2
        waveforms = waveforms.float()
        if lengths is not None:
            keep = torch.arange(waveforms.shape[-1], device=waveforms.device) < lengths[:, None]
            waveforms = waveforms * keep
        s, want = waveforms.shape[-1], (frames + extra) * HOP_LENGTH
        if s < want:
            waveforms = nn.functional.pad(waveforms, (0, want - s))
        elif s > want:
            waveforms = waveforms[:, :want]
        # .float(): the buffers follow a model-wide .to(bfloat16); the spectrogram stays float32
        stft = torch.stft(waveforms, N_FFT, HOP_LENGTH, window=self.window.float(), return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()  # (B, F, T): drop the extra centre frame
        mel = self.mel_filters.float() @ power  # (B, M, T)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec[..., :frames], peak - 8.0)
        return (log_spec + 4.0) / 4.0


def window_frames(longest_samples: int, downsample_factor: int, max_source_positions: int) -> int:
    """Mel frames of the shortest window holding a clip of `longest_samples`: whole 2k-frame steps."""
    step = 2 * downsample_factor
    frames = -(-max(int(longest_samples), 1) // HOP_LENGTH)
    return min(-(-frames // step) * step, 2 * max_source_positions)


def run_encoder(encoder: WhisperEncoder, input_features: torch.Tensor) -> torch.Tensor:
    """Whisper encoder hidden states for a log-mel of up to the full window (transformers' forward
    takes the full window only; a shorter one runs its modules in the same order)."""
    if input_features.shape[-1] == 2 * encoder.config.max_source_positions:
        return encoder(input_features).last_hidden_state
    hidden = nn.functional.gelu(encoder.conv1(input_features))
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


def stack_frames(hidden: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, T, D) -> (B, ceil(T / k), k * D): every k consecutive frames concatenated, tail zero-padded."""
    b, t, d = hidden.shape
    pad = (-t) % factor
    if pad:
        hidden = nn.functional.pad(hidden, (0, 0, 0, pad))
    return hidden.reshape(b, (t + pad) // factor, factor * d)


def num_audio_tokens(num_samples: torch.Tensor | int, *, downsample_factor: int, max_source_positions: int,
                     trim: bool) -> torch.Tensor | int:
    """`<|AUDIO|>` slots for a clip: ceil(mel_frames / 2k) when trimming, else the full window."""
    full = -(-max_source_positions // downsample_factor)
    if not trim:
        return torch.full_like(num_samples, full) if torch.is_tensor(num_samples) else full
    frames = num_samples // HOP_LENGTH
    n = (frames + 2 * downsample_factor - 1) // (2 * downsample_factor)
    return n.clamp(max=full) if torch.is_tensor(n) else min(n, full)


# ---------------------------------------------------------------------- adapters
class AudioLanguageAdapter(nn.Module):
    """Linear(k*D -> H, no bias) -> GELU -> Linear(H -> H, no bias)."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.w_in = nn.Linear(input_dim, output_dim, bias=False)
        self.gelu = nn.GELU()
        self.w_out = nn.Linear(output_dim, output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, k*D) -> (B, N, H)."""
        return self.w_out(self.gelu(self.w_in(x)))


class _ResidualMLPBlock(nn.Module):
    def __init__(self, dim: int, expansion: float, dropout: float) -> None:
        super().__init__()
        inner = int(dim * expansion)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, inner)
        self.fc2 = nn.Linear(inner, dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.fc2(self.act(self.fc1(self.norm(x)))))


class AudioLanguageAdapterDeep(nn.Module):
    """w_in -> 3 x [LayerNorm -> Linear -> GELU -> Linear -> dropout, + residual] -> LayerNorm -> w_out."""

    def __init__(self, input_dim: int, output_dim: int, num_blocks: int = 3, expansion: float = 1.5,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.w_in = nn.Linear(input_dim, output_dim, bias=False)
        self.blocks = nn.ModuleList(_ResidualMLPBlock(output_dim, expansion, dropout) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(output_dim)
        self.w_out = nn.Linear(output_dim, output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, k*D) -> (B, N, H)."""
        x = self.w_in(x)
        for block in self.blocks:
            x = block(x)
        return self.w_out(self.norm(x))


ADAPTERS = {"simple": AudioLanguageAdapter, "deep": AudioLanguageAdapterDeep}


# ---------------------------------------------------------------------- model
class BorealisForConditionalGeneration(PreTrainedModel):
    """Whisper encoder + k-frame stacking + adapter + causal LM, for inference from transformers."""

    config_class = BorealisConfig
    base_model_prefix = "borealis"
    main_input_name = "input_ids"
    _no_split_modules = ["WhisperEncoderLayer", "Qwen3DecoderLayer"]
    _supports_sdpa = True

    def __init__(self, config: BorealisConfig) -> None:
        super().__init__(config)
        self.encoder = WhisperEncoder(config.encoder_config)
        self.llm = AutoModelForCausalLM.from_config(config.llm_config)
        k, d = config.downsample_factor, config.encoder_config.d_model
        self.adapter = ADAPTERS[config.adapter](k * d, config.llm_config.hidden_size)
        self.features = WhisperLogMel(config.encoder_config.num_mel_bins, config.encoder_config.max_source_positions)
        self.tokenizer = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, WhisperLogMel):
            module.reset_buffers()
        elif module is not self:
            super()._init_weights(module)  # only for weights missing from the checkpoint

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, device: str | torch.device | None = None,
                        **kwargs) -> BorealisForConditionalGeneration:
        """Load weights, tokenizer, the LLM's generation config and (if kept) the LoRA adapter.

        Args:
            pretrained_model_name_or_path: an exported directory or hub id.
            device: where the model goes after loading ("cuda", "cpu", ...); `device_map` works too.
            **kwargs: as `PreTrainedModel.from_pretrained` (dtype, revision, token, ...).
        """
        hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        # config= keeps AutoTokenizer from resolving config.json's auto_map (a second trust prompt)
        model.tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, config=model.config, **hub)
        model._check_tokenizer()
        try:
            model.llm.generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        except OSError:
            pass  # no generation_config.json: keep the one derived from the LLM config
        if model.config.lora_adapter:
            model._load_lora(str(pretrained_model_name_or_path), hub)
        if device is not None:
            model.to(device)
        return model.eval()

    def _load_lora(self, path: str, hub: dict) -> None:
        try:
            from peft import PeftModel
        except ImportError as err:
            raise ImportError(
                f"this Borealis export keeps its LoRA adapter unmerged in {self.config.lora_adapter}/ and needs peft "
                f"to apply it, but peft is not installed ({err}); run `pip install peft`, or export the model again "
                f"without --keep-adapter to merge LoRA into the weights") from err
        sub = self.config.lora_adapter
        if os.path.isdir(path):
            self.llm = PeftModel.from_pretrained(self.llm, os.path.join(path, hub.get("subfolder", ""), sub))
        else:
            sub = "/".join(p for p in (hub.get("subfolder"), sub) if p)
            self.llm = PeftModel.from_pretrained(self.llm, path, subfolder=sub,
                                                 **{k: v for k, v in hub.items() if k != "subfolder"})
        self.llm.eval()

    def _check_tokenizer(self) -> None:
        ids = {t: self.tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_TOKEN, AUDIO_START, AUDIO_END, IM_END)}
        want = {AUDIO_TOKEN: self.config.audio_token_id, AUDIO_START: self.config.audio_start_id,
                AUDIO_END: self.config.audio_end_id}
        bad = {t: (ids[t], i) for t, i in want.items() if ids[t] != i}
        if bad or ids[IM_END] in (None, self.tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer does not match config.json: token -> (tokenizer id, config id) {bad}; "
                             f"{IM_END!r} -> {ids[IM_END]}; export the model again with its own tokenizer")

    # ------------------------------------------------------------------ forward
    def encode_audio(self, input_features: torch.Tensor) -> torch.Tensor:
        """(B, M, T_mel) log-mel -> (B, N_max, H) adapter outputs for the window."""
        enc_dtype = next(self.encoder.parameters()).dtype
        hidden = run_encoder(self.encoder, input_features.to(enc_dtype))  # (B, T_mel / 2, D)
        stacked = stack_frames(hidden, self.config.downsample_factor)  # (B, N_max, k * D)
        return self.adapter(stacked.to(self.adapter.w_in.weight.dtype))

    def num_audio_tokens(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        return num_audio_tokens(num_samples, downsample_factor=self.config.downsample_factor,
                                max_source_positions=self.config.encoder_config.max_source_positions,
                                trim=self.config.trim_audio_tokens)

    def embed(self, input_ids: torch.Tensor, waveforms: torch.Tensor | None = None,
              audio_lengths: torch.Tensor | None = None, input_features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids with N_i `<|AUDIO|>` slots per clip, (A, S) audio + (A,) lengths -> (B, L, H) embeddings."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, L, H)
        slots = input_ids == self.config.audio_token_id  # (B, L)
        if waveforms is None and input_features is None:
            if slots.any():
                raise ValueError(f"input_ids hold {int(slots.sum())} {AUDIO_TOKEN} tokens but no audio was given")
            return embeds
        if audio_lengths is None:
            raise ValueError("audio_lengths is required with audio: (A,) valid samples per clip")
        if input_features is None:
            frames = None
            if getattr(self.config, "encoder_window", "full") == "batch":  # padded width: no device sync
                frames = window_frames(waveforms.shape[-1], self.config.downsample_factor,
                                       self.config.encoder_config.max_source_positions)
            input_features = self.features(waveforms, audio_lengths, frames)  # (A, M, T_mel)
        audio = self.encode_audio(input_features)  # (A, N_max, H)
        n = self.num_audio_tokens(audio_lengths)  # (A,)
        valid = torch.arange(audio.shape[1], device=audio.device) < n[:, None]  # (A, N_max)
        if int(slots.sum()) != int(n.sum()):
            raise ValueError(
                f"the prompts hold {int(slots.sum())} {AUDIO_TOKEN} tokens but the audio gives {int(n.sum())} "
                f"embeddings ({n.tolist()} per clip); build prompts with encode_prompt(num_samples=...) so each "
                f"clip's placeholder expands to exactly its N tokens, in the same row order as the audio")
        return embeds.masked_scatter(slots[..., None], audio[valid].to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, waveforms: torch.Tensor | None = None,
                audio_lengths: torch.Tensor | None = None, input_features: torch.Tensor | None = None, **kwargs):
        """LLM output (logits, loss with `labels`) for (B, L) ids and the audio of their slots (see `embed`)."""
        embeds = self.embed(input_ids, waveforms, audio_lengths, input_features)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    # ------------------------------------------------------------------ prompts and generation
    def encode_prompt(self, messages: list[dict[str, str]], num_samples: int | None) -> list[int]:
        """ChatML ids of a chat ready for generation; the audio placeholder becomes start + N slots + end.

        Segments are tokenised one by one, exactly as the training package's `PromptBuilder`.
        """
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; load it with from_pretrained")
        messages = list(messages)
        system = self.config.system_prompt
        if messages and messages[0]["role"] != "system" and system:
            messages.insert(0, {"role": "system", "content": system})
        holders = sum(m["content"].count(AUDIO_PLACEHOLDER) for m in messages)
        expected = 0 if num_samples is None else 1
        if holders != expected:
            raise ValueError(
                f"a prompt needs {expected} audio placeholder(s) {AUDIO_PLACEHOLDER!r} "
                f"({'audio' if num_samples is not None else 'no audio'} given), found {holders}; "
                "write exactly one placeholder in the user prompt")
        segments: list[str] = []
        for m in messages:
            segments.append(f"{IM_START}{m['role']}\n")
            body = m["content"]
            if AUDIO_PLACEHOLDER in body:
                before, after = body.split(AUDIO_PLACEHOLDER)
                segments += [before, AUDIO_PLACEHOLDER, after + IM_END]
            else:
                segments.append(body + IM_END)
            segments.append("\n")
        segments.append(f"{IM_START}assistant\n")
        pieces = iter(self.tokenizer([s for s in segments if s != AUDIO_PLACEHOLDER],
                                     add_special_tokens=False)["input_ids"])
        ids: list[int] = []
        for s in segments:
            if s == AUDIO_PLACEHOLDER:
                n = int(self.num_audio_tokens(num_samples))
                ids += [self.config.audio_start_id] + [self.config.audio_token_id] * n + [self.config.audio_end_id]
            else:
                ids += next(pieces)
        return ids

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IM_END)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_id

    @torch.no_grad()
    def generate(self, audio: torch.Tensor | list[torch.Tensor] | None = None, user_prompt: str | None = None,
                 system_prompt: str | None = None, max_new_tokens: int = 256, *,
                 input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 waveforms: torch.Tensor | None = None, audio_lengths: torch.Tensor | None = None,
                 **generate_kwargs) -> torch.Tensor:
        """Greedy (by default) KV-cached generation; returns (B, new_tokens) ids.

        Args:
            audio: a 1-D float tensor (or array) at 16 kHz, or a list of them (a batch, left-padded).
            user_prompt: the user turn with one `<|start_of_audio|><|end_of_audio|>` placeholder.
            system_prompt: the system turn; None or "" uses `config.system_prompt`.
            max_new_tokens: generation limit.
            input_ids / attention_mask / waveforms / audio_lengths: a prepared left-padded batch instead.
            **generate_kwargs: passed to the LLM's `generate` (e.g. do_sample=True).
        """
        if audio is not None:
            input_ids, attention_mask, waveforms, audio_lengths = self._client_batch(audio, user_prompt, system_prompt)
        if input_ids is None:
            raise ValueError("generate needs either audio= and user_prompt= or input_ids=")
        embeds = self.embed(input_ids, waveforms, audio_lengths)
        generate_kwargs.setdefault("do_sample", False)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id, **generate_kwargs)

    def _client_batch(self, audio, user_prompt: str | None, system_prompt: str | None):
        clips = [audio] if getattr(audio, "ndim", None) == 1 else list(audio)  # a tensor / array, or several
        if user_prompt is None:
            raise ValueError(f"user_prompt is required, e.g. 'What is this audio about? {AUDIO_PLACEHOLDER}'")
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": user_prompt})
        encoded = [self.encode_prompt(messages, num_samples=len(c)) for c in clips]
        device = self.adapter.w_in.weight.device
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[self.pad_token_id] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        lengths = torch.tensor([len(c) for c in clips], device=device)
        waves = nn.utils.rnn.pad_sequence([torch.as_tensor(c).float().reshape(-1).to(device) for c in clips],
                                          batch_first=True)
        return ids, mask, waves, lengths

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Text of generated ids, special tokens removed."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer to decode with; load it with from_pretrained")
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
