"""LightningModule: adapter + LoRA training, WER validation, prediction, lean checkpoints.

* The model is built in `configure_model`, so FSDP can wrap it and `validate`/`predict`
  build it only once; the tokenizer is loaded in `__init__` (cheap), so the CLI can link
  the prompt builder to the DataModule before any weight loads.
* AdamW holds trainable parameters only; linear warmup then cosine decay to `min_lr_ratio`.
* Log-mel runs on the device inside the model; the DataLoader ships raw waveforms. While
  the augmentation curriculum's active stage has SpecAugment (`callbacks.AugmentationScheduler`
  sets `spec_augment`), the module computes the log-mel itself and masks it, batched.
* Damaged training data (see `data.MixtureStream`) is logged as totals so far over all ranks:
  `train/skipped_samples`, `train/lost_samples`, `train/unreadable_shards`,
  `train/damaged_shards`. The totals are all-reduced only on the steps the logger writes.
* Validation generates greedily in batches (KV cache, the prompts' shared prefix prefilled once),
  duration-sorted by `data.RankBatches`, and sums word errors, reference words and audio
  seconds per benchmark; pad rows are never counted. It also reports its speed, RTFx = audio
  seconds / wall seconds of generation, per benchmark (the time of its dataloader's steps, data
  waits included) and overall (epoch start to end): `val/rtfx`, `val/rtfx/<name>` and wer.json.
  The sums and each rank's wall times travel in one all-gather per epoch: sums add, so the WER
  is exact across ranks; wall times take the max (the slowest rank). tools/bench_validate.py
  compares it with one-by-one generation (figures in BENCHMARKS.md). Under sharded weights
  (FSDP, ZeRO-3) every forward is a collective, so the ranks generate in step
  (`generate(synced_gpus=True)`), each until all ranks' rows are finished; pad batches
  (`data.RankBatches`) give every rank the same number of validation steps.
* `borealis validate` (and `test`) also scores the encoder-decoder Whisper named by `encoder`,
  the seed's baseline row (`whisper_baseline.WhisperBaseline`): same batches, log-mel and
  normaliser, language tokens from each sample's metadata. It is a row of the table and
  `baselines.whisper` in wer.json; its time is kept out of Borealis' RTFx. fit's periodic
  validation never runs it: the row does not change while Borealis trains.
* The training loss comes from `model.loss` (logits of the labelled positions only) unless
  `label_logits_only: false` (the causal LM's own forward, logits at every position).
* The loss of an optimizer step does not depend on how its samples are split into
  micro-batches, accumulation steps and ranks (`loss_normalization: step`): each micro-batch
  backpropagates its summed token loss, and before the optimizer step (before clipping) the
  gradients are multiplied by accumulate x world / N, N the label tokens of the whole step
  all-reduced over the ranks (Lightning divides by accumulate and DDP/FSDP average over the
  ranks, so the result is the gradient of the step's token mean). On one device with
  accumulate 1 that is the batch's token mean, computed by the same path as `micro_batch`.
  Cost: one all-reduce of one number per optimizer step. tests/test_loss_normalisation.py holds 4 x 1, 1 x accumulate
  4 and 2 gloo ranks x 2 to the same gradient.
* Under mixed precision (`bf16-mixed`, `16-mixed`) LoRA runs in the autocast dtype: peft's
  per-layer input cast to the float32 LoRA weights is off
  (`modeling.BorealisForConditionalGeneration.compute_lora_in_autocast_dtype`). Under
  `bf16-mixed` (not FSDP, whose mixed-precision policy does its own) the LoRA factors and the
  adapter's linears are also stored in bf16, so autocast casts none of them, while AdamW steps
  float32 masters and checkpoints keep them (`mixed_precision.MasterWeights`: the float32-weights
  trajectory bit for bit with one micro-batch per step; with accumulation the micro-batches'
  gradients add in bf16).
* Checkpoints hold the trainable weights (LoRA + adapter, ~0.55B at 5B shapes) plus
  optimizer/scheduler state, never the frozen base; loading checks the key set exactly
  (`modeling.check_trainable_state`). Hyperparameters are plain types, so checkpoints load
  with `torch.load(weights_only=True)`.
* The module installs four callbacks of its own (`configure_callbacks`): skipping optimizer
  steps with a non-finite loss or gradient (`callbacks.NonFiniteSteps`, configured by
  `max_skipped_steps` and `skipped_steps_window`), every rank's RNG states in checkpoints for
  an exact resume (`callbacks.RngState`), the prediction files (`callbacks.PredictionWriter`)
  and the learning curve beside wer.json (`callbacks.LearningCurve`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoTokenizer, WhisperConfig

from borealis.callbacks import LearningCurve, NonFiniteSteps, PredictionWriter, RngState
from borealis.features import num_mel_frames
from borealis.metrics import (
    average_wer,
    report_dir,
    rtfx,
    wer_table,
    word_errors,
    write_report,
)
from borealis.mixed_precision import MasterWeights, linear_only_parameters
from borealis.modeling import (
    DTYPES,
    BorealisForConditionalGeneration,
    LoraSettings,
    check_encoder_window,
    check_trainable_state,
    checkpoint_name,
    load_init_weights,
)
from borealis.prompts import AUDIO_START, DEFAULT_SYSTEM_PROMPT, IGNORE_INDEX, PromptBuilder
from borealis.shards import SAMPLE_RATE, ReadErrors
from borealis.spec_augment import SpecAugment
from borealis.whisper_baseline import PROMPT_TOKENS, WhisperBaseline

log = logging.getLogger(__name__)

# Columns of the per-benchmark validation sums: Borealis' word errors, reference words, samples,
# audio samples and wall seconds, then the Whisper baseline's word errors, reference words,
# samples and generation seconds. Wall and generation seconds take the max over ranks; the rest add.
ERRORS, WORDS, SAMPLES, AUDIO, WALL, W_ERRORS, W_WORDS, W_SAMPLES, W_SECONDS = range(9)


class BorealisLightningModule(L.LightningModule):
    """Trains Borealis: frozen Whisper encoder -> stacking -> adapter -> LLM (+LoRA).

    Args:
        encoder: Whisper checkpoint, hub id or local folder (only the encoder is kept).
        llm: causal LM checkpoint with its tokenizer, hub id or local folder.
        downsample_factor: encoder frames stacked per LLM position (k).
        adapter: `simple` (the seed's 19.7M MLP) or `deep` (~80M residual MLP, ablation).
        trim_audio_tokens: audio slots follow the clip length; off = full 30 s window (375).
        encoder_window: `full` pads every clip to the encoder's window (30 s) as Whisper was
            trained; `batch` pads to the batch's longest clip, so short clips cost the encoder
            less (needs trim_audio_tokens; changes a frozen Whisper's outputs: see
            `modeling.BorealisConfig`).
        lora: LoRA on the LLM; null trains the whole LLM.
        freeze_encoder: keep Whisper frozen; false for the seed's unfreeze ablation.
        base_dtype: dtype of the pretrained weights as loaded; trainable weights stay float32.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warmup, in optimizer steps.
        min_lr_ratio: the cosine ends at learning_rate * min_lr_ratio.
        system_prompt: system turn for chats that have none ("" for none).
        max_new_tokens: generation limit in validation and prediction.
        report_dir: where WER JSON and predictions go (default: the logger's folder).
        max_skipped_steps: optimizer steps with a non-finite loss or gradient are skipped and
            counted (`callbacks.NonFiniteSteps`); more than this many within
            `skipped_steps_window` steps stop the run with an error naming the batches' keys
            (0: the first one stops it).
        skipped_steps_window: the window, in optimizer steps, for `max_skipped_steps`.
        init_from: start from a pretrain after the base parts load (stage 2 of the seed's
            recipe): a stage-1 `.ckpt` of `borealis fit`, an exported or saved Borealis
            directory, a state dict of the reference code (reference names; a full fine-tuned
            LLM replaces the frozen base, LoRA starts fresh on top), or a hub id such as
            `AlexWortega/Borealis5b_90k` (read through the hub cache; see
            `modeling.load_init_weights`). Unexpected keys, missing trainable keys and shape
            mismatches fail, listed. A checkpoint given by `--ckpt_path` loads over it.
        label_logits_only: the training loss projects only the labelled (assistant) positions
            onto the vocabulary (`modeling.BorealisForConditionalGeneration.loss`: the same loss,
            without the logits of every prompt and audio position: 0.6 MB and 0.78 GFLOP per
            position at Qwen3-4B). false: the causal LM's own forward, logits everywhere; the
            two differ in the last bits only (summation order).
        whisper_baseline: `borealis validate` and `test` also transcribe every benchmark with
            the encoder-decoder Whisper `encoder` names (loaded when validation starts, on the
            same device and `base_dtype`; the same batches, log-mel and normaliser; language and
            task tokens from each sample's `language`) and show it as a row of the WER table
            and `baselines.whisper` in wer.json. fit's periodic validation never runs it. A
            checkpoint without decoder weights or tokenizer is skipped with one log line.
        whisper_baseline_max_new_tokens: the baseline's generation limit per clip (null: as
            many as Whisper's decoder allows after its 4 prompt tokens: 444 for large-v3).
        loss_normalization: `step`: every label token of an optimizer step weighs the same,
            however its samples are split into micro-batches, accumulation steps and ranks
            (see above); `micro_batch`: each micro-batch's token mean weighs the same (the
            seed's rule; a short transcript in a small micro-batch counts more). The two are
            identical on one device with accumulate 1.
        loss_chunk_tokens: the label-only loss projects this many labelled positions onto the
            vocabulary at a time, with the gradients computed in the same pass
            (`loss.label_cross_entropy`; Liger's fused kernel on CUDA when `liger-kernel` is
            installed), so labels x vocabulary float32 logits never exist at once. null: all
            at once. Needs `label_logits_only`.
        activation_checkpointing: recompute every k-th decoder layer of the LLM in backward
            instead of keeping its activations (0: off, 1: every layer, k: every k-th;
            `modeling.BorealisForConditionalGeneration.checkpoint_decoder_layers`). Under
            FSDP use the strategy's `checkpoint_layers` instead (both at once is an error).
    """

    def __init__(self, encoder: str, llm: str, downsample_factor: int = 4,
                 adapter: Literal["simple", "deep"] = "simple", trim_audio_tokens: bool = True,
                 encoder_window: Literal["full", "batch"] = "full",
                 lora: LoraSettings | None = LoraSettings(), freeze_encoder: bool = True,
                 base_dtype: Literal["float32", "bfloat16", "float16"] = "float32", learning_rate: float = 1e-5,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), warmup_steps: int = 100,
                 min_lr_ratio: float = 0.1, system_prompt: str = DEFAULT_SYSTEM_PROMPT, max_new_tokens: int = 128,
                 report_dir: str | None = None, max_skipped_steps: int = 10, skipped_steps_window: int = 100,
                 init_from: str | None = None, label_logits_only: bool = True, whisper_baseline: bool = True,
                 whisper_baseline_max_new_tokens: int | None = None,
                 loss_normalization: Literal["step", "micro_batch"] = "step", loss_chunk_tokens: int | None = None,
                 activation_checkpointing: int = 0) -> None:
        super().__init__()
        problems = []
        if loss_chunk_tokens is not None and loss_chunk_tokens < 1:
            problems.append(f"model.loss_chunk_tokens={loss_chunk_tokens}: must be >= 1, or null for one pass")
        if loss_chunk_tokens is not None and not label_logits_only:
            problems.append("model.loss_chunk_tokens needs model.label_logits_only: true (the causal LM's own "
                            "forward computes logits at every position)")
        if activation_checkpointing < 0:
            problems.append(f"model.activation_checkpointing={activation_checkpointing}: must be >= 0 (0: off, k: "
                            f"every k-th decoder layer)")
        if problems:
            raise ValueError("; ".join(problems))
        self.non_finite_steps = NonFiniteSteps(max_skipped_steps, skipped_steps_window)  # validates them
        check_encoder_window(encoder_window, trim_audio_tokens)
        self.save_hyperparameters()
        # Plain types only, so `torch.load(weights_only=True)` (Lightning, LightningCLI) reads the checkpoint.
        self.hparams["lora"] = asdict(lora) if isinstance(lora, LoraSettings) else lora
        self.strict_loading = False  # checkpoints hold trainable weights only; on_load_checkpoint checks them
        self.tokenizer = AutoTokenizer.from_pretrained(llm)
        encoder_config = WhisperConfig.from_pretrained(encoder)
        limit = encoder_config.max_target_positions - PROMPT_TOKENS
        if whisper_baseline_max_new_tokens is not None and not 1 <= whisper_baseline_max_new_tokens <= limit:
            raise ValueError(f"model.whisper_baseline_max_new_tokens={whisper_baseline_max_new_tokens}: must be in "
                             f"1..{limit} for {encoder} (its decoder's {encoder_config.max_target_positions} "
                             f"positions less {PROMPT_TOKENS} prompt tokens), or null for the most it allows")
        self.prompt_builder = PromptBuilder(
            self.tokenizer, downsample_factor=downsample_factor,
            max_source_positions=encoder_config.max_source_positions, trim_audio_tokens=trim_audio_tokens,
            system_prompt=system_prompt)
        self.model: BorealisForConditionalGeneration | None = None
        # (benchmarks, 9): the columns ERRORS ... W_SECONDS above; and the validation clocks
        self._val_sums: torch.Tensor | None = None
        self._val_started = self._val_clock = 0.0
        self._baseline: WhisperBaseline | None = None  # a plain attribute: never in state_dict or the optimizer
        self._baseline_loaded = False  # loading was tried (a skip is logged once)
        self._baseline_seconds = 0.0  # this validation's baseline time, kept out of Borealis' epoch time
        self.spec_augment: SpecAugment | None = None  # set by callbacks.AugmentationScheduler
        self.mask_generator: torch.Generator | None = None  # SpecAugment's draws; saved by callbacks.RngState
        self._data_errors: torch.Tensor | None = None  # this rank's totals of batch["data_errors"]
        self._data_errors_all: torch.Tensor | None = None  # the totals over all ranks, as last reduced
        self._step_label_tokens: torch.Tensor | None = None  # this rank's label tokens in the current optimizer step
        self.master_weights: MasterWeights | None = None  # bf16-mixed: float32 masters of the bf16 linear weights

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = BorealisForConditionalGeneration.from_parts(
            hp.encoder, hp.llm, downsample_factor=hp.downsample_factor, adapter=hp.adapter,
            trim_audio_tokens=hp.trim_audio_tokens, encoder_window=hp.encoder_window, lora=hp.lora,
            freeze_encoder=hp.freeze_encoder, dtype=DTYPES[hp.base_dtype], tokenizer=self.tokenizer)
        if hp.init_from:
            load_init_weights(self.model, hp.init_from)
        for p in self.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        self.model.train()  # from_pretrained leaves parts in eval mode; LoRA dropout must be live
        strategy = self._trainer.strategy if self._trainer is not None else None
        if hp.activation_checkpointing and getattr(strategy, "_activation_checkpointing_kwargs", None):
            raise ValueError("model.activation_checkpointing and the FSDP strategy's checkpoint_layers both "
                             "checkpoint the decoder layers: set model.activation_checkpointing: 0 under FSDP")
        self.model.checkpoint_decoder_layers(hp.activation_checkpointing)
        precision = str(self._trainer.precision) if self._trainer is not None else ""
        if hp.lora and precision.endswith("-mixed"):
            self.model.compute_lora_in_autocast_dtype()
        if hp.lora and precision == "bf16-mixed" and not isinstance(strategy, FSDPStrategy):
            self.master_weights = MasterWeights(
                [(f"model.{checkpoint_name(n)}", p) for n, p in linear_only_parameters(self.model)], torch.bfloat16)
        rank_zero_info(f"Borealis: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters, "
                       f"{sum(p.numel() for p in self.model.parameters() if p.requires_grad) / 1e6:.2f}M trainable")

    def configure_callbacks(self) -> list[L.Callback]:
        """The callbacks every run of this module needs (Lightning adds them to the trainer's)."""
        return [self.non_finite_steps, RngState(), PredictionWriter(self.hparams.report_dir),
                LearningCurve(self.hparams.report_dir)]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {f"model.{n}" for n in self.model.trainable_parameter_names()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if self.master_weights is not None:  # the float32 masters, not their bf16 rounding
            checkpoint["state_dict"].update(self.master_weights.state())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
        check_trainable_state(self.model, state, source="the checkpoint")
        if self.master_weights is not None:
            self.master_weights.load(checkpoint["state_dict"])

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.master_weights is not None:
            params = self.master_weights.optimizer_parameters(params)
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay, betas=hp.betas)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(hp.warmup_steps, total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)

    def _model_inputs(self, batch: dict) -> dict:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "waveforms", "audio_lengths")}
        if batch.get("position_ids") is not None:  # packed rows (`data.collate_packed`)
            inputs["position_ids"] = batch["position_ids"]
        return inputs

    def _masked_features(self, batch: dict) -> dict:
        """Model inputs with SpecAugment applied to the log-mel (training only)."""
        inputs = self._model_inputs(batch)
        if self.spec_augment is None or inputs["waveforms"] is None:
            return inputs
        if self.mask_generator is None:  # per-rank stream, seeded from the run's seed
            self.mask_generator = torch.Generator(device=self.device)
            self.mask_generator.manual_seed(torch.initial_seed() + 1_000_003 * self.global_rank)
        lengths = inputs["audio_lengths"]
        mel = self.model.log_mel(inputs.pop("waveforms"), lengths)
        inputs["input_features"] = self.spec_augment(mel, num_mel_frames(lengths), self.mask_generator)
        return inputs

    def _step_normalised(self) -> bool:
        """Whether the loss is normalised over the optimizer step (more than one micro-batch or rank)."""
        trainer = self.trainer
        return (self.hparams.loss_normalization == "step"
                and trainer.accumulate_grad_batches * trainer.world_size > 1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        inputs = self._masked_features(batch)
        hp = self.hparams
        if not self._step_normalised():  # one micro-batch per step: its token mean is the step's
            loss = (self.model.loss(**inputs, chunk_tokens=hp.loss_chunk_tokens) if hp.label_logits_only
                    else self.model(**inputs).loss)
            self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["keys"]))
            return loss
        tokens = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()  # the tokens the loss sums over, on the device
        if hp.label_logits_only:
            total = self.model.loss(**inputs, reduction="sum", chunk_tokens=hp.loss_chunk_tokens)
        else:  # transformers' loss: summed, then divided by num_items_in_batch
            total = self.model(**inputs, num_items_in_batch=torch.ones((), device=tokens.device)).loss
        self._step_label_tokens = tokens if self._step_label_tokens is None else self._step_label_tokens + tokens
        self.log("train/loss", total.detach() / tokens.clamp(min=1), prog_bar=True, batch_size=len(batch["keys"]))
        return total  # scaled in on_before_optimizer_step

    def on_after_backward(self) -> None:
        if self.master_weights is not None:  # before the callbacks' on_before_optimizer_step and clipping
            self.master_weights.grads_to_masters()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.master_weights is not None:
            self.master_weights.to_params()

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        super().optimizer_zero_grad(epoch, batch_idx, optimizer)
        if self.master_weights is not None:
            self.master_weights.zero_grad()

    def on_before_optimizer_step(self, optimizer) -> None:
        """Scale the step's summed-loss gradients to its token mean over all micro-batches and ranks."""
        if self._step_label_tokens is None:
            return
        trainer = self.trainer
        total = trainer.strategy.reduce(self._step_label_tokens.float(), reduce_op="sum")
        factor = trainer.accumulate_grad_batches * trainer.world_size / total.clamp(min=1)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, factor.to(grads[0].device))
        self._step_label_tokens = None

    def _log_data_errors(self, batch: dict) -> None:
        """Log the training stream's skipped/lost samples and unreadable/damaged shards as
        totals so far, summed over all ranks (`batch["data_errors"]`: counts since the
        worker's previous batch, ordered as `ReadErrors.names`).

        Why: each rank's workers count their own, so a rank alone knows only its share. The
        sum over ranks costs a barrier and an all-reduce, so it runs only on the steps the
        logger writes (global_step % log_every_n_steps == 0, the same step on every rank);
        the steps between log the last sum. The totals count from the start of this process.
        """
        delta = batch.get("data_errors")
        if delta is None:
            return
        if self._data_errors is None:
            self._data_errors = torch.zeros_like(delta)
            self._data_errors_all = torch.zeros(delta.shape, dtype=torch.float32, device=delta.device)
        self._data_errors += delta
        every = self.trainer.log_every_n_steps
        if every and self.global_step % every == 0:
            total = self.trainer.strategy.reduce(self._data_errors.clone(), reduce_op="sum")
            self._data_errors_all = total.float()
        n = len(batch["keys"])
        for name, value in zip(ReadErrors.names, self._data_errors_all):
            self.log(f"train/{name}", value, batch_size=n)

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        self._log_data_errors(batch)  # throughput (tokens/s, data wait, MFU): the `throughput.Throughput` callback

    # ------------------------------------------------------------------ generation
    def _weights_sharded(self) -> bool:
        """Whether the weights are sharded over 2+ ranks (FSDP, FSDP2/tensor parallel, ZeRO-3), so that
        every forward of a sharded layer is a collective all ranks must join."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if strategy is None or strategy.world_size < 2:
            return False
        if isinstance(strategy, DeepSpeedStrategy):
            return strategy.zero_stage_3
        return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))

    def _generate(self, batch: dict) -> list[str]:
        # Sharded weights: every rank runs the same forwards, however soon its own rows finish
        # (`generate(synced_gpus=True)`: one all-reduce per step); DDP and one device run their own.
        ids = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  waveforms=batch["waveforms"], audio_lengths=batch["audio_lengths"],
                                  max_new_tokens=self.hparams.max_new_tokens, synced_gpus=self._weights_sharded())
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def _benchmark_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None)
        return list(getattr(dm, "val_sets", {})) or ["val"]

    def _audio_rows(self, batch: dict) -> torch.Tensor:
        """(B,) which rows carry a clip: those whose prompt holds the clip's start marker.
        `waveforms`/`audio_lengths` (A, ...) hold exactly these rows' clips, in row order."""
        return (batch["input_ids"] == self.prompt_builder.audio_ids[AUDIO_START]).any(1)

    def _audio_samples(self, batch: dict) -> torch.Tensor:
        """Audio samples in the batch's real (non-pad) rows, as a float64 scalar on the device
        (counts, not seconds: their sums are exact, whatever the batching and rank order)."""
        lengths = batch["audio_lengths"]
        if lengths is None:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        real = ~batch["is_pad"][self._audio_rows(batch)]  # (A,)
        return lengths[real].sum().double()

    def _load_baseline(self) -> None:
        """Load the Whisper baseline once, in `borealis validate`/`test` only (see `whisper_baseline`)."""
        if self._baseline_loaded or not self.hparams.whisper_baseline:
            return
        if self.trainer.state.fn not in (TrainerFn.VALIDATING, TrainerFn.TESTING):
            return
        self._baseline_loaded = True
        hp = self.hparams
        self._baseline = WhisperBaseline.load(hp.encoder, device=self.device, dtype=DTYPES[hp.base_dtype],
                                              max_new_tokens=hp.whisper_baseline_max_new_tokens)
        if self._baseline is not None:
            rank_zero_info(f"Whisper baseline: {hp.encoder}, up to {self._baseline.max_new_tokens} new tokens per clip")

    def _score_baseline(self, batch: dict) -> torch.Tensor:
        """The baseline's [word errors, reference words, samples] over the batch's real rows with a clip."""
        has_audio = self._audio_rows(batch)  # (B,)
        real = ~batch["is_pad"][has_audio]  # (A,)
        rows = [i for i, keep in enumerate((has_audio & ~batch["is_pad"]).tolist()) if keep]
        if not rows:
            return torch.zeros(3, dtype=torch.float64)
        mel = self.model.features(batch["waveforms"][real], batch["audio_lengths"][real])  # (R, M, T_mel): full window
        hyps = self._baseline.transcribe(mel, [batch["languages"][i] for i in rows])
        errors, words = word_errors([batch["references"][i] or "" for i in rows], hyps,
                                    [batch["languages"][i] for i in rows])
        return torch.tensor([sum(errors), sum(words), len(rows)], dtype=torch.float64)

    def on_validation_epoch_start(self) -> None:
        self._load_baseline()
        self._val_sums = torch.zeros(len(self._benchmark_names()), 9, dtype=torch.float64, device=self.device)
        self._val_started = self._val_clock = time.perf_counter()
        self._baseline_seconds = 0.0

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Score a batch; returns the real rows' {"keys", "hypotheses"} (for callbacks: tools/bench_validate.py)."""
        hyps = self._generate(batch)  # decoding brings the ids to the host: the device is done with the batch
        real = [i for i, pad in enumerate(batch["is_pad"].tolist()) if not pad]
        errors, words = word_errors([batch["references"][i] or "" for i in real], [hyps[i] for i in real],
                                    [batch["languages"][i] for i in real])
        audio = self._audio_samples(batch)
        now = time.perf_counter()  # the benchmark's wall time: since the previous step ended (the data wait included)
        step = torch.zeros(9, dtype=torch.float64, device=self.device)
        step[:WALL + 1] = torch.tensor([sum(errors), sum(words), len(real), 0.0, now - self._val_clock])
        step[AUDIO] = audio
        if self._baseline is not None:  # timed apart: Borealis' wall time ends before and resumes after it
            step[W_ERRORS:W_SECONDS] = self._score_baseline(batch)
            seconds = time.perf_counter() - now  # its decode ends on the host: the device is done
            step[W_SECONDS] = seconds
            self._baseline_seconds += seconds
            now += seconds
        self._val_sums[dataloader_idx] += step
        self._val_clock = now
        return {"keys": [batch["keys"][i] for i in real], "hypotheses": [hyps[i] for i in real]}

    def on_validation_epoch_end(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        epoch = time.perf_counter() - self._val_started - self._baseline_seconds
        # One collective: every rank's sums plus a row with its epoch time. Times take the max over ranks; the rest add.
        last = self._val_sums.new_zeros(1, self._val_sums.shape[1])
        last[0, WALL] = epoch
        mine = torch.cat([self._val_sums, last])  # (benchmarks + 1, 9)
        ranks = self.trainer.strategy.all_gather(mine).reshape(-1, *mine.shape)  # (world, benchmarks + 1, 9)
        totals = ranks.sum(0)
        totals[:, [WALL, W_SECONDS]] = ranks[..., [WALL, W_SECONDS]].amax(0)
        totals = totals.tolist()
        per_benchmark = {}
        for name, row in zip(self._benchmark_names(), totals):
            errors, words, wall = row[ERRORS], row[WORDS], row[WALL]
            wer, audio = errors / words if words else float("nan"), row[AUDIO] / SAMPLE_RATE
            per_benchmark[name] = {"wer": wer, "errors": int(errors), "words": int(words), "samples": int(row[SAMPLES]),
                                   "audio_seconds": audio, "seconds": wall, "rtfx": rtfx(audio, wall)}
            self.log(f"val/wer/{name}", wer, rank_zero_only=True, add_dataloader_idx=False)
            self.log(f"val/rtfx/{name}", per_benchmark[name]["rtfx"], rank_zero_only=True, add_dataloader_idx=False)
        audio = sum(v["audio_seconds"] for v in per_benchmark.values())
        overall = {"audio_seconds": audio, "seconds": totals[-1][WALL], "rtfx": rtfx(audio, totals[-1][WALL])}
        avg = average_wer({k: v["wer"] for k, v in per_benchmark.items()})
        self.log("val/wer_avg", avg, prog_bar=True, rank_zero_only=True, add_dataloader_idx=False)
        self.log("val/rtfx", overall["rtfx"], rank_zero_only=True, add_dataloader_idx=False)
        baseline = self._baseline_report(totals[:-1], per_benchmark) if self._baseline is not None else None
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        label = Path(self.trainer.ckpt_path).name if self.trainer.ckpt_path else f"step-{self.global_step}"
        folder = report_dir(self.trainer, self.hparams.report_dir)
        report = write_report(folder / "wer.json", label, per_benchmark, overall,
                              baselines={"whisper": baseline} if baseline else None)
        rows = {label: {**{k: v["wer"] for k, v in per_benchmark.items()}, "avg": report["avg"]}}
        if baseline:
            rows[f"Whisper {baseline['model']}"] = {**{k: v["wer"] for k, v in baseline["benchmarks"].items()},
                                                    "avg": baseline["avg"]}
        speed = ", ".join(f"{k} {v['rtfx']:.1f}" for k, v in per_benchmark.items())
        rank_zero_info(f"\nWER (%) per benchmark\n{wer_table(rows)}\nRTFx (audio seconds / wall seconds): {speed}; "
                       f"overall {overall['rtfx']:.1f} ({audio:.1f} s of audio in {overall['seconds']:.1f} s)\n"
                       f"written to {folder / 'wer.json'}")

    def _baseline_report(self, totals: list[list[float]], per_benchmark: dict) -> dict:
        """The Whisper baseline's wer.json entry from the gathered sums (rows: benchmarks), logged as
        `val/whisper_wer/<name>` and `val/whisper_wer_avg`. Its `seconds` are its own generation
        time (log-mel included, data waits not), the slowest rank's."""
        benchmarks = {}
        for (name, ours), row in zip(per_benchmark.items(), totals):
            errors, words, seconds = row[W_ERRORS], row[W_WORDS], row[W_SECONDS]
            wer = errors / words if words else float("nan")
            benchmarks[name] = {"wer": wer, "errors": int(errors), "words": int(words), "samples": int(row[W_SAMPLES]),
                                "seconds": seconds, "rtfx": rtfx(ours["audio_seconds"], seconds)}
            self.log(f"val/whisper_wer/{name}", wer, rank_zero_only=True, add_dataloader_idx=False)
        avg = average_wer({k: v["wer"] for k, v in benchmarks.items()})
        self.log("val/whisper_wer_avg", avg, rank_zero_only=True, add_dataloader_idx=False)
        return {"model": self.hparams.encoder, "benchmarks": benchmarks, "avg": avg}

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[str]:
        """The generated text of every row, pad rows included (`callbacks.PredictionWriter` writes them)."""
        return self._generate(batch)
