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
  compares it with one-by-one generation (figures in BENCHMARKS.md).
* The training loss comes from `model.loss` (logits of the labelled positions only) unless
  `label_logits_only: false` (the causal LM's own forward, logits at every position).
* Checkpoints hold the trainable weights (LoRA + adapter, ~0.55B at 5B shapes) plus
  optimizer/scheduler state, never the frozen base; loading checks the key set exactly.
  Hyperparameters are plain types, so checkpoints load with `torch.load(weights_only=True)`.
* Exact resume: a checkpoint also holds every rank's RNG states (torch CPU and CUDA, NumPy,
  Python, the SpecAugment mask generator; gathered from all ranks when it is written) and the
  non-finite step counters. They are restored in `on_train_start`, the last hook before the
  first step, so the resumed run draws what the uninterrupted one would (the training
  DataLoader seeds its workers from its own generator, never from the global RNG).
* Numerical faults: an optimizer step whose loss or gradient is not finite is skipped
  (every gradient set to None, so AdamW changes neither weights nor its state; the LR
  schedule and global step still advance), warned about with its batch keys and counted as
  `train/skipped_steps`. More than `max_skipped_steps` skips within `skipped_steps_window`
  steps stop the run, naming the keys. The check is one batched inf-norm over the trainable
  gradients, one all-reduce of the flag (the same decision on every rank, FSDP shards
  included) and one host sync per optimizer step. Under fp16 with a GradScaler the scaler
  skips overflowing steps itself; only a non-finite loss counts there.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoTokenizer, WhisperConfig

