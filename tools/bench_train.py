"""Training-step throughput: Borealis-5B on one GPU, and the reference pipeline vs ours on the CPU.

Three shapes (`--shape`):
    flagship  Borealis-5B, synthetic batches, on a GPU (the default where CUDA is available);
    tiny      tiny widths on the same 30 s geometry, synthetic: a CPU smoke run of the variants;
    demo      the model of the `--config` files trained on real demo samples, on the CPU (the
              default there): the reference pipeline against Borealis's, measured in the same
              run, below.

--shape demo. The configs are merged as `borealis fit --config a --config b` merges them (later
files win, nested mappings key by key: `settings.merged_section`); the default is the demo as
`make demo` trains it, configs/it_fresh.yaml then the configs/demo.yaml overlay: the demo's
encoder and LLM, the flagship's frozen encoder, adapter and LoRA (target modules, dropout) at the
demo's rank, and the demo's packed batching. Every pipeline builds the same model (same seed)
and trains one pass over the same `--samples` real samples (the pools of `data.train_pools`,
mixed by weight), after `--warmup` untimed steps; data loading is not timed (samples are decoded
and tokenised first). Budgets follow the config's `data.batching`: a packed one (the demo's
rows and per-batch token budget) is the packed pipeline's, its token budget also cuts the
bucketed pipelines' batches under --budget tokens, and the reference pipeline's fixed batch
holds the samples it packs on average (the budget / ~80 tokens per demo sample); see `batch_budgets`.
Each row adds one change to the row above; speed-up = samples/s over the first row's:
    reference       the reference research code's per-sample approach: every clip padded to the encoder window (the
                    demo's 3 s, the flagship's 30 s), the window's audio slots in every prompt
                    (38 for the demo, 375 for the flagship), fixed batches of --batch-size in
                    stream order, and a per-sample splice loop (`naive_embed`).
    batched_splice  the splice as one masked_scatter over the batch (`modeling.embed`).
    trim            trim_audio_tokens: each clip gets ceil(frames / 2k) slots, its real length.
    bucket          length bucketing: buckets of --bucket-size samples sorted by size and cut
                    by a padded budget (`data.Batching`): --budget seconds (the default,
                    the config's max_seconds_per_batch, else batch size x data.max_seconds, the
                    reference batch's audio) or tokens (the config's max_tokens_per_batch, else
                    batch size x the longest untrimmed row).
    encoder_window  encoder_window: batch: the log-mel padded to the batch's longest clip, not
                    to the window, so the encoder skips the padding too.
    borealis        the LM head on the labelled positions only (`modeling.loss`, what the
                    training step runs), not on every position.
    packed          several samples per row (`data.Batching.pack`): rows of --max-tokens-per-row
                    tokens cut by the token budget --max-tokens-per-batch (whatever --budget
                    says for the rows above; by default the config's packed batching), each
                    sample with its own positions and attention.
Columns: LLM pad % (pad tokens / padded tokens), + silent slots % (also counting audio slots
past the end of their clip: real tokens to the LLM, but silence), enc pad % (encoder frames
past the end of each clip), GFLOP (`flops.step_flops`, useful work only), samples/s, audio-s/s,
tok/s (non-pad LLM tokens), speed-up. Then LLM tokens per sample with and without trimming,
for the demo samples (real prompts) and for a LibriSpeech-like duration distribution through
the flagship geometry (see LIBRISPEECH_MEAN). Cost: ~1 minute on 2 quiet cores (480 samples).

--shape flagship / tiny: builds Borealis at the flagship shapes of `configs/it_fresh.yaml` (Whisper-large-v3
encoder, frozen -> 4x stacking -> 19.7M adapter -> Qwen3-4B with LoRA r=256, alpha=512 on all
7 projections) with random weights (nothing is downloaded), and times training steps on
synthetic batches. Several variants run in one process; the table gives each one's speed-up
against the first (baseline) row measured in the same run.

Variants, in order (`--variants` picks a subset; the first one run is the baseline):
    baseline    --seconds (30 s) clips, trim_audio_tokens=False: the reference recipe and
                it_fresh.yaml. Every clip fills the whole window: 375 audio slots.
    trim        the same clips with trim_audio_tokens=True. Identical work for 30 s clips
                (375 slots either way): a control that should read ~1.00x.
    short       --short-seconds (10 s) clips, untrimmed: still 375 slots each.
    short_trim  the same short clips, trimmed: 125 slots. Trimming only shortens the LLM
                sequence; Whisper always encodes the full 30 s window, and the adapter runs
                on all 375 stacked frames before the splice drops the unused ones.
    grad_ckpt   baseline + activation checkpointing of the LLM's decoder layers: its forward
                runs twice, for activation memory of roughly one layer instead of all 36.
                Skipped if the LLM does not support it.
    fsdp        baseline under FSDP as `configs/distributed/fsdp.yaml` trains it (its layer
                lists are read from there), in one process (world size 1): a unit per
                Whisper/Qwen3 layer, activation checkpointing on the decoder layers, fp32
                weights (FSDP's one dtype per unit) computed and reduced in bf16. The issue's
                "it_fresh shapes with FSDP on 1 GPU" row: `--variants fsdp`.

One step, as Lightning runs it with `precision: bf16-mixed` and `gradient_clip_val: 1.0`:
`model.loss` (the LM head on the labelled positions) under `torch.autocast(bfloat16)`,
backward, clip the grad norm to 1, AdamW step over the trainable parameters, zero_grad. Frozen weights are bf16 and trainable ones (LoRA +
adapter) float32, as `BorealisLightningModule.configure_model` leaves them with
`base_dtype: bfloat16`. Every row is one fixed batch of equal-length rows (no padding), built
on the device; data loading is not measured. With it_fresh's `accumulate_grad_batches: 16` the
optimizer step runs once per 16 micro-batches, so these steps slightly overstate its cost.

FLOPs and MFU: `step_flops` counts the matmul work a step must do (formulas in its
docstring); MFU = those FLOPs / median step time / `--peak-tflops`. The default, 989 TFLOP/s,
is the H100 SXM's dense bf16 peak (the H200 has the same); use 756 for an H100 PCIe. Like
PaLM's MFU it counts model FLOPs only: checkpointing's recompute is not counted, so
grad_ckpt shows a lower MFU for the same work. On the CPU the MFU column is only arithmetic.

Cost: every variant builds a fresh model on the device (float32, then frozen weights cast to
bf16: ~21 GB transient at flagship shapes) and frees it before the next. Resident: 9.3 GB
bf16 base + 2.2 GB fp32 trainable + 2.2 GB grads + 4.4 GB AdamW state = 18 GB, plus the
activations autograd saves: 165 MB per decoder layer per 505-token row (counted with saved-
tensor hooks on the CPU at full width), ~6 GB per 30 s clip. So batch 4 should peak near
45 GiB and batch 8 near 70 GiB on a 78 GiB H100; grad_ckpt keeps only each layer's input.
A variant that runs out of memory, or fails, is reported as such and the run goes on (a
failure makes the exit status 1). At batch 4 a step is 49 TFLOP (`--device meta` prints it),
~0.12 s at 40% MFU; the whole run should take a minute or two after start-up (not yet timed
on a GPU: these sessions had none).

    python tools/bench_train.py --shape demo --json demo.json       # CPU: reference vs Borealis pipeline
    python tools/bench_train.py --batch-size 4 --json bench.json   # one GPU, flagship shapes
    python tools/bench_train.py --device meta                      # shapes, params, FLOPs; no timing
    python tools/bench_train.py --tiny --device cpu --steps 2      # CPU smoke run (seconds)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import transformers


from borealis.features import HOP_LENGTH, SAMPLE_RATE
from borealis.flops import matmul_params, step_flops
from borealis.modeling import BorealisConfig, BorealisForConditionalGeneration, LoraSettings
from borealis.shapes import (N_AUDIO_TOKENS_ADDED, QWEN3_TOKENIZER_VOCAB, qwen3_4b_config,
                            whisper_large_v3_config)
from borealis.prompts import IGNORE_INDEX, num_audio_tokens

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout, for its configs/

log = logging.getLogger("bench_train")

GRAD_CLIP = 1.0  # it_fresh.yaml gradient_clip_val
LEARNING_RATE = 1e-5  # it_fresh.yaml; the value does not change the cost
# One ASR chat as `prompts.PromptBuilder` lays it out, counted by hand with Qwen3's BPE:
# "<|im_start|>system\nYou are a helpful voice assistant.<|im_end|>\n<|im_start|>user\n
# Transcribe the audio. " = 21 tokens, then <|start_of_audio|> N x <|AUDIO|> <|end_of_audio|>,
# then "<|im_end|>\n<|im_start|>assistant\n" = 5, the transcript + <|im_end|> (the labels), "\n".
PREFIX_TOKENS, SUFFIX_TOKENS = 21, 5


@dataclass(frozen=True)
class Variant:
    name: str
    seconds: float
    trim_audio_tokens: bool
    gradient_checkpointing: bool = False
    fsdp: bool = False


def make_variants(seconds: float, short_seconds: float) -> list[Variant]:
    """The variant list of the module docstring, baseline first."""
    return [
        Variant("baseline", seconds, trim_audio_tokens=False),
        Variant("trim", seconds, trim_audio_tokens=True),
        Variant("short", short_seconds, trim_audio_tokens=False),
        Variant("short_trim", short_seconds, trim_audio_tokens=True),
        Variant("grad_ckpt", seconds, trim_audio_tokens=False, gradient_checkpointing=True),
        Variant("fsdp", seconds, trim_audio_tokens=False, fsdp=True),
    ]


VARIANT_NAMES = [v.name for v in make_variants(30, 10)]


# ---------------------------------------------------------------------- configs
def flagship_config(trim_audio_tokens: bool) -> BorealisConfig:
    """Borealis-5B as configs/it_fresh.yaml trains it (shapes.build_meta_model's config)."""
    return BorealisConfig(
        encoder_config=whisper_large_v3_config(),
        llm_config=qwen3_4b_config(QWEN3_TOKENIZER_VOCAB + N_AUDIO_TOKENS_ADDED), adapter="simple",
        trim_audio_tokens=trim_audio_tokens, lora=asdict(LoraSettings()), audio_token_id=QWEN3_TOKENIZER_VOCAB,
        audio_start_id=QWEN3_TOKENIZER_VOCAB + 1, audio_end_id=QWEN3_TOKENIZER_VOCAB + 2)


def tiny_config(trim_audio_tokens: bool) -> BorealisConfig:
    """Tiny widths on the real 30 s geometry, so --seconds and trimming mean the same as at full size."""
    from transformers import Qwen3Config, WhisperConfig

    encoder = WhisperConfig(
        num_mel_bins=128,                # large-v3's mel bins: the same feature path
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,  # unused by Borealis
        max_source_positions=1500,       # the real 30 s window: 1500 frames -> 375 slots
        max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)        # special ids inside that vocab (the decoder is never built)
    vocab = 256                          # filler ids; the 3 audio tokens follow
    llm = Qwen3Config(
        vocab_size=vocab + 3, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,  # GQA like Qwen3-4B (32q/8kv)
        max_position_embeddings=1024, tie_word_embeddings=True)
    lora = LoraSettings(r=8, alpha=16)   # all 7 projections, dropout 0.05, as the flagship
    return BorealisConfig(
        encoder_config=encoder, llm_config=llm, adapter="simple", trim_audio_tokens=trim_audio_tokens,
        lora=asdict(lora), audio_token_id=vocab, audio_start_id=vocab + 1, audio_end_id=vocab + 2)


# ---------------------------------------------------------------------- model and batch
def build_model(config: BorealisConfig, device: torch.device,
                base_dtype: torch.dtype = torch.bfloat16) -> BorealisForConditionalGeneration:
    """Random-weight Borealis on `device`: frozen weights in `base_dtype`, trainable ones float32."""
    torch.manual_seed(0)
    with device:
        model = BorealisForConditionalGeneration(config)
    model.to(device)  # the log-mel filter bank comes from numpy, on the CPU, whatever the device context
    for param in model.parameters():
        if not param.requires_grad:  # buffers (mel filters, rotary) stay float32, as from_pretrained leaves them
            param.data = param.data.to(base_dtype)
    model.train()
    counts = matmul_params(config)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    adapter = sum(m.weight.numel() for m in model.adapter.modules() if isinstance(m, torch.nn.Linear))
    assert lora == counts["lora"] and adapter == counts["adapter_in"] + counts["adapter_out"], \
        "step_flops' parameter counts no longer match the model"
    return model


def batch_geometry(config: BorealisConfig, seconds: float, text_tokens: int) -> tuple[int, int]:
    """(audio slots, LLM tokens) of one row: see PREFIX_TOKENS for the layout."""
    n = num_audio_tokens(int(seconds * SAMPLE_RATE), downsample_factor=config.downsample_factor,
                         max_source_positions=config.encoder_config.max_source_positions,
                         trim=config.trim_audio_tokens)
    return n, PREFIX_TOKENS + 1 + n + 1 + SUFFIX_TOKENS + text_tokens + 2


def synthetic_batch(config: BorealisConfig, batch_size: int, seconds: float, text_tokens: int,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """A training batch of equal rows: random ids around the audio slots, random audio.

    Returns input_ids / attention_mask / labels (B, L), waveforms (B, S) and audio_lengths (B,);
    labels cover the transcript and its closing <|im_end|>.
    """
    g = torch.Generator().manual_seed(0)
    n, length = batch_geometry(config, seconds, text_tokens)
    ids = torch.randint(0, config.audio_token_id, (batch_size, length), generator=g)  # filler ids
    audio_at = PREFIX_TOKENS
    ids[:, audio_at] = config.audio_start_id
    ids[:, audio_at + 1: audio_at + 1 + n] = config.audio_token_id
    ids[:, audio_at + 1 + n] = config.audio_end_id
    labels = torch.full_like(ids, IGNORE_INDEX)
    answer = slice(length - text_tokens - 2, length - 1)  # transcript + <|im_end|>; the final "\n" is not trained
    labels[:, answer] = ids[:, answer]
    samples = int(seconds * SAMPLE_RATE)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "waveforms": 0.1 * torch.randn(batch_size, samples, generator=g),
             "audio_lengths": torch.full((batch_size,), samples)}
    return {k: v.to(device) for k, v in batch.items()}


def enable_checkpointing(llm) -> bool:
    """Activation checkpointing on the LLM's decoder layers; False if it has none."""
    if not getattr(llm, "supports_gradient_checkpointing", False):
        return False
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # newer transformers; the old name is deprecated there
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return True


# ---------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainingLoss(torch.nn.Module):
    """The FSDP root: its forward is the training step's `model.loss`, as Lightning's FSDP root
    (the LightningModule) runs `training_step`; so the root unit's weights (adapter,
    embeddings, LM head) are gathered and cast for it."""

    def __init__(self, model: BorealisForConditionalGeneration) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.loss(**batch)


def fsdp_layers(path: Path = REPO_ROOT / "configs" / "distributed" / "fsdp.yaml") -> tuple[set, set]:
    """(wrapped, checkpointed) layer classes, read from the FSDP overlay so the two stay the same."""
    import importlib

    import yaml

    init = yaml.safe_load(path.read_text())["trainer"]["strategy"]["init_args"]

    def load(name: str):
        module, _, cls = name.rpartition(".")
        return getattr(importlib.import_module(module), cls)

    return {load(n) for n in init["wrap_layers"]}, {load(n) for n in init["checkpoint_layers"]}


def wrap_fsdp(model: BorealisForConditionalGeneration, device: torch.device) -> torch.nn.Module:
    """`model` under FSDP as configs/distributed/fsdp.yaml trains it, in this one process: a unit
    per encoder/decoder layer, activation checkpointing on the decoder layers, bf16 compute
    and reduction with float32 buffers, `use_orig_params`. One rank: nothing is sharded, but
    every unit is gathered, cast and freed as on 8."""
    import torch.distributed as dist
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (apply_activation_checkpointing,
                                                                             checkpoint_wrapper)
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    if not dist.is_initialized():
        import socket

        with socket.socket() as sock:  # a free port for the one-rank group
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=0, world_size=1)
    wrapped, checkpointed = fsdp_layers()
    root = FullyShardedDataParallel(
        TrainingLoss(model), auto_wrap_policy=ModuleWrapPolicy(wrapped), use_orig_params=True, device_id=device,
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16,
                                       buffer_dtype=torch.float32))
    apply_activation_checkpointing(root, checkpoint_wrapper_fn=checkpoint_wrapper,
                                   check_fn=lambda m: isinstance(m, tuple(checkpointed)))
    return root


