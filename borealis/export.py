"""Export a trained checkpoint as a Hugging Face model directory, or as a stock Voxtral model.

What: `export(ckpt, out, config=...)` turns a Lightning checkpoint of `borealis fit` (trainable
weights + hyper-parameters only, see `module.py`) into a directory that plain transformers
loads, in one of two formats:

* `hf` (default): `config.json` with `auto_map`, sharded `model*.safetensors`, the tokenizer,
  `preprocessor_config.json` (WhisperFeatureExtractor), `generation_config.json` and the remote
  code of `borealis/hf_remote/` (torch + transformers only). It serves the reference client calls:
  `AutoModel.from_pretrained(dir, trust_remote_code=True)`, `model.generate(audio=...,
  user_prompt=..., system_prompt=..., max_new_tokens=...)`, `model.decode(ids[0])`. LoRA is
  merged into the LLM; `keep_adapter=True` writes it as a peft adapter in `lora/` instead.
* `voxtral`: the layout of `transformers.VoxtralForConditionalGeneration`, loaded with no
  remote code. Voxtral is the same recipe (Whisper encoder, 4-frame stacking, bias-free
  Linear -> GELU -> Linear, any causal LM, `masked_scatter` into audio slots), so a model
  maps onto it weight for weight when it was trained with `trim_audio_tokens: false` and the
  simple adapter; anything else is refused with the reason (`voxtral_problems`).

Both formats get a model card, `README.md` (`model_card.py`): what the model is, the WER table of
a `borealis validate` report (`wer=`), the pinned `pip install` line and a snippet that runs as printed.

Why: the checkpoint alone needs this package, the base models it names and the YAML it
was trained with; an export is self-contained and is what gets published and served.

Cost: the base models load in float32 (exact LoRA merge, ~21 GB of RAM at 5B shapes), then
the weights are cast to `dtype` and written once. A few minutes for Borealis-5B on a CPU.
Checkpoints load with `torch.load(weights_only=True)`: tensors and plain values, never code.
"""

from __future__ import annotations

import inspect
import logging
import pickle
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoTokenizer, WhisperFeatureExtractor

from borealis.features import HOP_LENGTH, N_FFT, SAMPLE_RATE
from borealis.model_card import model_card, parameter_counts, read_wer, write_card
from borealis.modeling import (DTYPES, BorealisForConditionalGeneration, LoraSettings, check_trainable_state,
                               load_init_weights)
from borealis.settings import merged_section, plain

log = logging.getLogger(__name__)

FORMATS = ("hf", "voxtral")
REMOTE_CODE = Path(__file__).with_name("hf_remote")
REMOTE_FILES = tuple(sorted(p.name for p in REMOTE_CODE.glob("*_borealis.py")))  # the model's code, copied as is
AUTO_MAP = {"AutoConfig": "configuration_borealis.BorealisConfig",
            "AutoModel": "modeling_borealis.BorealisForConditionalGeneration"}
LORA_SUBFOLDER = "lora"
# Module arguments that shape the weights or what they compute: a checkpoint is only the model they describe.
ARCHITECTURE_KEYS = ("downsample_factor", "adapter", "trim_audio_tokens", "encoder_window", "lora", "freeze_encoder")


