"""Training on top of the inference model: LoRA, reference weight names, init_from, the label-only loss.

The model itself (encoder, stacking, adapter, splice, prompts, `generate`) is
`borealis.hf_remote.modeling_borealis`, the code every export ships. This module adds what
only training needs, composed from Hugging Face parts rather than re-implemented: LoRA
injected with `peft`, the pretrained parts assembled by `from_parts`, the trainable-weights
check (`check_trainable_state`), `init_from` and the loss on labelled positions only.

Checkpoint names follow the reference module (`encoder.*`, `adapter.w_in`, `adapter.w_out`,
`llm.*`): peft's `base_layer` / adapter-name wrapping is undone by state-dict hooks, so a
state dict of the reference code loads with `strict=True`, and LoRA factors are saved as
`llm.<...>.q_proj.lora_A.weight`. A base checkpoint without LoRA factors loads strictly
too: the LoRA factors keep their initial values (peft's: B = 0, so the LLM is unchanged; see
`post_init`).

`init_from` (`load_init_weights`) starts instruction tuning from a pretrain, the seed's two
stages: a stage-1 `borealis fit` checkpoint, a saved or exported model, the seed's state dict
(whose full LLM weights replace the frozen base LLM, LoRA fresh on top) or a hub id such as the
seed's `AlexWortega/Borealis5b_90k`.

Cost at Borealis-5B shapes: ~5.2B parameters, ~0.55B trainable with the default LoRA
(r = 256 on every projection; `python -m borealis.shapes` prints the table).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperModel

from borealis.hf_remote import modeling_borealis as inference
from borealis.hf_remote.configuration_borealis import BorealisConfig, check_encoder_window
from borealis.hf_remote.modeling_borealis import run_encoder, shared_prefix_length
from borealis.loss import label_cross_entropy
from borealis.prompts import AUDIO_END, AUDIO_START, AUDIO_TOKEN, IGNORE_INDEX, add_audio_tokens

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # base_dtype, --dtype

__all__ = ["BorealisConfig", "BorealisForConditionalGeneration", "DTYPES", "LoraSettings", "check_encoder_window",
           "check_trainable_state", "load_init_weights", "read_weights", "run_encoder", "shared_prefix_length"]


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


def _reference_name(native: str) -> str:
    """peft-wrapped parameter name -> the reference module's plain name."""
    return native.replace(".base_layer.", ".").replace(".default.", ".")


