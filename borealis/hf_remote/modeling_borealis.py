"""The Borealis audio-language model: Whisper encoder -> k-frame stacking -> adapter -> causal LM.

What: `BorealisForConditionalGeneration`, the model that inference runs, in the training
package (`borealis.modeling` adds LoRA injection and the training loss on top of it) and in
every exported directory, where plain transformers loads it:

    model = AutoModel.from_pretrained(path, trust_remote_code=True, device="cuda")
    ids = model.generate(audio=<1-D float tensor, 16 kHz>,
                         user_prompt="What is this audio about? <|start_of_audio|><|end_of_audio|>",
                         system_prompt="You are a helpful voice assistant.", max_new_tokens=256)
    text = model.decode(ids[0])

Why this shape: a published model is used where the training package is not installed, so
this folder imports only torch, transformers and its own files (relatively), and
`borealis.export` copies the files as they are. The model is composed from Hugging Face
parts, as transformers' Voxtral is: `WhisperEncoder` and any `AutoModelForCausalLM`. What
Borealis owns is small: the log-mel (`features_borealis.py`), the stacking and adapter
(`adapters_borealis.py`), the ChatML prompt with N `<|AUDIO|>` slots (`prompts_borealis.py`)
and the splice: all audio rows of a batch go through the encoder at once, and their N_i
valid adapter outputs fill the slots with one `masked_scatter`, no Python loop over samples.
Parameter names (`encoder.*`, `adapter.w_in`, `llm.*`) are the reference module's.

LoRA: exports merge it by default. An export made with `--keep-adapter` holds the LLM's
peft adapter in the `lora_adapter` subfolder (a standard `adapter_config.json` +
`adapter_model.safetensors`); `from_pretrained` applies it with peft and raises if peft is
missing rather than silently running the base model. It is a subfolder because transformers
treats an `adapter_config.json` at the top of a directory as an adapter for the whole model.

Cost: one STFT + one matmul for the log-mel, the Whisper encoder on its window per clip,
then KV-cached greedy decoding of the LLM, the batch's shared prompt prefix prefilled once.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .adapters_borealis import ADAPTERS, stack_frames
from .configuration_borealis import BorealisConfig
from .features_borealis import WhisperLogMel, window_frames
from .prompts_borealis import (AUDIO_END, AUDIO_PLACEHOLDER, AUDIO_START, AUDIO_TOKEN, IM_END, PromptBuilder,
                               num_audio_tokens)

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


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


class BorealisForConditionalGeneration(PreTrainedModel):
    """Whisper encoder + k-frame stacking + adapter + causal LM.

    Args:
        config: the model's `BorealisConfig`.
        encoder: a pretrained Whisper encoder to use (None builds one from the config).
        llm: a pretrained causal LM to use (None builds one from the config).
        tokenizer: the LLM's tokenizer with the audio tokens (`from_pretrained` loads it).
    """

    config_class = BorealisConfig
    base_model_prefix = "borealis"
    main_input_name = "input_ids"
    _no_split_modules = ["WhisperEncoderLayer", "Qwen3DecoderLayer"]

    def __init__(self, config: BorealisConfig, *, encoder: WhisperEncoder | None = None,
                 llm: PreTrainedModel | None = None, tokenizer=None) -> None:
        super().__init__(config)
        self.encoder = encoder if encoder is not None else WhisperEncoder(config.encoder_config)
        self.llm = llm if llm is not None else AutoModelForCausalLM.from_config(config.llm_config)
        k, d = config.downsample_factor, config.encoder_config.d_model
        self.adapter = ADAPTERS[config.adapter](k * d, config.llm_config.hidden_size)
        self.features = WhisperLogMel.from_encoder_config(config.encoder_config)
        self.tokenizer = tokenizer
        self._prompts: PromptBuilder | None = None
        self._configure_parts()
        self.post_init()

    def _configure_parts(self) -> None:
        """Adjust the built parts before `post_init` initialises what is new: nothing here; training
        (`borealis.modeling`) injects LoRA and freezes parts, so `post_init` sees the LoRA layers."""

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, WhisperLogMel):
            module.reset_buffers()
        elif module is not self:
            super()._init_weights(module)  # only for weights missing from the checkpoint

    # ------------------------------------------------------------------ loading
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

    # ------------------------------------------------------------------ audio
    @property
    def prompts(self) -> PromptBuilder:
        """The prompt builder of this model's tokenizer, audio geometry and system prompt."""
        if self._prompts is None:
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer; build it with from_parts or load it with from_pretrained")
            self._prompts = PromptBuilder(
                self.tokenizer, downsample_factor=self.config.downsample_factor,
                max_source_positions=self.config.encoder_config.max_source_positions,
                trim_audio_tokens=self.config.trim_audio_tokens, system_prompt=self.config.system_prompt)
        return self._prompts

    def num_audio_tokens(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        return num_audio_tokens(num_samples, downsample_factor=self.config.downsample_factor,
                                max_source_positions=self.config.encoder_config.max_source_positions,
                                trim=self.config.trim_audio_tokens)

    def encoder_frames(self, longest_samples: int) -> int:
        """Encoder positions a batch whose longest clip has `longest_samples` runs through."""
        if self.config.encoder_window == "full":
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
        if self.config.encoder_window == "full":
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
                f"embeddings ({n.tolist()} per clip); build prompts with model.prompts.encode(messages, "
                f"num_samples=...) so each clip's placeholder expands to exactly its N tokens, in the same row "
                f"order as the audio")
        return embeds.masked_scatter(slots[..., None], audio[valid].to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, waveforms: torch.Tensor | None = None,
                audio_lengths: torch.Tensor | None = None, input_features: torch.Tensor | None = None, **kwargs):
        """LLM output: logits, and the LM loss with `labels` (-100 on ignored tokens).

        Args:
            input_ids: (B, L); attention_mask: (B, L); labels: (B, L).
            waveforms / audio_lengths / input_features: see `embed`.
        """
        embeds = self.embed(input_ids, waveforms, audio_lengths, input_features)
        # No KV cache unless asked (`generate` has its own): a loss pass never reads one, and under
        # activation checkpointing (FSDP) the recomputed layers would append to it a second time.
        kwargs.setdefault("use_cache", False)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    # ------------------------------------------------------------------ generation
    def encode_prompt(self, messages: list[dict[str, str]], num_samples: int | None) -> list[int]:
        """ChatML ids of a chat ready for generation; the audio placeholder becomes start + N slots + end."""
        return self.prompts.encode(messages, num_samples=num_samples, generation=True).input_ids

    @torch.no_grad()
    def generate(self, audio: torch.Tensor | list[torch.Tensor] | None = None, user_prompt: str | None = None,
                 system_prompt: str | None = None, max_new_tokens: int = 256, *,
                 input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 waveforms: torch.Tensor | None = None, audio_lengths: torch.Tensor | None = None,
                 synced_gpus: bool = False, **generate_kwargs) -> torch.Tensor:
        """Greedy (by default) generation with the KV cache; returns (B, new_tokens) ids.

        In a batch, the prompt prefix every row shares (system turn, instruction) is prefilled
        once (`_prefill_shared_prefix`); pass `cache=None` to prefill every row whole.

        `synced_gpus=True` is for weights sharded over ranks (FSDP, DeepSpeed ZeRO-3), where every
        forward of a sharded layer is a collective that all ranks must join: each rank then runs
        the same forwards whatever its batch holds. The LLM keeps stepping until every rank's rows
        are finished (transformers' `synced_gpus`: one all-reduce of an "all finished" flag per
        step, the finished ranks' tokens discarded); the shared-prefix pass is skipped (whether a
        batch has a shared prefix depends on its rows, and under sharding that pass would gather
        every decoder layer once more per batch); and a batch without audio runs the encoder on
        one silent sample, its output discarded. The greedy tokens are those of `synced_gpus=False`.

        Args:
            audio: a 1-D float tensor (or array) at 16 kHz, or a list of them (a batch, left-padded).
            user_prompt: the user turn with one `<|start_of_audio|><|end_of_audio|>` placeholder.
            system_prompt: the system turn; None or "" uses `config.system_prompt`.
            max_new_tokens: generation limit.
            input_ids / attention_mask / waveforms / audio_lengths: a prepared left-padded batch
                (the collator's) instead of `audio` and `user_prompt`.
            synced_gpus: run the same forwards as the other ranks (see above); needs
                `torch.distributed` initialised. False costs nothing.
            **generate_kwargs: passed to the LLM's `generate` (e.g. do_sample=True).
        """
        if audio is not None:
            input_ids, attention_mask, waveforms, audio_lengths = self._client_batch(audio, user_prompt, system_prompt)
        if input_ids is None:
            raise ValueError("generate needs either audio= and user_prompt= or input_ids=")
        embeds = self.embed(input_ids, waveforms, audio_lengths)
        if synced_gpus and waveforms is None:  # the encoder's layers gather as on the ranks with audio
            silence = embeds.new_zeros(1, 1, dtype=torch.float32)  # (1, S=1)
            self.encode_audio(self.log_mel(silence, torch.ones(1, dtype=torch.long, device=silence.device)))
        prompts = self.prompts
        generate_kwargs.setdefault("do_sample", False)
        if attention_mask is not None and "cache" not in generate_kwargs and not synced_gpus:
            embeds, attention_mask, generate_kwargs["cache"] = self._prefill_shared_prefix(
                input_ids, attention_mask, embeds)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=prompts.eos_token_id, pad_token_id=prompts.pad_token_id,
                                 synced_gpus=synced_gpus, **generate_kwargs)

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
        """(input_ids, attention_mask, waveforms, audio_lengths) of clips under one prompt, left-padded."""
        clips = [audio] if getattr(audio, "ndim", None) == 1 else list(audio)  # a tensor / array, or several
        if user_prompt is None:
            raise ValueError(f"user_prompt is required, e.g. 'What is this audio about? {AUDIO_PLACEHOLDER}'")
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": user_prompt})
        encoded = [self.encode_prompt(messages, num_samples=len(c)) for c in clips]
        device = self.adapter.w_in.weight.device
        width = max(len(e) for e in encoded)
        pad = self.prompts.pad_token_id
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
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