# ---------------------------------------------------------------------- inputs
def load_checkpoint(path: str | Path) -> dict:
    """The dict of a Lightning `.ckpt` (CPU tensors); raises if it is missing or not a checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory (a sharded FSDP/DeepSpeed checkpoint?); export needs "
                         f"the single .ckpt file that ModelCheckpoint writes with the default strategy or ddp")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass the .ckpt written by `borealis fit` "
                                f"(e.g. runs/<run>/checkpoints/last.ckpt)")
    # Tensors and plain values only, and LoraSettings, which the hyper_parameters of some checkpoints hold.
    try:
        with torch.serialization.safe_globals([LoraSettings]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        why = [line.strip() for line in str(err).splitlines() if "Unsupported" in line] or [str(err)[:300]]
        raise ValueError(f"{path} holds Python objects beyond tensors and plain values, so it is not loaded "
                         f"(torch.load(weights_only=True)): {why[0]}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass the .ckpt written by "
                         f"`borealis fit`")
    return checkpoint


def _module_defaults() -> dict:
    from borealis.module import BorealisLightningModule

    params = inspect.signature(BorealisLightningModule.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and p.default is not inspect.Parameter.empty}


def _lora_dict(lora) -> dict | None:
    if lora is None:
        return None
    if is_dataclass(lora):
        return asdict(lora)
    lora = plain(dict(lora))
    try:
        return asdict(LoraSettings(**lora))
    except TypeError as err:
        raise ValueError(f"lora={lora!r} is not valid LoraSettings ({err}); keys: r, alpha, dropout, "
                         f"target_modules") from err


def _yaml_model_section(configs: list[Path]) -> dict:
    """The merged `model:` sections of stacked YAMLs (later files win, as `--config a --config b` in LightningCLI)."""
    merged = merged_section(configs, "model")
    if not merged:
        raise ValueError(f"{[str(c) for c in configs]} hold no `model:` section; pass the YAML(s) used for "
                         f"`borealis fit`")
    return merged


def model_settings(checkpoint: dict, config: str | Path | list[str | Path] | None = None) -> dict:
    """The LightningModule's arguments: the YAML's `model:` section if given, else the checkpoint's hparams.

    `config` may be several YAMLs stacked as in training (`--config demo.yaml --config ablation.yaml`).
    Both present: the architecture keys (`ARCHITECTURE_KEYS`) must agree, or this raises with
    every difference; base model paths may differ (the YAML wins: folders move between machines).
    """
    defaults = _module_defaults()
    stored = checkpoint.get("hyper_parameters") or None
    configs = [] if config is None else [Path(c) for c in ([config] if isinstance(config, (str, Path)) else config)]
    if not configs:
        if stored is None:
            raise ValueError("the checkpoint holds no hyper_parameters; pass --config, the YAML it was trained with")
        settings = {**defaults, **dict(stored)}
    else:
        settings = {**defaults, **_yaml_model_section(configs)}
    settings["lora"] = _lora_dict(settings.get("lora"))
    missing = [k for k in ("encoder", "llm") if not settings.get(k)]
    if missing:
        raise ValueError(f"model settings lack {missing}: the base Whisper and LLM checkpoints to build on")
    if configs and stored is not None:
        stored = {**defaults, **dict(stored), "lora": _lora_dict(dict(stored).get("lora", defaults["lora"]))}
        diffs = [f"{k}: config {settings[k]!r} vs checkpoint {stored[k]!r}"
                 for k in ARCHITECTURE_KEYS if settings[k] != stored[k]]
        if diffs:
            raise ValueError(f"{', '.join(map(str, configs))} does not describe the model this checkpoint was "
                             f"trained as: " + "; ".join(diffs)
                             + ". Pass the training YAML(s), or omit --config to use the checkpoint's")
    return settings


def build_model(settings: dict, checkpoint: dict) -> BorealisForConditionalGeneration:
    """The trained model in float32: base parts from `settings` (and `init_from`'s pretrain, as in
    training), trainable weights from the checkpoint.

    Raises a ValueError naming every missing, unexpected or mis-shaped weight when the
    checkpoint does not fit the model the settings describe.
    """
    tokenizer = AutoTokenizer.from_pretrained(settings["llm"])
    model = BorealisForConditionalGeneration.from_parts(
        str(settings["encoder"]), str(settings["llm"]), downsample_factor=settings["downsample_factor"],
        adapter=settings["adapter"], trim_audio_tokens=settings["trim_audio_tokens"], lora=settings["lora"],
        encoder_window=settings["encoder_window"],
        freeze_encoder=settings["freeze_encoder"], dtype=torch.float32, tokenizer=tokenizer)
    if settings.get("init_from"):  # the run started from a pretrain, which may have replaced the frozen base
        load_init_weights(model, settings["init_from"])
    # "model." keys are the LightningModule's model; any other key stays as it is and is unexpected
    trained = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    check_trainable_state(model, trained, source=(
        f"the checkpoint (read as adapter={settings['adapter']!r}, lora={settings['lora']}, "
        f"freeze_encoder={settings['freeze_encoder']})"))
    result = model.load_state_dict(trained, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    # New embedding rows (the audio tokens) are frozen and not in the checkpoint; `from_parts` gives them
    # the mean of the old rows, deterministically, so this build has the rows training had.
    return model.eval()


# ---------------------------------------------------------------------- writing
def _prepare_out(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new --out (nothing is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save_weights(state: dict[str, torch.Tensor], out: Path, dtype: torch.dtype, max_shard_size: int | str,
                  pattern: str = "model{suffix}.safetensors") -> None:
    from huggingface_hub import save_torch_state_dict

    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous() for k, v in state.items()}
    save_torch_state_dict(state, out, filename_pattern=pattern, max_shard_size=max_shard_size,
                          metadata={"format": "pt"})


def _save_preprocessor(model: BorealisForConditionalGeneration, out: Path) -> None:
    """preprocessor_config.json of the WhisperFeatureExtractor that gives the model's log-mel."""
    seconds = model.features.num_samples / SAMPLE_RATE
    if seconds != int(seconds):
        log.warning("encoder window of %.3f s is not whole seconds: WhisperFeatureExtractor cannot express it, "
                    "no preprocessor_config.json written", seconds)
        return
    WhisperFeatureExtractor(feature_size=model.config.encoder_config.num_mel_bins, sampling_rate=SAMPLE_RATE,
                            hop_length=HOP_LENGTH, n_fft=N_FFT, chunk_length=int(seconds)).save_pretrained(out)