def _unwrapped_name(name: str) -> str:
    """A parameter name without the FSDP and activation-checkpoint wrappers' path parts, as
    their state dicts write it (`layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp`
    -> `layers.0.mlp`); unwrapped names pass unchanged."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


class BorealisForConditionalGeneration(inference.BorealisForConditionalGeneration):
    """The inference model plus training: LoRA (optional), a frozen or trained encoder, checkpoint names.

    Build it from pretrained parts with `from_parts`, reload a saved one with
    `from_pretrained`, or construct it from a `BorealisConfig` (random weights).
    """

    supports_gradient_checkpointing = True

    def _configure_parts(self) -> None:
        """LoRA into the LLM, the encoder frozen or not, and the checkpoint-name hooks; before
        `post_init`, which initialises the new LoRA layers (see `post_init`)."""
        config = self.config
        if config.lora:
            self._inject_lora(config.lora)
        else:
            self.llm.requires_grad_(True)
        self.encoder.requires_grad_(not config.freeze_encoder)
        if config.freeze_encoder:
            self.encoder.eval()
        self._loaded_lora = True
        self.register_state_dict_post_hook(_to_reference_names)
        self.register_load_state_dict_pre_hook(_from_reference_names)
        self.register_load_state_dict_post_hook(_allow_missing_fresh_parts)

    def post_init(self) -> None:
        """`post_init`, then peft's LoRA start: A Kaiming-uniform, B = 0. The LLM's `_init_weights`
        (run by `post_init`) draws both factors from its normal init, which would add a random
        B·A to every adapted weight; with B = 0 a fresh LoRA leaves the LLM exactly as loaded,
        so training (or a stage-2 run on a pretrain) starts from the base model's behaviour."""
        super().post_init()
        from peft.tuners.lora import LoraLayer

        for module in self.llm.modules():
            if isinstance(module, LoraLayer):
                for adapter in module.lora_A:
                    module.reset_lora_parameters(adapter, True)

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
        """Write config.json, model.safetensors (reference names) and the tokenizer."""
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

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
             waveforms: torch.Tensor | None = None, audio_lengths: torch.Tensor | None = None,
             input_features: torch.Tensor | None = None, position_ids: torch.Tensor | None = None, *,
             reduction: Literal["mean", "sum", "none"] = "mean", chunk_tokens: int | None = None) -> torch.Tensor:
        """`forward(...).loss`, with logits computed only where a label is (the training step's path).

        Why: the causal LM's own forward projects every position onto the vocabulary and casts
        those logits to float32 for the loss: at Qwen3-4B (151,936 x 2,560) that is 0.78 GFLOP
        and 0.6 MB per position, for a 505-token row 0.3 GB, of which only the transcript
        (~100 positions) carries loss. Here the decoder's hidden states of the labelled
        positions alone go through the LM head (`loss.label_cross_entropy`; `chunk_tokens` of
        them at a time when set). Equal to `forward(...).loss` (mean next-token cross-entropy
        over the labelled tokens; tests/test_modeling.py). LMs whose head does more than a
        linear map (logit soft-capping, scaling) take the forward path.

        Args:
            input_ids / labels / attention_mask / waveforms / audio_lengths / input_features:
                as `forward`.
            position_ids: (B, L) for packed rows (`data.collate` with `Batching.pack`): each
                sample's positions restart at 0; with `attention_mask` None the LLM confines
                attention to each sample (a block-diagonal mask for sdpa/eager, the varlen
                kernel for flash-attention).
            reduction: "mean" over the labelled tokens, "sum" (float32), or "none": (N,) one
                loss per labelled token in row-major order (plain path, for tests and analysis).
            chunk_tokens: labelled positions per LM-head chunk (`loss.label_cross_entropy`).
        """
        llm_config = self.llm.config
        if any(getattr(llm_config, name, None) for name in ("final_logit_softcapping", "logit_scale")):
            if reduction != "mean" or position_ids is not None:
                raise ValueError(f"{type(self.llm).__name__} post-processes its logits: its loss is the causal LM's "
                                 f"own forward, which supports reduction='mean' without packed rows only")
            return self(input_ids, attention_mask, labels, waveforms, audio_lengths, input_features).loss
        embeds = self.embed(input_ids, waveforms, audio_lengths, input_features)
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                        use_cache=False).last_hidden_state  # (B, L, H)
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX  # (B, L - 1): position t predicts token t + 1
        head = self.llm.get_output_embeddings()
        if reduction == "mean" and chunk_tokens is None:
            logits = head(hidden[:, :-1][keep])  # (labels, V)
            return nn.functional.cross_entropy(logits.float(), targets[keep])
        if reduction == "none":
            return nn.functional.cross_entropy(head(hidden[:, :-1][keep]).float(), targets[keep], reduction="none")
        if head.bias is not None:
            raise ValueError("chunked label loss needs an LM head without bias")
        total = label_cross_entropy(hidden[:, :-1][keep], head.weight, targets[keep], chunk_tokens)
        return total if reduction == "sum" else total / keep.sum().clamp(min=1)

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

    def compute_lora_in_autocast_dtype(self, enabled: bool = True) -> int:
        """Stop peft casting each LoRA input to the LoRA weights' dtype; returns the LoRA layers set.

        Why: under bf16 autocast peft casts every LoRA layer's bf16 input to the float32 LoRA
        weights (an activation-sized copy), and autocast casts it back to bf16 for the matmul:
        two activation copies per adapted projection per forward (252 at Qwen3-4B with 7
        targets x 36 layers; 22% of GPU time in one H100 profile, BENCHMARKS.md). With the
        cast off the input stays in the autocast dtype and only the LoRA weights are cast,
        once per forward (autocast's cache: r x H each, independent of the tokens), while
        the optimizer keeps them, and their gradients, in float32. Only valid under autocast
        (`precision: bf16-mixed` / `16-mixed`): without it a bf16 input would meet float32
        weights. `BorealisLightningModule.configure_model` sets it for mixed precision.
        """
        from peft.tuners.lora import LoraLayer

        layers = [m for m in self.llm.modules() if isinstance(m, LoraLayer)]
        for module in layers:
            module.cast_input_dtype_enabled = not enabled
        return len(layers)

    def checkpoint_decoder_layers(self, every: int) -> int:
        """Activation checkpointing on every `every`-th decoder layer of the LLM (0: none); returns
        how many layers were wrapped. A wrapped layer keeps only its input for backward and runs
        its forward again there (~1/3 more decoder FLOPs when every layer is wrapped)."""
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (apply_activation_checkpointing,
                                                                                 checkpoint_wrapper)

        if every < 0:
            raise ValueError(f"model.activation_checkpointing must be >= 0 (0: off, k: every k-th decoder layer), "
                             f"got {every}")
        if every == 0:
            return 0
        layers = self.llm.get_decoder().layers
        chosen = {id(layer) for i, layer in enumerate(layers) if i % every == 0}
        apply_activation_checkpointing(self.llm, checkpoint_wrapper_fn=checkpoint_wrapper,
                                       check_fn=lambda m: id(m) in chosen)
        return len(chosen)

    def trainable_parameter_names(self) -> list[str]:
        """Reference names of the parameters that train (what a checkpoint must hold), also
        while FSDP wraps the layers."""
        return [checkpoint_name(n) for n, p in self.named_parameters() if p.requires_grad]


