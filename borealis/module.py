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
* Validation generates greedily in batches (KV cache) and sums word errors and reference
  words per benchmark; the sums are all-reduced once per epoch, so the WER is exact across
  ranks, and pad rows (see `data.RankBatches`) are never counted.
* Checkpoints hold the trainable weights (LoRA + adapter, ~0.55B at 5B shapes) plus
  optimizer/scheduler state, never the frozen base; loading checks the key set exactly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoTokenizer, WhisperConfig

from borealis.augmentations import SpecAugment
from borealis.features import num_mel_frames
from borealis.metrics import average_wer, wer_table, word_errors, write_report
from borealis.modeling import BorealisForConditionalGeneration, LoraSettings
from borealis.prompts import DEFAULT_SYSTEM_PROMPT, PromptBuilder
from borealis.shards import ReadErrors

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BorealisLightningModule(L.LightningModule):
    """Trains Borealis: frozen Whisper encoder -> stacking -> adapter -> LLM (+LoRA).

    Args:
        encoder: Whisper checkpoint, hub id or local folder (only the encoder is kept).
        llm: causal LM checkpoint with its tokenizer, hub id or local folder.
        downsample_factor: encoder frames stacked per LLM position (k).
        adapter: `simple` (the seed's 19.7M MLP) or `deep` (~80M residual MLP, ablation).
        trim_audio_tokens: audio slots follow the clip length; off = full 30 s window (375).
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
    """

    def __init__(self, encoder: str, llm: str, downsample_factor: int = 4,
                 adapter: Literal["simple", "deep"] = "simple", trim_audio_tokens: bool = True,
                 lora: LoraSettings | None = LoraSettings(), freeze_encoder: bool = True,
                 base_dtype: Literal["float32", "bfloat16", "float16"] = "float32", learning_rate: float = 1e-5,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), warmup_steps: int = 100,
                 min_lr_ratio: float = 0.1, system_prompt: str = DEFAULT_SYSTEM_PROMPT, max_new_tokens: int = 128,
                 report_dir: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints hold trainable weights only; on_load_checkpoint checks them
        self.tokenizer = AutoTokenizer.from_pretrained(llm)
        encoder_config = WhisperConfig.from_pretrained(encoder)
        self.prompt_builder = PromptBuilder(
            self.tokenizer, downsample_factor=downsample_factor,
            max_source_positions=encoder_config.max_source_positions, trim_audio_tokens=trim_audio_tokens,
            system_prompt=system_prompt)
        self.model: BorealisForConditionalGeneration | None = None
        self._val_sums: torch.Tensor | None = None  # (benchmarks, [errors, words, samples])
        self._step_started: float | None = None
        self.spec_augment: SpecAugment | None = None  # set by callbacks.AugmentationScheduler
        self._mask_generator: torch.Generator | None = None
        self._data_errors: torch.Tensor | None = None  # this rank's totals of batch["data_errors"]
        self._data_errors_all: torch.Tensor | None = None  # the totals over all ranks, as last reduced

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = BorealisForConditionalGeneration.from_parts(
            hp.encoder, hp.llm, downsample_factor=hp.downsample_factor, adapter=hp.adapter,
            trim_audio_tokens=hp.trim_audio_tokens, lora=hp.lora, freeze_encoder=hp.freeze_encoder,
            dtype=_DTYPES[hp.base_dtype], tokenizer=self.tokenizer)
        for p in self.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        self.model.train()  # from_pretrained leaves parts in eval mode; LoRA dropout must be live
        rank_zero_info(f"Borealis: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters, "
                       f"{sum(p.numel() for p in self.model.parameters() if p.requires_grad) / 1e6:.2f}M trainable")

    def _trainable_keys(self) -> set[str]:
        return {f"model.{n}" for n in self.model.trainable_parameter_names()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        keys, want = set(checkpoint["state_dict"]), self._trainable_keys()
        if keys != want:
            raise ValueError(f"checkpoint does not match this model's trainable weights: missing "
                             f"{sorted(want - keys)[:10]}, unexpected {sorted(keys - want)[:10]}; was it trained "
                             f"with the same adapter/LoRA/freeze settings?")

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
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

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def _model_inputs(self, batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "waveforms", "audio_lengths")}

    def _masked_features(self, batch: dict) -> dict:
        """Model inputs with SpecAugment applied to the log-mel (training only)."""
        inputs = self._model_inputs(batch)
        if self.spec_augment is None or inputs["waveforms"] is None:
            return inputs
        if self._mask_generator is None:  # per-rank stream, seeded from the run's seed
            self._mask_generator = torch.Generator(device=self.device)
            self._mask_generator.manual_seed(torch.initial_seed() + 1_000_003 * self.global_rank)
        lengths = inputs["audio_lengths"]
        mel = self.model.features(inputs.pop("waveforms"), lengths)
        inputs["input_features"] = self.spec_augment(mel, num_mel_frames(lengths), self._mask_generator)
        return inputs

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model(**self._masked_features(batch)).loss
        n = len(batch["keys"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

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
        self._log_data_errors(batch)
        if self._step_started is None:
            return
        # Tensors, not .item(): the logger reads them every log_every_n_steps, so no per-step sync.
        elapsed = max(time.perf_counter() - self._step_started, 1e-9)
        mask = batch["attention_mask"]
        tokens = mask.sum().float()
        audio_s = (batch["audio_lengths"].sum().float() / 16000 if batch["audio_lengths"] is not None
                   else torch.zeros((), device=mask.device))
        n = len(batch["keys"])
        self.log("train/audio_sec_per_sec", audio_s / elapsed, batch_size=n)
        self.log("train/tokens_per_sec", tokens / elapsed, batch_size=n)
        self.log("train/padding_ratio", 1 - tokens / mask.numel(), batch_size=n)

    # ------------------------------------------------------------------ generation
    def _generate(self, batch: dict) -> list[str]:
        ids = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  waveforms=batch["waveforms"], audio_lengths=batch["audio_lengths"],
                                  max_new_tokens=self.hparams.max_new_tokens)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def _benchmark_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None)
        return list(getattr(dm, "val_sets", {})) or ["val"]

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(len(self._benchmark_names()), 3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        hyps = self._generate(batch)
        real = [i for i, pad in enumerate(batch["is_pad"].tolist()) if not pad]
        errors, words = word_errors([batch["references"][i] or "" for i in real], [hyps[i] for i in real],
                                    [batch["languages"][i] for i in real])
        self._val_sums[dataloader_idx] += torch.tensor([sum(errors), sum(words), len(real)],
                                                       dtype=torch.float64, device=self.device)

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        per_benchmark = {}
        for name, (errors, words, samples) in zip(self._benchmark_names(), sums.tolist()):
            wer = errors / words if words else float("nan")
            per_benchmark[name] = {"wer": wer, "errors": int(errors), "words": int(words), "samples": int(samples)}
            self.log(f"val/wer/{name}", wer, rank_zero_only=True, add_dataloader_idx=False)
        avg = average_wer({k: v["wer"] for k, v in per_benchmark.items()})
        self.log("val/wer_avg", avg, prog_bar=True, rank_zero_only=True, add_dataloader_idx=False)
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        label = Path(self.trainer.ckpt_path).name if self.trainer.ckpt_path else f"step-{self.global_step}"
        report = write_report(self._report_dir() / "wer.json", label, per_benchmark)
        table = wer_table({label: {**{k: v["wer"] for k, v in per_benchmark.items()}, "avg": report["avg"]}})
        rank_zero_info(f"\nWER (%) per benchmark\n{table}\nwritten to {self._report_dir() / 'wer.json'}")

    def _report_dir(self) -> Path:
        if self.hparams.report_dir:
            return Path(self.hparams.report_dir)
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end

    def on_predict_start(self) -> None:
        (self._report_dir() / f"predictions.rank{self.global_rank}.jsonl").unlink(missing_ok=True)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        hyps = self._generate(batch)
        rows = [{"key": k, "prediction": h, **({"reference": r} if r is not None else {})}
                for k, h, r, pad in zip(batch["keys"], hyps, batch["references"], batch["is_pad"].tolist())
                if not pad]
        path = self._report_dir() / f"predictions.rank{self.global_rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return rows