def _lora_weights(model: BorealisForConditionalGeneration) -> dict[str, torch.Tensor]:
    """LoRA factors under peft's file names for an adapter of the LLM alone (`base_model.model.<path>`)."""
    return {"base_model.model." + k.removeprefix("llm."): v for k, v in model.state_dict().items() if ".lora_" in k}


def export_hf(model: BorealisForConditionalGeneration, out: Path, *, keep_adapter: bool = False,
              dtype: torch.dtype = torch.float32, max_shard_size: int | str = "5GB",
              system_prompt: str | None = None) -> None:
    """Write the remote-code directory (see the module docstring); merges LoRA unless `keep_adapter`."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from borealis.hf_remote.configuration_borealis import BorealisConfig
    from borealis.prompts import DEFAULT_SYSTEM_PROMPT

    lora = model.config.lora
    if keep_adapter and not lora:
        raise ValueError("--keep-adapter needs a model trained with LoRA; this one has lora: null (nothing to keep)")
    if lora and keep_adapter:
        weights = _lora_weights(model)
        (out / LORA_SUBFOLDER).mkdir()
        LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                   target_modules=list(lora["target_modules"]), bias="none",
                   task_type="CAUSAL_LM").save_pretrained(str(out / LORA_SUBFOLDER))
        save_file({k: v.detach().to(dtype).contiguous() for k, v in weights.items()},  # peft reads one file
                  out / LORA_SUBFOLDER / "adapter_model.safetensors", metadata={"format": "pt"})
        state = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    else:
        if lora:
            model.merge_lora()
        state = model.state_dict()
    if getattr(model.config.llm_config, "tie_word_embeddings", False):
        state.pop("llm.lm_head.weight", None)  # tied to embed_tokens again on load
    _save_weights(state, out, dtype, max_shard_size)

    encoder_config, llm_config = model.config.encoder_config, model.config.llm_config
    encoder_config.dtype = llm_config.dtype = dtype  # else "auto" loading may pick a part's own dtype
    config = BorealisConfig(
        encoder_config=encoder_config, llm_config=llm_config, downsample_factor=model.config.downsample_factor,
        adapter=model.config.adapter, trim_audio_tokens=model.config.trim_audio_tokens,
        encoder_window=model.config.encoder_window, lora=lora if keep_adapter else None, lora_adapter=LORA_SUBFOLDER if keep_adapter else None,
        freeze_encoder=model.config.freeze_encoder,
        audio_token_id=model.config.audio_token_id, audio_start_id=model.config.audio_start_id,
        audio_end_id=model.config.audio_end_id,
        system_prompt=DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt,
        architectures=["BorealisForConditionalGeneration"], dtype=dtype)
    config.auto_map = dict(AUTO_MAP)
    config.save_pretrained(out)
    for name in REMOTE_FILES:
        shutil.copy(REMOTE_CODE / name, out / name)
    model.tokenizer.save_pretrained(out)
    model.llm.generation_config.save_pretrained(out)
    _save_preprocessor(model, out)


def voxtral_problems(model: BorealisForConditionalGeneration) -> list[str]:
    """Why this model cannot be a stock `VoxtralForConditionalGeneration` with equal outputs ([] if it can)."""
    cfg, enc = model.config, model.config.encoder_config
    k, d, ffn = cfg.downsample_factor, enc.d_model, enc.encoder_ffn_dim
    problems = []
    if cfg.adapter != "simple":
        problems.append(f"adapter={cfg.adapter!r}: the deep adapter's LayerNorm + residual MLP blocks have no "
                        f"counterpart in Voxtral's projector (Linear -> GELU -> Linear, no bias)")
    else:
        extra = [n for n, p in model.adapter.named_parameters()
                 if n not in ("w_in.weight", "w_out.weight") and not (n.endswith("bias") and not p.any())]
        if extra:
            problems.append(f"the adapter has parameters Voxtral's bias-free projector lacks: {extra}")
    if cfg.trim_audio_tokens:
        problems.append(
            f"trim_audio_tokens=True: Borealis gives a clip ceil(mel_frames / {2 * k}) audio embeddings (its real "
            f"length), Voxtral always gives the full window ({enc.max_source_positions // k} per "
            f"{model.features.max_seconds:g} s); only models trained with trim_audio_tokens: false match it")
    if k * d != ffn:
        problems.append(
            f"Voxtral stacks encoder frames into rows of audio_config.intermediate_size = encoder_ffn_dim = {ffn} "
            f"values, i.e. {ffn / d:g} frames of d_model = {d}; this model stacks downsample_factor = {k} ({k * d})")
    if enc.max_source_positions % k:
        problems.append(f"max_source_positions = {enc.max_source_positions} is not a multiple of downsample_factor "
                        f"= {k}: Borealis zero-pads each clip's last group, Voxtral's reshape would join clips")
    names = [n for n, _ in model.llm.named_parameters()]
    if not all(n.startswith(("model.", "lm_head.")) for n in names) or "lm_head.weight" not in dict(
            model.llm.named_parameters(remove_duplicate=False)):
        problems.append(f"the LLM ({type(model.llm).__name__}) is not laid out as model.* + lm_head, the layout "
                        f"Voxtral's language_model + lm_head expect")
    return problems


def _refuse_voxtral(model: BorealisForConditionalGeneration) -> None:
    problems = voxtral_problems(model)
    if problems:
        raise ValueError("cannot export as a stock Voxtral model with the same outputs:\n  - " + "\n  - ".join(problems)
                         + "\nuse --format hf (remote code), which serves every Borealis variant")


def export_voxtral(model: BorealisForConditionalGeneration, out: Path, *, dtype: torch.dtype = torch.float32,
                   max_shard_size: int | str = "5GB") -> None:
    """Write a directory `VoxtralForConditionalGeneration.from_pretrained` loads without remote code."""
    from transformers import GenerationConfig, VoxtralConfig, VoxtralEncoderConfig, VoxtralForConditionalGeneration

    _refuse_voxtral(model)
    if model.config.lora:
        model.merge_lora()
    enc = model.config.encoder_config
    audio_config = VoxtralEncoderConfig(
        hidden_size=enc.d_model, intermediate_size=enc.encoder_ffn_dim, num_hidden_layers=enc.encoder_layers,
        num_attention_heads=enc.encoder_attention_heads, num_mel_bins=enc.num_mel_bins,
        max_source_positions=enc.max_source_positions, activation_function=enc.activation_function,
        scale_embedding=enc.scale_embedding, vocab_size=enc.vocab_size)
    text_config = model.config.llm_config.to_dict()
    text_config["dtype"] = str(dtype).removeprefix("torch.")
    config = VoxtralConfig(audio_config=audio_config.to_dict(), text_config=text_config,
                           audio_token_id=model.config.audio_token_id, projector_hidden_act="gelu",
                           architectures=["VoxtralForConditionalGeneration"], dtype=dtype)

    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("encoder."):
            state["model.audio_tower." + name.removeprefix("encoder.")] = tensor
        elif name.startswith("llm.model."):
            state["model.language_model." + name.removeprefix("llm.model.")] = tensor
        elif name == "llm.lm_head.weight":
            state["lm_head.weight"] = tensor.clone()  # Voxtral does not tie it: a tensor of its own
        elif name in ("adapter.w_in.weight", "adapter.w_out.weight"):
            state[f"model.multi_modal_projector.linear_{1 if 'w_in' in name else 2}.weight"] = tensor
    state = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        voxtral = VoxtralForConditionalGeneration(config)
    want = set(voxtral.state_dict())
    if set(state) != want:
        raise AssertionError(f"Voxtral weight map is incomplete: missing {sorted(want - set(state))[:5]}, "
                             f"unexpected {sorted(set(state) - want)[:5]}")
    voxtral.load_state_dict(state, strict=True, assign=True)
    generation = GenerationConfig(**model.llm.generation_config.to_diff_dict())
    generation.eos_token_id, generation.pad_token_id = model.prompts.eos_token_id, model.prompts.pad_token_id
    voxtral.generation_config = generation
    voxtral.save_pretrained(out, max_shard_size=max_shard_size)
    model.tokenizer.save_pretrained(out)
    _save_preprocessor(model, out)


def export(ckpt: str | Path, out: str | Path, *, config: str | Path | list[str | Path] | None = None,
           format: Literal["hf", "voxtral"] = "hf", keep_adapter: bool = False, dtype: str | None = None,
           max_shard_size: int | str = "5GB", wer: str | Path | None = None) -> Path:
    """Export a Lightning checkpoint to `out` (which must not exist or be empty), with its model card.

    Args:
        ckpt: the `.ckpt` written by `borealis fit` (trainable weights + hyper_parameters).
        out: the new model directory.
        config: the training YAML(s) (their `model:` sections, later ones win); None uses the
            checkpoint's hyper_parameters.
        format: `hf` (remote code, the reference client API) or `voxtral` (stock transformers class).
        keep_adapter: `hf` only: write LoRA as a peft adapter in `lora/` instead of merging it.
        dtype: weights dtype on disk (float32 / bfloat16 / float16); None = the run's `base_dtype`.
        max_shard_size: safetensors shard limit, e.g. "5GB".
        wer: the `wer.json` of `borealis validate` on this checkpoint; its table goes into the card
            (`README.md`, see `model_card.py`).
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {list(FORMATS)}")
    if keep_adapter and format != "hf":
        raise ValueError("--keep-adapter is for --format hf; Voxtral has no LoRA adapter, so LoRA is merged")
    report = None if wer is None else read_wer(wer)  # before any weights load
    checkpoint = load_checkpoint(ckpt)
    if report is not None and report.get("checkpoint") != Path(ckpt).name:
        log.warning("%s scored checkpoint %r, not %s; the card names the one it scored", wer,
                    report.get("checkpoint"), Path(ckpt).name)
    settings = model_settings(checkpoint, config)
    dtype = dtype or settings.get("base_dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {list(DTYPES)}")
    model = build_model(settings, checkpoint)
    if format == "voxtral":
        _refuse_voxtral(model)  # before anything is written
    counts = parameter_counts(model)  # before LoRA is merged
    ref, out = out, _prepare_out(out)
    with torch.no_grad():
        if format == "hf":
            export_hf(model, out, keep_adapter=keep_adapter, dtype=DTYPES[dtype], max_shard_size=max_shard_size,
                      system_prompt=settings.get("system_prompt"))
        else:
            export_voxtral(model, out, dtype=DTYPES[dtype], max_shard_size=max_shard_size)
    write_card(out, model_card(model, settings, out=ref, format=format, keep_adapter=keep_adapter, dtype=dtype,
                               source=Path(ckpt).name, wer=report, counts=counts))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info("exported %s as %s (%s%s) to %s: %.1f MB", Path(ckpt).name, format, dtype,
             ", LoRA kept as an adapter" if keep_adapter else "", out, size / 1e6)
    return out


__all__ = ["export", "export_hf", "export_voxtral", "voxtral_problems", "build_model", "model_settings",
           "load_checkpoint"]