def checkpoint_name(native: str) -> str:
    """A parameter's name in checkpoints: the reference name, without peft's and the wrappers' path parts."""
    return _unwrapped_name(_reference_name(native))


# ---------------------------------------------------------------------- state-dict hooks
def _to_reference_names(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + _reference_name(key[len(prefix):])
        if new != key:
            state_dict[new] = state_dict.pop(key)


def _from_reference_names(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    # Under FSDP the wrapped layers' own load hooks insert their path parts further down the load.
    names = [_unwrapped_name(n) for n, _ in (*module.named_parameters(remove_duplicate=False),
                                              *module.named_buffers(remove_duplicate=False))]
    native = {_reference_name(n): n for n in names}
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
HUB_WEIGHTS = (f"{WEIGHTS_NAME}.index.json", WEIGHTS_NAME, "pytorch_model.bin")  # looked up in this order


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights source, for `load_init_weights`.

    Accepts a model directory (`model.safetensors`, or a sharded `model.safetensors.index.json`,
    as `save_pretrained` and `borealis.export` write), a `.safetensors` file, a torch file
    (`.pt`/`.bin`/`.ckpt`: a plain state dict, `{"state_dict": ...}` or `{"model": ...}`; a
    Lightning checkpoint's "model." prefix is dropped), or a Hugging Face repo id
    (`owner/name`, e.g. the seed's pretrain `AlexWortega/Borealis5b_90k`) that is not a local
    path: its first file of `HUB_WEIGHTS` is fetched through huggingface_hub's cache, like
    any `from_pretrained` id, so `HF_HUB_OFFLINE=1` reads a cached copy. Torch files load
    with `weights_only=True`: no pickled code runs.

    Raises:
        FileNotFoundError: nothing loadable at `path` (locally, or in the hub/its cache).
    """
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists() and _is_repo_id(str(path)):
        p = _hub_weights(str(path))
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


def _is_repo_id(name: str) -> bool:
    """`owner/name` with the hub's characters, no file suffix: what `from_pretrained` would look up."""
    import re

    return (re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not name.startswith(".")
            and Path(name).suffix not in {".pt", ".bin", ".ckpt", ".safetensors", ".pth"})


def _hub_weights(repo_id: str) -> Path:
    """The local path of `repo_id`'s weights: the snapshot folder of a sharded index (its shards
    fetched too) or the single weights file, downloaded or, offline, read from the cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    for name in HUB_WEIGHTS:
        try:
            local = Path(hf_hub_download(repo_id, name))
        except EntryNotFoundError:  # absent from the repo, or (offline) from the cache
            continue
        except (RepositoryNotFoundError, RevisionNotFoundError) as err:
            raise FileNotFoundError(f"init_from: {repo_id} is neither a local path nor a Hugging Face repo "
                                    f"({type(err).__name__})") from err
        if name.endswith(".index.json"):
            import json

            for shard in sorted(set(json.loads(local.read_text())["weight_map"].values())):
                hf_hub_download(repo_id, shard)
            return local.parent
        return local
    raise FileNotFoundError(
        f"init_from: {repo_id} is not a local path, and the Hugging Face repo of that name has none of "
        f"{list(HUB_WEIGHTS)} (offline, HF_HUB_OFFLINE=1: none in the cache; fetch it with "
        f"`hf download {repo_id}` where the hub is reachable, or pass a local folder or file)")


def _state_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """The model's state-dict keys (reference names) and tensor shapes, read from its modules, so
    that nothing is gathered under FSDP."""
    shapes = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        tensors = [*module._parameters.items(),
                   *((n, b) for n, b in module._buffers.items() if n not in module._non_persistent_buffers_set)]
        for name, tensor in tensors:
            if tensor is not None:
                shapes[_unwrapped_name(_reference_name(f"{prefix}.{name}" if prefix else name))] = tensor.shape
    return shapes


def check_trainable_state(model, state: Mapping[str, torch.Tensor], *, source: str, allow_frozen: bool = False,
                          lora_optional: bool = False, encoder_optional: bool = False,
                          whole_parts: bool = False) -> None:
    """Check that `state` holds exactly the trainable weights of `model`, in their shapes.

    Args:
        model: a `BorealisForConditionalGeneration` (its layers may be FSDP-wrapped).
        state: tensors under the model's own parameter names (reference names, no "model." prefix).
        source: what `state` came from, for the message (a path, "the checkpoint").
        allow_frozen: keys of the model's frozen weights may be present too (a full saved model,
            a pretrain that fine-tuned the whole LLM).
        lora_optional: the LoRA factors may all be absent (fresh LoRA on top of, e.g., a merged export).
        encoder_optional: a trained encoder's weights may all be absent: it keeps the `encoder`
            checkpoint's (a pretrain that froze the encoder, for a run that trains it).
        whole_parts: a part (`encoder.`, `llm.`) of whose frozen weights `state` holds some must
            hold all of them, so that loading it never half replaces a base.

    Raises:
        ValueError: naming `source` and listing every missing trainable key, unexpected key and
            shape mismatch, with a hint at the settings that decide the trainable weights.
    """
    shapes = _state_shapes(model)
    trainable = model.trainable_parameter_names()
    allowed = set(shapes) if allow_frozen else set(trainable)
    skip_lora = lora_optional and not any(".lora_" in k for k in state)
    skip_encoder = encoder_optional and not any(k.startswith("encoder.") for k in state)
    unexpected = sorted(set(state) - allowed)
    missing = sorted(k for k in trainable if k not in state and not (skip_lora and ".lora_" in k)
                     and not (skip_encoder and k.startswith("encoder.")))
    partial = _partial_frozen_parts(model, shapes, set(trainable), state) if whole_parts else []
    # FSDP keeps each unit's parameters as flat shards (use_orig_params): their shapes say nothing here
    sharded = any("_fsdp_wrapped_module." in n for n, _ in model.named_parameters())
    mismatched = [] if sharded else sorted(
        f"{k}: {tuple(state[k].shape)}, in the model {tuple(shapes[k])}"
        for k in set(state) & allowed if state[k].shape != shapes[k])
    problems = [f"{len(missing)} missing trainable key(s): {missing[:20]}" if missing else "",
                f"{len(unexpected)} unexpected key(s): {unexpected[:20]}" if unexpected else "",
                f"{len(mismatched)} shape mismatch(es): {mismatched[:10]}" if mismatched else "", *partial]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"{source} does not match this model's trainable weights: " + "; ".join(problems)
                         + ". Was it saved from a model with the same encoder, LLM, adapter, LoRA and "
                         "freeze_encoder settings? Pass the config it was trained with.")


def _partial_frozen_parts(model, shapes: Mapping[str, torch.Size], trainable: set[str],
                          state: Mapping[str, torch.Tensor]) -> list[str]:
    """A problem line for each part (`encoder.`, `llm.`) of which `state` holds some frozen weights but not all."""
    tied = getattr(model.config.llm_config, "tie_word_embeddings", False)
    problems = []
    for part in ("encoder.", "llm."):
        frozen = [k for k in shapes if k.startswith(part) and k not in trainable
                  and not (tied and k == "llm.lm_head.weight")]
        missing = sorted(k for k in frozen if k not in state)
        if missing and len(missing) < len(frozen):
            problems.append(f"{len(missing)} of the {len(frozen)} frozen {part[:-1]} weights missing (a source "
                            f"replaces a frozen part whole or not at all): {missing[:20]}")
    return problems


def load_init_weights(model: BorealisForConditionalGeneration, path: str | Path) -> dict[str, int]:
    """Start `model` from a pretrain: a stage-1 checkpoint, an exported/saved Borealis model, or the seed's state dict.

    `path` is anything `read_weights` reads: a local folder or file (a `borealis fit` `.ckpt`
    too) or a Hugging Face repo id. Names are the reference module's (`encoder.*`,
    `adapter.w_in/w_out`, `llm.*`, LoRA as `llm.<...>.lora_A.weight`). The source must hold
    every trainable weight and nothing the model lacks, except that it may omit
      - the frozen base (it comes from the model's `encoder`/`llm` checkpoints);
      - every LoRA factor: fresh LoRA on top, e.g. of a merged export or of the seed's
        pretrain, whose code fine-tuned the whole LLM: its full `llm.*` weights replace the
        frozen base LLM (a frozen part is replaced whole, never in part);
      - the whole encoder when this model trains it (it starts from the `encoder` checkpoint).
    A trainable weight is loaded at the source's precision when that is the wider (a float32
    stage-1 checkpoint into a bfloat16 base's LoRA is not rounded), so the run starts from
    exactly the source's trained weights.

    Returns:
        {"loaded": tensors loaded, "frozen": of them into frozen weights, "fresh_lora": LoRA
        factors left at their init}.

    Raises:
        ValueError: listing every unexpected key, missing trainable key, shape mismatch or
            partly given frozen part.
        FileNotFoundError: nothing loadable at `path`.
    """
    state = read_weights(path)
    if getattr(model.config.llm_config, "tie_word_embeddings", False):
        state.pop("llm.lm_head.weight", None)
    check_trainable_state(model, state, source=f"init_from {path}", allow_frozen=True, lora_optional=True,
                          encoder_optional=True, whole_parts=True)
    trainable = set(model.trainable_parameter_names())
    for name, param in model.named_parameters():
        src = state.get(_reference_name(name))
        if (param.requires_grad and src is not None and src.is_floating_point()
                and torch.finfo(src.dtype).bits > torch.finfo(param.dtype).bits):
            param.data = param.data.to(src.dtype)
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    frozen = sum(k not in trainable for k in state)
    fresh = 0 if any(".lora_" in k for k in state) else sum(".lora_" in k for k in trainable)
    log.info("init_from %s: loaded %d tensors (%d into the frozen base)%s", path, len(state), frozen,
             f", {fresh} LoRA factors fresh" if fresh else "")
    return {"loaded": len(state), "frozen": frozen, "fresh_lora": fresh}