from borealis.augmentations import SpecAugment
from borealis.features import num_mel_frames
from borealis.metrics import average_wer, rtfx, wer_table, word_errors, write_report
from borealis.modeling import BorealisForConditionalGeneration, LoraSettings, check_encoder_window, load_init_weights
from borealis.prompts import AUDIO_START, DEFAULT_SYSTEM_PROMPT, PromptBuilder
from borealis.shards import SAMPLE_RATE, ReadErrors

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
            counted; more than this many within `skipped_steps_window` steps stop the run with
            an error naming the batches' keys (0: the first one stops it).
        skipped_steps_window: the window, in optimizer steps, for `max_skipped_steps`.
        init_from: start from released weights after the base parts load: an exported or
            saved Borealis directory, or a state dict from the seed's code (seed names; see
            `modeling.load_init_weights`). Unexpected keys, missing trainable keys and shape
            mismatches fail, listed. A checkpoint given by `--ckpt_path` loads over it.
        label_logits_only: the training loss projects only the labelled (assistant) positions
            onto the vocabulary (`modeling.BorealisForConditionalGeneration.loss`: the same loss,
            without the logits of every prompt and audio position: 0.6 MB and 0.78 GFLOP per
            position at Qwen3-4B). false: the causal LM's own forward, logits everywhere; the
            two differ in the last bits only (summation order).
    """

    def __init__(self, encoder: str, llm: str, downsample_factor: int = 4,
                 adapter: Literal["simple", "deep"] = "simple", trim_audio_tokens: bool = True,
                 encoder_window: Literal["full", "batch"] = "full",
                 lora: LoraSettings | None = LoraSettings(), freeze_encoder: bool = True,
                 base_dtype: Literal["float32", "bfloat16", "float16"] = "float32", learning_rate: float = 1e-5,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), warmup_steps: int = 100,
                 min_lr_ratio: float = 0.1, system_prompt: str = DEFAULT_SYSTEM_PROMPT, max_new_tokens: int = 128,
                 report_dir: str | None = None, max_skipped_steps: int = 10, skipped_steps_window: int = 100,
                 init_from: str | None = None, label_logits_only: bool = True) -> None:
        super().__init__()
        if max_skipped_steps < 0 or skipped_steps_window < 1:
            raise ValueError(f"model.max_skipped_steps must be >= 0 and model.skipped_steps_window >= 1, got "
                             f"{max_skipped_steps} and {skipped_steps_window}")
        check_encoder_window(encoder_window, trim_audio_tokens)
        self.save_hyperparameters()
        # Plain types only, so `torch.load(weights_only=True)` (Lightning, LightningCLI) reads the checkpoint.
        self.hparams["lora"] = asdict(lora) if isinstance(lora, LoraSettings) else lora
        self.strict_loading = False  # checkpoints hold trainable weights only; on_load_checkpoint checks them
        self.tokenizer = AutoTokenizer.from_pretrained(llm)
        encoder_config = WhisperConfig.from_pretrained(encoder)
        self.prompt_builder = PromptBuilder(
            self.tokenizer, downsample_factor=downsample_factor,
            max_source_positions=encoder_config.max_source_positions, trim_audio_tokens=trim_audio_tokens,
            system_prompt=system_prompt)
        self.model: BorealisForConditionalGeneration | None = None
        # (benchmarks, [errors, words, samples, audio samples, wall seconds]), and the validation clocks
        self._val_sums: torch.Tensor | None = None
        self._val_started = self._val_clock = 0.0
        self.spec_augment: SpecAugment | None = None  # set by callbacks.AugmentationScheduler
        self._mask_generator: torch.Generator | None = None
        self._data_errors: torch.Tensor | None = None  # this rank's totals of batch["data_errors"]
        self._data_errors_all: torch.Tensor | None = None  # the totals over all ranks, as last reduced
        self._step_keys: list[str] = []  # keys of the batches since the last optimizer step
        self._loss_finite: torch.Tensor | None = None  # all their losses finite (on the device: no sync)
        self._skipped_total = 0
        self._skips: deque[tuple[int, list[str]]] = deque()  # (step, keys) of the skips in the window
        self._resume_rng: list[dict] | None = None  # per-rank RNG states of the checkpoint being resumed

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.model = BorealisForConditionalGeneration.from_parts(
            hp.encoder, hp.llm, downsample_factor=hp.downsample_factor, adapter=hp.adapter,
            trim_audio_tokens=hp.trim_audio_tokens, encoder_window=hp.encoder_window, lora=hp.lora,
            freeze_encoder=hp.freeze_encoder, dtype=_DTYPES[hp.base_dtype], tokenizer=self.tokenizer)
        if hp.init_from:
            load_init_weights(self.model, hp.init_from)
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
        if self._trainer is not None and self._trainer.state.fn == "fit":  # what an exact resume needs
            checkpoint["borealis"] = {"rng": self._gather_rng_states(), "skipped_steps": self._skipped_total,
                                      "skips": [[step, keys] for step, keys in self._skips]}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        keys, want = set(checkpoint["state_dict"]), self._trainable_keys()
        if keys != want:
            raise ValueError(f"checkpoint does not match this model's trainable weights: missing "
                             f"{sorted(want - keys)[:10]}, unexpected {sorted(keys - want)[:10]}; was it trained "
                             f"with the same adapter/LoRA/freeze settings?")
        extra = checkpoint.get("borealis", {})
        self._resume_rng = extra.get("rng")
        self._skipped_total = int(extra.get("skipped_steps", 0))
        self._skips = deque((int(step), list(keys)) for step, keys in extra.get("skips", []))

    def _rng_state(self) -> dict:
        np_state = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                           "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        if self._mask_generator is not None:
            state["mask"] = self._mask_generator.get_state()
        return state

    def _gather_rng_states(self) -> list[dict]:
        """Every rank's RNG states, in rank order (a collective: checkpoints are dumped on every rank)."""
        state = self._rng_state()
        if self.trainer.world_size == 1 or not torch.distributed.is_initialized():
            return [state]
        states: list = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(states, state)  # pickles between our own ranks, never from disk
        return [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in s.items()} for s in states]

    def on_train_start(self) -> None:
        """Restore this rank's RNG states from the resumed checkpoint: here, the last hook before
        the first step, not in `on_load_checkpoint`, so nothing in between (e.g. a DataLoader
        iterator seeded from the global RNG) shifts the draws."""
        states, self._resume_rng = self._resume_rng, None
        if not states:
            return
        if len(states) != self.trainer.world_size:
            log.warning("the checkpoint holds RNG states of %d rank(s), this run has %d: random draws (dropout, "
                        "SpecAugment) continue from this run's seed, not from the checkpoint", len(states),
                        self.trainer.world_size)
            return
        state = states[self.global_rank]
        torch.set_rng_state(state["torch"])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        np_state = state["numpy"]
        np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                             np_state["has_gauss"], np_state["cached_gaussian"]))
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)
        if "mask" in state:
            self._mask_generator = torch.Generator(device=self.device)
            self._mask_generator.set_state(state["mask"])

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
        mel = self.model.log_mel(inputs.pop("waveforms"), lengths)
        inputs["input_features"] = self.spec_augment(mel, num_mel_frames(lengths), self._mask_generator)
        return inputs

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        inputs = self._masked_features(batch)
        loss = self.model.loss(**inputs) if self.hparams.label_logits_only else self.model(**inputs).loss
        n = len(batch["keys"])
        self._step_keys.extend(batch["keys"])
        finite = torch.isfinite(loss.detach())
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip this optimizer step if a loss or gradient of it is not finite (see the module
        docstring); runs before gradient clipping, which ignores None gradients."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        ok = self._loss_finite if self._loss_finite is not None else torch.ones((), dtype=torch.bool,
                                                                                device=self.device)
        if params and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=math.inf)  # nan/inf iff any
            ok = ok & torch.isfinite(norm.to(ok.device))
        if self.trainer.world_size > 1:  # one decision for all ranks (under FSDP each rank sees a shard)
            ok = self.trainer.strategy.reduce(ok.float(), reduce_op="min") > 0
        keys, self._step_keys, self._loss_finite = self._step_keys, [], None
        step, window = self.global_step, self.hparams.skipped_steps_window
        while self._skips and self._skips[0][0] <= step - window:
            self._skips.popleft()
        if not bool(ok):  # the one host sync per optimizer step
            for p in params:
                p.grad = None  # AdamW skips parameters without a gradient: no weight or state change
            self._skipped_total += 1
            self._skips.append((step, keys[:32]))
            log.warning("optimizer step %d skipped: non-finite loss or gradient (%d skipped so far); batch keys on "
                        "rank %d: %s", step, self._skipped_total, self.global_rank, keys[:32])
            if len(self._skips) > self.hparams.max_skipped_steps:
                self._abort_on_skips()
        self.log("train/skipped_steps", float(self._skipped_total), batch_size=1)

    def _abort_on_skips(self) -> None:
        skips = list(self._skips)
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():  # every rank is here: same decision
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, skips)
            skips = [(step, [k for rank_skips in gathered for s, ks in rank_skips if s == step for k in ks])
                     for step, _ in skips]
        hp = self.hparams
        detail = "; ".join(f"step {step}: {', '.join(keys)}" for step, keys in skips)
        raise RuntimeError(f"{len(skips)} of the last {hp.skipped_steps_window} optimizer steps had a non-finite "
                           f"loss or gradient and were skipped, more than model.max_skipped_steps="
                           f"{hp.max_skipped_steps}: stopping. Batch keys of the skipped steps: {detail}. Inspect "
                           f"these samples (tools/inspect_shards.py --play KEY), or lower model.learning_rate")

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
    def _generate(self, batch: dict) -> list[str]:
        ids = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  waveforms=batch["waveforms"], audio_lengths=batch["audio_lengths"],
                                  max_new_tokens=self.hparams.max_new_tokens)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def _benchmark_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None)
        return list(getattr(dm, "val_sets", {})) or ["val"]

    def _audio_samples(self, batch: dict) -> torch.Tensor:
        """Audio samples in the batch's real (non-pad) rows, as a float64 scalar on the device
        (counts, not seconds: their sums are exact, whatever the batching and rank order).

        `audio_lengths` (A,) covers only the rows that carry a clip, in row order (text-only
        rows have none); a row carries one iff its prompt holds the clip's start marker.
        """
        lengths = batch["audio_lengths"]
        if lengths is None:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        has_audio = (batch["input_ids"] == self.prompt_builder.audio_ids[AUDIO_START]).any(1)  # (B,)
        real = ~batch["is_pad"][has_audio]  # (A,)
        return lengths[real].sum().double()

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(len(self._benchmark_names()), 5, dtype=torch.float64, device=self.device)
        self._val_started = self._val_clock = time.perf_counter()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Score a batch; returns the real rows' {"keys", "hypotheses"} (for callbacks: tools/bench_validate.py)."""
        hyps = self._generate(batch)  # decoding brings the ids to the host: the device is done with the batch
        real = [i for i, pad in enumerate(batch["is_pad"].tolist()) if not pad]
        errors, words = word_errors([batch["references"][i] or "" for i in real], [hyps[i] for i in real],
                                    [batch["languages"][i] for i in real])
        audio = self._audio_samples(batch)
        now = time.perf_counter()  # the benchmark's wall time: since the previous step ended (the data wait included)
        step = torch.tensor([sum(errors), sum(words), len(real), 0.0, now - self._val_clock], dtype=torch.float64,
                            device=self.device)
        step[3] = audio
        self._val_sums[dataloader_idx] += step
        self._val_clock = now
        return {"keys": [batch["keys"][i] for i in real], "hypotheses": [hyps[i] for i in real]}

    def on_validation_epoch_end(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        epoch = time.perf_counter() - self._val_started
        # One collective: every rank's sums plus a row with its epoch time. Counts add; wall times take the max.
        mine = torch.cat([self._val_sums, self._val_sums.new_tensor([[0, 0, 0, 0, epoch]])])  # (benchmarks + 1, 5)
        ranks = self.trainer.strategy.all_gather(mine).reshape(-1, *mine.shape)  # (world, benchmarks + 1, 5)
        sums, walls = ranks[..., :4].sum(0).tolist(), ranks[..., 4].amax(0).tolist()
        per_benchmark = {}
        for name, (errors, words, samples, audio), wall in zip(self._benchmark_names(), sums, walls):
            wer, audio = errors / words if words else float("nan"), audio / SAMPLE_RATE
            per_benchmark[name] = {"wer": wer, "errors": int(errors), "words": int(words), "samples": int(samples),
                                   "audio_seconds": audio, "seconds": wall, "rtfx": rtfx(audio, wall)}
            self.log(f"val/wer/{name}", wer, rank_zero_only=True, add_dataloader_idx=False)
            self.log(f"val/rtfx/{name}", per_benchmark[name]["rtfx"], rank_zero_only=True, add_dataloader_idx=False)
        audio = sum(v["audio_seconds"] for v in per_benchmark.values())
        overall = {"audio_seconds": audio, "seconds": walls[-1], "rtfx": rtfx(audio, walls[-1])}
        avg = average_wer({k: v["wer"] for k, v in per_benchmark.items()})
        self.log("val/wer_avg", avg, prog_bar=True, rank_zero_only=True, add_dataloader_idx=False)
        self.log("val/rtfx", overall["rtfx"], rank_zero_only=True, add_dataloader_idx=False)
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        label = Path(self.trainer.ckpt_path).name if self.trainer.ckpt_path else f"step-{self.global_step}"
        report = write_report(self._report_dir() / "wer.json", label, per_benchmark, overall)
        table = wer_table({label: {**{k: v["wer"] for k, v in per_benchmark.items()}, "avg": report["avg"]}})
        speed = ", ".join(f"{k} {v['rtfx']:.1f}" for k, v in per_benchmark.items())
        rank_zero_info(f"\nWER (%) per benchmark\n{table}\nRTFx (audio seconds / wall seconds): {speed}; overall "
                       f"{overall['rtfx']:.1f} ({audio:.1f} s of audio in {overall['seconds']:.1f} s)\n"
                       f"written to {self._report_dir() / 'wer.json'}")

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
        self._window_texts: dict[tuple[int, int], str] = {}

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        hyps = self._generate(batch)
        if batch.get("windows") and batch["windows"][0] is not None:  # data.predict_files: merged at the end
            for window, hyp, pad in zip(batch["windows"], hyps, batch["is_pad"].tolist()):
                if not pad:
                    self._window_texts[window[:2]] = hyp
            return []
        rows = [{"key": k, "prediction": h, **({"reference": r} if r is not None else {})}
                for k, h, r, pad in zip(batch["keys"], hyps, batch["references"], batch["is_pad"].tolist())
                if not pad]
        self._write_predictions(rows)
        return rows

    def _write_predictions(self, rows: list[dict]) -> None:
        path = self._report_dir() / f"predictions.rank{self.global_rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    def on_predict_end(self) -> None:
        """Write one line per `data.predict_files` file: the merged windows, or the file's error."""
        windows = getattr(getattr(self.trainer, "datamodule", None), "windows", None)
        if windows is None:
            return
        rows = windows.file_rows(self._window_texts)
        self._write_predictions(rows)
        failed = [r for r in rows if "error" in r]
        rank_zero_info(f"predicted {len(rows) - len(failed)} file(s) on rank {self.global_rank}"
                       + (f"; {len(failed)} failed: " + "; ".join(r["detail"] for r in failed[:5]) if failed else "")
                       + f"; written to {self._report_dir() / f'predictions.rank{self.global_rank}.jsonl'}")