def run_variant(variant: Variant, args: argparse.Namespace, device: torch.device) -> dict:
    """Build, warm up and time one variant; returns its row (timings None on meta)."""
    config = (tiny_config if args.tiny else flagship_config)(variant.trim_audio_tokens)
    audio_tokens, length = batch_geometry(config, variant.seconds, args.text_tokens)
    # the LM head runs on the labelled positions (transcript + <|im_end|>; `model.loss`, the training step)
    flops = step_flops(config, [length] * args.batch_size, args.batch_size,
                       label_tokens=args.batch_size * (args.text_tokens + 1))
    row = {"variant": variant.name, **asdict(variant), "batch_size": args.batch_size,
           "audio_tokens_per_row": audio_tokens, "llm_tokens_per_row": length,
           "flops_per_step": flops.total, "flops_by_part": asdict(flops), "status": "ok"}
    # FSDP flattens each unit into one dtype: the frozen base joins the fp32 LoRA (the overlay's base_dtype)
    model = build_model(config, device, torch.float32 if variant.fsdp else torch.bfloat16)
    row["total_params"] = sum(p.numel() for p in model.parameters())
    row["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row["attn_implementation"] = getattr(model.llm.config, "_attn_implementation", None)
    if variant.gradient_checkpointing and not enable_checkpointing(model.llm):
        return {**row, "status": "skipped: the LLM does not support gradient checkpointing"}
    if device.type == "meta":
        return {**row, "status": "planned (meta: no timing)"}
    root = wrap_fsdp(model, device) if variant.fsdp else None
    params = [p for p in (root or model).parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE)
    batch = synthetic_batch(config, args.batch_size, variant.seconds, args.text_tokens, device)
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == args.batch_size * (args.text_tokens + 1)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        if root is not None:  # MixedPrecision casts the gathered weights to bf16
            loss = root(batch)
            loss.backward()
            root.clip_grad_norm_(GRAD_CLIP)
        else:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model.loss(**batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        elapsed = time.perf_counter() - start
        losses.append(loss.item())
        if step >= args.warmup:
            times.append(elapsed)
        log.info("  %s step %d/%d%s: %.1f ms, loss %.3f", variant.name, step + 1, args.warmup + args.steps,
                 " (warmup)" if step < args.warmup else "", 1e3 * elapsed, losses[-1])
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"{variant.name}: non-finite loss {losses}")
    step_s = statistics.median(times)
    row.update(step_ms=1e3 * step_s, step_ms_all=[1e3 * t for t in times], loss=losses[-1],
               audio_sec_per_sec=args.batch_size * variant.seconds / step_s,
               tokens_per_sec=args.batch_size * length / step_s, tflops=flops.total / step_s / 1e12,
               mfu=flops.total / step_s / (args.peak_tflops * 1e12),
               peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)
    return row


def measure(variant: Variant, args: argparse.Namespace, device: torch.device) -> dict:
    """run_variant, with an out-of-memory or a failure reported as a row; frees the device afterwards."""
    try:
        return run_variant(variant, args, device)
    except torch.OutOfMemoryError as err:
        log.warning("%s: out of memory: %s", variant.name, str(err).splitlines()[0])
        return {"variant": variant.name, **asdict(variant), "batch_size": args.batch_size, "status": "oom"}
    except Exception as err:  # one broken variant must not cost the others' GPU time; main exits 1
        log.exception("%s failed", variant.name)
        return {"variant": variant.name, **asdict(variant), "batch_size": args.batch_size,
                "status": f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    finally:  # the model and optimizer were locals of run_variant: collect them before the next build
        if variant.fsdp and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------- demo: the reference pipeline vs ours
@dataclass(frozen=True)
class Pipeline:
    """How one pass over the same real samples is batched and run (see the module docstring)."""

    name: str
    trim_audio_tokens: bool
    bucketing: bool
    batched_splice: bool
    encoder_window: str = "full"
    label_logits: bool = False
    packing: bool = False


PIPELINES = [
    Pipeline("reference", trim_audio_tokens=False, bucketing=False, batched_splice=False),
    Pipeline("batched_splice", trim_audio_tokens=False, bucketing=False, batched_splice=True),
    Pipeline("trim", trim_audio_tokens=True, bucketing=False, batched_splice=True),
    Pipeline("bucket", trim_audio_tokens=True, bucketing=True, batched_splice=True),
    Pipeline("encoder_window", trim_audio_tokens=True, bucketing=True, batched_splice=True, encoder_window="batch"),
    Pipeline("borealis", trim_audio_tokens=True, bucketing=True, batched_splice=True, encoder_window="batch",
             label_logits=True),
    Pipeline("packed", trim_audio_tokens=True, bucketing=True, batched_splice=True, encoder_window="batch",
             label_logits=True, packing=True),
]
PIPELINE_NAMES = [p.name for p in PIPELINES]


def naive_embed(model: BorealisForConditionalGeneration, input_ids: torch.Tensor, waveforms: torch.Tensor,
                audio_lengths: torch.Tensor) -> torch.Tensor:
    """The reference pipeline's splice: the batch is encoded at once, then each row's embeddings are rebuilt
    in a Python loop around its `<|AUDIO|>` run (cat of text before, audio, text after)."""
    embeds = model.llm.get_input_embeddings()(input_ids)
    audio = model.encode_audio(model.features(waveforms, audio_lengths))  # (B, N, H): the full window
    rows = []
    for i in range(input_ids.shape[0]):
        slots = (input_ids[i] == model.config.audio_token_id).nonzero().flatten()
        start, n = int(slots[0]), len(slots)
        rows.append(torch.cat([embeds[i, :start], audio[i, :n].to(embeds.dtype), embeds[i, start + n:]]))
    return torch.stack(rows)


def read_demo_samples(pools: list[dict], count: int, min_seconds: float, max_seconds: float) -> list[dict]:
    """`count` decoded audio samples of the training pools, mixed by their weights (a seeded draw
    of the pool, then its next sample in file order), within the duration limits."""
    from borealis.shards import iter_shard, list_shards

    streams = [(s for shard in list_shards(p["shards"]) for s in iter_shard(shard)) for p in pools]
    weights = np.array([p.get("weight", 1.0) for p in pools], dtype=float)
    rng = np.random.default_rng(0)
    samples = []
    while len(samples) < count and weights.sum() > 0:
        i = int(rng.choice(len(pools), p=weights / weights.sum()))
        sample = next(streams[i], None)
        if sample is None:
            weights[i] = 0  # this pool ran dry
        elif sample["audio"] is not None and min_seconds <= len(sample["audio"]) / SAMPLE_RATE <= max_seconds:
            samples.append(sample)
    if len(samples) < count:
        raise ValueError(f"the pools {[p['shards'] for p in pools]} hold only {len(samples)} usable samples, "
                         f"--samples asks for {count}")
    return samples


def plan_batches(pipeline: Pipeline, items: list[dict], batch_size: int, budget: dict,
                 bucket_size: int) -> list[list[dict]]:
    """The reference pipeline's fixed-size batches in stream order, or Borealis's: buckets of `bucket_size`
    samples sorted by size and cut by a padded budget (`data.Batching`; `budget` holds its
    max_tokens_per_batch or max_seconds_per_batch)."""
    from borealis.data import Batching

    if not pipeline.bucketing:
        return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    if pipeline.packing:
        batching = Batching(max_tokens_per_batch=budget["max_tokens_per_batch"], pack=True,
                            max_tokens_per_row=budget["max_tokens_per_row"], bucket_size=bucket_size)
    else:
        batching = Batching(**{k: v for k, v in budget.items() if k != "max_tokens_per_row"}, bucket_size=bucket_size)
    batches = []
    for start in range(0, len(items), bucket_size):
        batches += batching.cut(sorted(items[start:start + bucket_size], key=batching.size))
    return batches


def batch_stats(batches: list[dict], model: BorealisForConditionalGeneration, label_logits: bool) -> dict:
    """Padding shares and FLOPs of collated batches: pad LLM tokens; audio slots past the end of
    their clip (the reference pipeline's untrimmed rows: real tokens to the LLM, but silence); encoder frames
    past the end of each clip."""
    from borealis.flops import step_flops

    tokens = sum(sum(b["row_tokens"]) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    slots = sum(int((b["input_ids"] == model.config.audio_token_id).sum()) for b in batches)
    heard = sum(int(num_audio_tokens(torch.tensor(b["audio_samples"]), downsample_factor=model.config.downsample_factor,
                                     max_source_positions=model.config.encoder_config.max_source_positions,
                                     trim=True).sum()) for b in batches)
    frames_used = frames_run = 0
    flops = 0
    for b in batches:
        t = model.encoder_frames(b["waveforms"].shape[-1])
        frames_run += t * len(b["audio_samples"])
        frames_used += sum(min(-(-n // HOP_LENGTH) / 2, t) for n in b["audio_samples"])
        flops += step_flops(model.config, b["seq_tokens"], len(b["audio_samples"]), t,
                            label_tokens=sum(b["label_tokens"]) if label_logits else None).total
    return {"batches": len(batches), "llm_tokens": tokens, "llm_padding_share": (padded - tokens) / padded,
            "llm_waste_share": (padded - tokens + slots - heard) / padded,
            "encoder_padding_share": 1 - frames_used / frames_run, "flops": flops}


def run_pipeline(pipeline: Pipeline, samples: list[dict], settings: dict, args: argparse.Namespace) -> dict:
    """Build the config's model for `pipeline`, then time one pass over `samples`: every step is
    forward + backward + clip + AdamW, as the demo trains, in float32. What trains follows
    `settings` (the merged `model:` section): with the default configs the adapter and the LLM's
    LoRA factors train, and the encoder and the LLM's base weights are frozen."""
    from borealis.data import collate, encode_sample

    torch.manual_seed(0)
    model = BorealisForConditionalGeneration.from_parts(
        settings["encoder"], settings["llm"], downsample_factor=settings.get("downsample_factor", 4),
        adapter=settings.get("adapter", "simple"), trim_audio_tokens=pipeline.trim_audio_tokens,
        encoder_window=pipeline.encoder_window, lora=settings.get("lora"),
        freeze_encoder=settings.get("freeze_encoder", True))
    model.train()
    prompts = model.prompts
    items = [encode_sample(s, prompts) for s in samples]
    budget = ({"max_seconds_per_batch": args.max_seconds_per_batch} if args.budget == "seconds"
              else {"max_tokens_per_batch": args.max_tokens_per_batch})
    if pipeline.packing:  # packing cuts by tokens: the same token budget, in rows of --max-tokens-per-row
        budget = {"max_tokens_per_batch": args.max_tokens_per_batch, "max_tokens_per_row": args.max_tokens_per_row}
    batches = [collate(b, prompts.pad_token_id)
               for b in plan_batches(pipeline, items, args.batch_size, budget, args.bucket_size)]
    stats = batch_stats(batches, model, pipeline.label_logits)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step(batch: dict) -> float:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "waveforms", "audio_lengths")}
        if batch.get("position_ids") is not None:  # packed rows
            inputs["position_ids"] = batch["position_ids"]
        if pipeline.label_logits:
            loss = model.loss(**inputs)  # what BorealisLightningModule.training_step runs
        elif pipeline.batched_splice:
            loss = model(**inputs).loss
        else:
            embeds = naive_embed(model, inputs["input_ids"], inputs["waveforms"], inputs["audio_lengths"])
            loss = model.llm(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                             labels=inputs["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for batch in batches[:args.warmup]:
        step(batch)
    start = time.perf_counter()
    losses = [step(batch) for batch in batches]
    seconds = time.perf_counter() - start
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"{pipeline.name}: non-finite loss")
    audio_s = sum(len(s["audio"]) for s in samples) / SAMPLE_RATE
    return {"pipeline": pipeline.name, **asdict(pipeline), **stats, "samples": len(samples),
            "budget": budget if pipeline.bucketing else None, "seconds": seconds,
            "samples_per_sec": len(samples) / seconds, "audio_sec_per_sec": audio_s / seconds,
            "tokens_per_sec": stats["llm_tokens"] / seconds, "gflops_per_sec": stats["flops"] / seconds / 1e9,
            "mean_batch": len(samples) / len(batches)}


def tokens_per_sample(samples: list[dict], settings: dict, seed: int = 0, count: int = 10_000) -> dict:
    """LLM tokens per sample with and without trimming: the demo samples through the demo's real
    prompts, and a LibriSpeech-like set through the flagship geometry (30 s window, k = 4)."""
    from transformers import AutoTokenizer, WhisperConfig

    from borealis.data import encode_sample
    from borealis.prompts import PromptBuilder, add_audio_tokens, num_audio_tokens

    tokenizer = AutoTokenizer.from_pretrained(settings["llm"])
    add_audio_tokens(tokenizer)
    window = WhisperConfig.from_pretrained(settings["encoder"]).max_source_positions
    k = settings.get("downsample_factor", 4)
    demo = {"max_untrimmed_tokens": 0}
    for trim in (False, True):
        builder = PromptBuilder(tokenizer, downsample_factor=k, max_source_positions=window, trim_audio_tokens=trim)
        lengths = [len(encode_sample(s, builder)["input_ids"]) for s in samples]
        slots = [num_audio_tokens(len(s["audio"]), downsample_factor=k, max_source_positions=window, trim=trim)
                 for s in samples]
        demo["trimmed" if trim else "untrimmed"] = {"llm_tokens": statistics.mean(lengths),
                                                    "audio_tokens": statistics.mean(slots)}
        demo["max_untrimmed_tokens"] = max(demo["max_untrimmed_tokens"], *lengths)
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.gamma(LIBRISPEECH_SHAPE, LIBRISPEECH_MEAN / LIBRISPEECH_SHAPE, count), 1.0, 30.0)
    text = np.round(seconds * LIBRISPEECH_TEXT_TOKENS_PER_SECOND) + 2  # transcript + <|im_end|> "\n"
    fixed = PREFIX_TOKENS + 2 + SUFFIX_TOKENS  # + start/end of audio
    libri = {}
    for trim in (False, True):
        slots = num_audio_tokens(torch.from_numpy((seconds * SAMPLE_RATE).astype(np.int64)), downsample_factor=4,
                                 max_source_positions=1500, trim=trim).numpy()
        libri["trimmed" if trim else "untrimmed"] = {"llm_tokens": float(np.mean(slots + fixed + text)),
                                                     "audio_tokens": float(np.mean(slots))}
    return {"demo": {"samples": len(samples), "mean_seconds": statistics.mean(len(s["audio"]) / SAMPLE_RATE
                                                                             for s in samples), **demo},
            "librispeech_like": {"samples": count, "mean_seconds": float(seconds.mean()), **libri}}


# LibriSpeech-like durations: a gamma with mean 12.3 s (LibriSpeech train-clean's utterance mean is
# ~12.3 s, most between 10 and 17 s) and shape 10 (sd ~3.9 s), clipped to [1, 30] s; transcripts at
# ~2.7 words/s x ~1.3 Qwen3 tokens/word. Text tokens are the same either way; they only set the share.
LIBRISPEECH_MEAN, LIBRISPEECH_SHAPE, LIBRISPEECH_TEXT_TOKENS_PER_SECOND = 12.3, 10.0, 3.5


DEMO_CONFIGS = [REPO_ROOT / "configs" / "it_fresh.yaml", REPO_ROOT / "configs" / "demo.yaml"]  # as `make demo`


def demo_settings(configs: list[Path]) -> tuple[dict, dict]:
    """(model, data) sections of stacked training YAMLs, merged as the CLI merges `--config a
    --config b` (`settings.merged_section`), as plain dicts (`settings.plain`: a `class_path` /
    `init_args` spelling becomes its `init_args`)."""
    from borealis.settings import merged_section, plain

    model, data = plain(merged_section(configs, "model")), plain(merged_section(configs, "data"))
    named = " + ".join(map(str, configs))
    missing = [f"model.{k}" for k in ("encoder", "llm") if not model.get(k)]
    missing += [] if data.get("train_pools") else ["data.train_pools"]
    if missing:
        raise ValueError(f"{named}: model.encoder, model.llm and data.train_pools are needed, missing {missing}")
    for key in ("encoder", "llm"):
        if not Path(model[key]).is_dir():
            raise FileNotFoundError(f"{named}: model.{key} = {model[key]} is not a folder; build the demo "
                                    f"corpus first: borealis demo --out demo")
    return model, data


def batch_budgets(args: argparse.Namespace, batching: dict, max_seconds: float, tokens: dict) -> None:
    """Fill the budgets the command line left unset from the config's `data.batching`, so that
    every pipeline's step holds about as much as the config's:

    * --batch-size (the reference's fixed batch): the config's batch_size; else the samples its
      budget holds on average: max_tokens_per_batch / a trimmed sample's mean LLM tokens (what
      Borealis packs or buckets), or max_seconds_per_batch / the mean clip.
    * --max-tokens-per-batch: the config's; else batch size x the longest untrimmed row (the
      reference batch's padded footprint).
    * --max-seconds-per-batch: the config's; else batch size x data.max_seconds (the reference
      batch's audio: every clip padded to the window).
    * --max-tokens-per-row: the config's packed rows; else a quarter of the token budget, at
      least the longest sample.

    Raises:
        ValueError: no --batch-size and the config's batching sets no budget to derive it from.
    """
    demo = tokens["demo"]
    if args.batch_size is None:
        if batching.get("batch_size"):
            args.batch_size = batching["batch_size"]
        elif batching.get("max_tokens_per_batch"):
            args.batch_size = max(1, round(batching["max_tokens_per_batch"] / demo["trimmed"]["llm_tokens"]))
        elif batching.get("max_seconds_per_batch"):
            args.batch_size = max(1, round(batching["max_seconds_per_batch"] / demo["mean_seconds"]))
        else:
            raise ValueError(f"data.batching = {batching} sets none of batch_size, max_tokens_per_batch, "
                             f"max_seconds_per_batch; pass --batch-size")
    if args.max_tokens_per_batch is None:
        args.max_tokens_per_batch = (batching.get("max_tokens_per_batch")
                                     or args.batch_size * demo["max_untrimmed_tokens"])
    if args.max_seconds_per_batch is None:
        args.max_seconds_per_batch = batching.get("max_seconds_per_batch") or args.batch_size * max_seconds
    if args.max_tokens_per_row is None:
        row = batching.get("max_tokens_per_row") if batching.get("pack") else None
        args.max_tokens_per_row = row or max(args.max_tokens_per_batch // 4, demo["max_untrimmed_tokens"])


def run_demo(args: argparse.Namespace) -> dict:
    """Every pipeline over the same demo samples, with the budgets of the config's batching
    (`batch_budgets`) where the command line sets none."""
    model_settings, data = demo_settings(args.config)
    samples = read_demo_samples(data["train_pools"], args.samples, data.get("min_seconds", 0.0),
                                data.get("max_seconds", 30.0))
    log.info("%d demo samples from %s, %.1f s of audio", len(samples), [p["name"] for p in data["train_pools"]],
             sum(len(s["audio"]) for s in samples) / SAMPLE_RATE)
    tokens = tokens_per_sample(samples, model_settings)
    batch_budgets(args, data.get("batching") or {}, data.get("max_seconds", 30.0), tokens)
    log.info("reference batch %d; budgets: %g s or %d tokens per batch, packed rows of %d tokens", args.batch_size,
             args.max_seconds_per_batch, args.max_tokens_per_batch, args.max_tokens_per_row)
    rows = []
    for i, pipeline in enumerate([p for p in PIPELINES if p.name in args.pipelines], 1):
        log.info("[%d/%d] %s", i, len(args.pipelines), pipeline)
        rows.append(run_pipeline(pipeline, samples, model_settings, args))
        log.info("  %.1f s, %.1f samples/s", rows[-1]["seconds"], rows[-1]["samples_per_sec"])
    return {"rows": rows, "tokens_per_sample": tokens, "model": model_settings,
            "settings": _json_settings(args)}


def _json_settings(args: argparse.Namespace) -> dict:
    """The command line's settings with paths as strings (`--config` is a list of them)."""
    def text(v):
        return [text(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v

    return {k: text(v) for k, v in vars(args).items()}


def format_demo(report: dict) -> str:
    rows = report["rows"]
    base = rows[0]
    header = ["pipeline", "batches", "mean B", "LLM pad %", "+silent slots %", "enc pad %", "GFLOP", "seconds",
              "samples/s", "audio-s/s", "tok/s", "GFLOP/s", "speed-up"]
    lines = [[r["pipeline"], str(r["batches"]), f"{r['mean_batch']:.1f}", f"{100 * r['llm_padding_share']:.1f}",
              f"{100 * r['llm_waste_share']:.1f}", f"{100 * r['encoder_padding_share']:.1f}", f"{r['flops'] / 1e9:,.0f}", f"{r['seconds']:.1f}",
              f"{r['samples_per_sec']:.1f}", f"{r['audio_sec_per_sec']:.1f}", f"{r['tokens_per_sec']:,.0f}",
              f"{r['gflops_per_sec']:.1f}", f"{r['samples_per_sec'] / base['samples_per_sec']:.2f}x"]
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    out.append("LLM tokens per sample (audio slots), untrimmed -> trimmed:")
    for name, t in report["tokens_per_sample"].items():
        u, m = t["untrimmed"], t["trimmed"]
        out.append(f"  {name}: {t['samples']} samples, mean {t['mean_seconds']:.2f} s: {u['llm_tokens']:.1f} "
                   f"({u['audio_tokens']:.1f}) -> {m['llm_tokens']:.1f} ({m['audio_tokens']:.1f}), "
                   f"{u['llm_tokens'] / m['llm_tokens']:.2f}x fewer")
    named = {r["pipeline"]: r for r in rows}
    if "packed" in named and "borealis" in named:
        p, b = named["packed"], named["borealis"]
        out.append(f"packed vs borealis (bucketing): {p['samples_per_sec']:.1f} vs {b['samples_per_sec']:.1f} samples/s, "
                   f"{p['samples_per_sec'] / b['samples_per_sec']:.2f}x; LLM padding {100 * p['llm_padding_share']:.1f}% "
                   f"vs {100 * b['llm_padding_share']:.1f}%; {p['mean_batch']:.1f} vs {b['mean_batch']:.1f} samples per step")
    last = rows[-1]
    out.append(f"bench_train demo on cpu: {last['pipeline']} {last['samples_per_sec']:.1f} samples/s vs "
               f"{base['pipeline']} {base['samples_per_sec']:.1f}: {last['samples_per_sec'] / base['samples_per_sec']:.2f}x; "
               f"LLM padding {100 * last['llm_padding_share']:.1f}% vs {100 * base['llm_padding_share']:.1f}%")
    return "\n".join(out)


# ---------------------------------------------------------------------- suite: seed-style step vs ours, alternating
SUITE_ROWS = ["seed", "today", "packed", "packed_fsdp_ckpt"]


def suite_items(config: BorealisConfig, count: int, seconds: float, text_tokens: int) -> list[dict]:
    """`count` encoded samples at `seconds`, transcripts of text_tokens/2 .. 3*text_tokens/2 tokens (seeded)."""
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(count):
        text = max(1, text_tokens // 2 + int(torch.randint(0, text_tokens + 1, (1,), generator=g)))
        b = synthetic_batch(config, 1, seconds, text, torch.device("cpu"))
        items.append({"key": f"s{i}", "input_ids": b["input_ids"][0].tolist(), "labels": b["labels"][0].tolist(),
                      "num_samples": int(b["audio_lengths"][0]), "audio": b["waveforms"][0].numpy()})
    return items


def run_suite(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """The --suite rows over the same samples per optimizer step, measured in alternating rounds.

    seed     HF/peft defaults: LoRA dropout 0.05, peft's input casts, padded batch 1 accumulated over
             the step's samples, the causal LM's own loss (logits at every position).
    today    label-only loss, padded batches of --batch-size accumulated, peft defaults.
    packed   one packed micro-batch (rows of --row-tokens), LoRA in the autocast dtype, dropout 0,
             chunked label loss normalised by the step's label tokens.
    packed_fsdp_ckpt  packed under FSDP (configs/distributed/fsdp.yaml's units) with activation
             checkpointing of every decoder layer.
    Each round runs one optimizer step of every row (the order rotating per round); the median
    over rounds is reported, so drift on a shared machine cannot favour one row.
    """
    from borealis.data.batching import Batching, collate

    config = (tiny_config if args.tiny else flagship_config)(False)
    items = suite_items(config, args.suite_samples, args.seconds, args.text_tokens)
    pad = 0
    row = args.row_tokens or (512 if args.tiny else 4096)
    packing = Batching(max_tokens_per_batch=row * args.suite_samples, pack=True, max_tokens_per_row=row)
    plans = {"seed": [[it] for it in items],
             "today": [items[i:i + args.batch_size] for i in range(0, len(items), args.batch_size)],
             "packed": packing.cut(sorted(items, key=packing.size))}
    plans["packed_fsdp_ckpt"] = plans["packed"]
    rows = [r for r in SUITE_ROWS if r in args.suite_rows]
    batches = {r: [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in collate(b, pad).items()}
                   for b in plans[r]] for r in rows}
    labels = sum(len(it["labels"]) - it["labels"].count(IGNORE_INDEX) - 1 for it in items)
    model = build_model(config, device)
    models = {r: model for r in rows if r != "packed_fsdp_ckpt"}
    roots = {}
    if "packed_fsdp_ckpt" in rows:
        fsdp_model = build_model(config, device, torch.float32)
        fsdp_model.compute_lora_in_autocast_dtype()
        _set_lora_dropout(fsdp_model, 0.0)
        roots["packed_fsdp_ckpt"] = wrap_fsdp(fsdp_model, device)
        models["packed_fsdp_ckpt"] = fsdp_model
    optimizers = {id(m): torch.optim.AdamW([p for p in (roots.get(r) or m).parameters() if p.requires_grad],
                                           lr=LEARNING_RATE) for r, m in models.items()}
    chunk = 1024

    def step(name: str) -> float:
        m = models[name]
        if name in ("seed", "today"):
            _set_lora_dropout(m, 0.05)
            m.compute_lora_in_autocast_dtype(False)
        elif name == "packed":
            _set_lora_dropout(m, 0.0)
            m.compute_lora_in_autocast_dtype(True)
        params = [p for p in (roots.get(name) or m).parameters() if p.requires_grad]
        total = 0.0
        for b in batches[name]:
            inputs = {k: b[k] for k in ("input_ids", "attention_mask", "labels", "waveforms", "audio_lengths",
                                        "position_ids") if b.get(k) is not None}
            if name in roots:
                loss = roots[name]({**inputs, "reduction": "sum", "chunk_tokens": chunk}) / labels
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    if name == "seed":
                        loss = m(**inputs).loss / len(batches[name])
                    elif name == "today":
                        loss = m.loss(**inputs) / len(batches[name])
                    else:
                        loss = m.loss(**inputs, reduction="sum", chunk_tokens=chunk) / labels
            loss.backward()
            total += float(loss.detach())
        if name in roots:
            roots[name].clip_grad_norm_(GRAD_CLIP)
        else:
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizers[id(m)].step()
        optimizers[id(m)].zero_grad(set_to_none=True)
        return total

    times = {r: [] for r in rows}
    peaks = {r: 0.0 for r in rows}
    losses = {r: [] for r in rows}
    for rnd in range(args.warmup + args.steps):
        order = rows[rnd % len(rows):] + rows[:rnd % len(rows)]
        for name in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            start = time.perf_counter()
            losses[name].append(step(name))
            _sync(device)
            if rnd >= args.warmup:
                times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) / 2**30)
        log.info("round %d/%d: %s", rnd + 1, args.warmup + args.steps,
                 ", ".join(f"{n} {1e3 * times[n][-1]:.0f} ms" for n in rows if times[n]))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    seq = [len(it["input_ids"]) for it in items]
    audio_s = len(items) * args.seconds
    out = []
    for name in rows:
        step_s = statistics.median(times[name])
        flops = step_flops(config, seq, len(items), label_tokens=None if name == "seed" else labels).total
        out.append({"row": name, "micro_batches": len(batches[name]), "samples": len(items), "step_ms": 1e3 * step_s,
                    "step_ms_all": [1e3 * t for t in times[name]], "tokens_per_sec": sum(seq) / step_s,
                    "audio_sec_per_sec": audio_s / step_s, "tflops": flops / step_s / 1e12,
                    "mfu": flops / step_s / (args.peak_tflops * 1e12), "loss": losses[name][-1],
                    "padding_share": 1 - sum(seq) / sum(b["input_ids"].numel() for b in batches[name]),
                    "peak_mem_gib": peaks[name] if device.type == "cuda" else None})
    base = out[0]["step_ms"]
    for r in out:
        r["speedup"] = base / r["step_ms"]
    return out


def _set_lora_dropout(model: BorealisForConditionalGeneration, p: float) -> None:
    """Every LoRA layer's dropout probability (0: `F.dropout` returns its input, no kernel)."""
    from peft.tuners.lora import LoraLayer

    for module in model.llm.modules():
        if isinstance(module, LoraLayer):
            for dropout in module.lora_dropout.values():
                if isinstance(dropout, torch.nn.Dropout):
                    dropout.p = p


def format_suite(rows: list[dict], device_name: str) -> str:
    header = ["row", "micro-batches", "step ms", "tok/s", "audio-s/s", "MFU %", "pad %", "peak GiB", "vs seed"]
    lines = [[r["row"], str(r["micro_batches"]), f"{r['step_ms']:.1f}", f"{r['tokens_per_sec']:,.0f}",
              f"{r['audio_sec_per_sec']:.1f}", f"{100 * r['mfu']:.3g}", f"{100 * r['padding_share']:.1f}",
              _fmt(r["peak_mem_gib"], ".1f"), f"{r['speedup']:.2f}x"] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    out.append(f"bench_train suite on {device_name}: " + ", ".join(
        f"{r['row']} {r['step_ms']:.1f} ms ({r['speedup']:.2f}x)" for r in rows) + " per optimizer step of "
        f"{rows[0]['samples']} samples; ratios against the seed-style row, medians of alternating rounds")
    return "\n".join(out)


# ---------------------------------------------------------------------- report
def _fmt(value, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + unit


def _scaled(value, scale: float):
    return None if value is None else value * scale


def format_table(rows: list[dict]) -> str:
    """One line per variant; speed-up = the first timed row's step time / this row's."""
    base = next((r for r in rows if r.get("step_ms")), None)
    header = ["variant", "clip s", "audio tok", "LLM tok", "TFLOP/step", "step ms", "speed-up", "audio-s/s",
              "tok/s", "TFLOP/s", "MFU %", "peak GiB", "trainable", "status"]
    lines = []
    for r in rows:
        ms = r.get("step_ms")
        lines.append([
            r["variant"], f"{r['seconds']:g}", _fmt(r.get("audio_tokens_per_row"), "d"),
            _fmt(r.get("llm_tokens_per_row"), "d"), _fmt(_scaled(r.get("flops_per_step"), 1e-12), ".3g"),
            _fmt(ms, ".1f"), _fmt(base["step_ms"] / ms if base and ms else None, ".2f", "x"),
            _fmt(r.get("audio_sec_per_sec"), ".1f"), _fmt(r.get("tokens_per_sec"), ",.0f"),
            _fmt(r.get("tflops"), ".3g"), _fmt(_scaled(r.get("mfu"), 100), ".3g"),
            _fmt(r.get("peak_mem_gib"), ".1f"), _fmt(_scaled(r.get("trainable_params"), 1e-6), ",.2f", "M"),
            r["status"]])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def summary_line(rows: list[dict], device_name: str) -> str:
    base = next((r for r in rows if r.get("step_ms")), None)
    if base is None:
        planned = ", ".join(f"{r['variant']} {r['flops_per_step'] / 1e12:.3g}" for r in rows
                            if r.get("flops_per_step"))
        return f"bench_train on {device_name}: no variant was timed; TFLOP per step: {planned or 'n/a'}"
    ratios = ", ".join(f"{r['variant']} {base['step_ms'] / r['step_ms']:.2f}x" for r in rows
                       if r.get("step_ms") and r is not base)
    return (f"bench_train on {device_name}: {base['variant']} {base['step_ms']:.1f} ms/step (B={base['batch_size']}, "
            f"{base['seconds']:g} s), {base['audio_sec_per_sec']:.1f} audio-s/s, MFU {100 * base['mfu']:.1f}%; "
            f"speed-up vs {base['variant']}: {ratios or 'n/a'}")


# ---------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (allocator, kernels)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="clips per step. Synthetic shapes: default 4 (it_fresh.yaml trains 1 per GPU; 4 should "
                             "peak near 45 GiB, 8 near 70). demo: the reference pipeline's fixed batch, default the "
                             "config's data.batching.batch_size, else the samples its budget holds on average "
                             "(for the demo: its packed token budget / ~80 tokens per sample)")
    parser.add_argument("--seconds", type=float, default=30.0, help="clip duration of baseline/trim/grad_ckpt, s")
    parser.add_argument("--short-seconds", type=float, default=10.0, help="clip duration of short/short_trim, s")
    parser.add_argument("--text-tokens", type=int, default=100, help="transcript tokens per row (they carry the loss)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="device peak for MFU, TFLOP/s: 989 = H100 SXM / H200 dense bf16; 756 = H100 PCIe")
    parser.add_argument("--shape", choices=["flagship", "tiny", "demo"], default=None,
                        help="flagship: Borealis-5B, synthetic batches (default with CUDA); tiny: tiny widths on the "
                             "30 s geometry, synthetic; demo: the --config files' model on real demo samples, the "
                             "reference pipeline vs Borealis's (default on the CPU)")
    parser.add_argument("--tiny", action="store_true", help="the same as --shape tiny")
    demo = parser.add_argument_group("--shape demo")
    demo.add_argument("--config", type=Path, action="append", default=None,
                      help="training YAML whose model (encoder, llm, adapter, lora, freeze_encoder) and data "
                           "(train_pools, min/max_seconds, batching) are benchmarked; repeat it to stack overlays, "
                           "merged as `borealis fit` merges them (default: configs/it_fresh.yaml, then "
                           "configs/demo.yaml, as `make demo` loads them)")
    demo.add_argument("--samples", type=int, default=480, help="real samples every pipeline trains on once")
    demo.add_argument("--bucket-size", type=int, default=256, help="samples sorted together before cutting batches")
    demo.add_argument("--budget", choices=["seconds", "tokens"], default="seconds",
                      help="what bucketed batches are sorted and cut by: padded audio seconds (the encoder's cost; "
                           "data.batching.max_seconds_per_batch) or padded LLM tokens (max_tokens_per_batch)")
    demo.add_argument("--max-seconds-per-batch", type=float, default=None,
                      help="--budget seconds: padded audio seconds per batch (default: the config's "
                           "data.batching.max_seconds_per_batch, else batch size x data.max_seconds, the reference "
                           "batch's audio footprint)")
    demo.add_argument("--max-tokens-per-batch", type=int, default=None,
                      help="--budget tokens and the packed pipeline: LLM tokens per batch (default: the config's "
                           "data.batching.max_tokens_per_batch, else batch size x the longest "
                           "untrimmed row, the reference batch's footprint)")
    demo.add_argument("--max-tokens-per-row", type=int, default=None,
                      help="the packed pipeline's row capacity (default: the config's packed "
                           "data.batching.max_tokens_per_row, else a quarter of "
                           "--max-tokens-per-batch, at least the longest sample); it packs to --max-tokens-per-batch")
    demo.add_argument("--pipelines", nargs="+", choices=PIPELINE_NAMES, default=PIPELINE_NAMES,
                      help="pipelines to run, in the documented order; the first one run is the baseline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda[:N], cpu, or meta (build and count only; no timing). Default: cuda if available")
    parser.add_argument("--variants", nargs="+", choices=VARIANT_NAMES, default=VARIANT_NAMES,
                        help="variants to run, in the documented order; the first one run is the baseline")
    suite = parser.add_argument_group("--suite")
    suite.add_argument("--suite", action="store_true",
                       help="the seed-style step, today's, packed and packed under FSDP + checkpointing, in "
                            "alternating rounds over the same samples (see run_suite); with --tiny on the CPU")
    suite.add_argument("--suite-samples", type=int, default=16, help="samples per optimizer step")
    suite.add_argument("--row-tokens", type=int, default=None, help="packed row capacity (default 4096; --tiny 512)")
    suite.add_argument("--suite-rows", nargs="+", choices=SUITE_ROWS, default=SUITE_ROWS,
                       help="rows to run; the first is the baseline of the ratios")
    parser.add_argument("--json", type=Path, help="write the settings and every row to this JSON file")
    args = parser.parse_args(argv)
    window = 30.0  # both configs' encoder window: 2 * 1500 mel frames * 10 ms
    problems = []
    if args.tiny:
        args.shape = args.shape or "tiny"
        if args.shape != "tiny":
            problems.append(f"--tiny contradicts --shape {args.shape}")
    for name, low in (("steps", 1), ("warmup", 0), ("batch_size", 1), ("text_tokens", 1), ("samples", 1),
                      ("bucket_size", 1), ("max_tokens_per_batch", 1), ("max_seconds_per_batch", 0.01)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            problems.append(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= {low}")
    for name in ("seconds", "short_seconds"):
        value = getattr(args, name)
        if not 0 < value <= window or value * SAMPLE_RATE < HOP_LENGTH:
            problems.append(f"--{name.replace('_', '-')}={value} must be in (0.01, {window:g}] (the encoder window)")
    if args.peak_tflops <= 0:
        problems.append(f"--peak-tflops={args.peak_tflops} must be > 0")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        problems.append(f"--device={args.device!r}: {err}")
        device = None
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        problems.append(f"--device={args.device}: CUDA is not available here (torch {torch.__version__}, built for "
                        f"CUDA {torch.version.cuda}); use --device cpu --tiny for a CPU run, or --device meta")
    if device is not None and args.shape is None:
        args.shape = "demo" if device.type == "cpu" else "flagship"
    if args.shape == "demo" and device is not None and device.type != "cpu":
        problems.append(f"--shape demo runs on the CPU (the demo's own device), not --device {args.device}")
    args.config = args.config or list(DEMO_CONFIGS)
    if args.shape == "demo":
        problems += [f"--config {c}: no such file" for c in args.config if not c.is_file()]
    if problems:
        parser.error("; ".join(problems))
    args.tiny = args.shape == "tiny"
    if args.shape != "demo" and args.batch_size is None:
        args.batch_size = 4
    args.variants = [v for v in VARIANT_NAMES if v in args.variants]
    args.pipelines = [p for p in PIPELINE_NAMES if p in args.pipelines]
    return args, device


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args, device = parse_args(argv)
    if args.shape == "demo":
        report = {"device": "cpu", "shapes": f"demo ({' + '.join(map(str, args.config))})",
                  "torch": torch.__version__, "threads": torch.get_num_threads(), **run_demo(args)}
        print(format_demo(report))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))
            log.info("wrote %s", args.json)
        return report
    if args.suite:
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        rows = run_suite(args, device)
        report = {"device": device_name, "torch": torch.__version__, "transformers": transformers.__version__,
                  "shapes": "tiny" if args.tiny else "flagship", "settings": _json_settings(args),
                  "rows": rows}
        print(format_suite(rows, device_name))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))
        return report
    if device.type == "cpu" and not args.tiny:
        log.warning("flagship shapes on the CPU: ~21 GB of RAM and minutes per step; --tiny is the CPU smoke run")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    chosen = [v for v in make_variants(args.seconds, args.short_seconds) if v.name in args.variants]
    rows = []
    for i, variant in enumerate(chosen, 1):
        log.info("[%d/%d] %s: %g s clips, trim_audio_tokens=%s, gradient checkpointing=%s", i, len(chosen),
                 variant.name, variant.seconds, variant.trim_audio_tokens, variant.gradient_checkpointing)
        rows.append(measure(variant, args, device))
    report = {"device": device_name, "shapes": "tiny" if args.tiny else "flagship (configs/it_fresh.yaml)",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "settings": _json_settings(args), "rows": rows}
    print(format_table(rows))
    print(summary_line(rows, device_name))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        log.info("wrote %s", args.json)
    return report


if __name__ == "__main__":
    sys.exit(int(any(r.get("status", "ok").startswith("error") for r in main()["rows"])))
