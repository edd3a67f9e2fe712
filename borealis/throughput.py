"""Throughput of every training run: audio-seconds/s, tokens/s, data wait vs compute, MFU.

What: `Throughput`, a Lightning callback that the `borealis` CLI always installs (options
under `throughput:`). Per training batch it reads two host clocks and the host-side counts
`data.collate` puts in the batch (`row_tokens`, `seq_tokens`, `label_tokens`, `audio_samples`); per
window of optimizer steps (default `trainer.log_every_n_steps`) it logs, per device:

    train/audio_sec_per_sec, train/tokens_per_sec, train/samples_per_sec  (tokens: non-pad LLM positions)
    train/padding_ratio                   pad share of the window's R x W LLM positions (rows x width)
    train/data_wait_ms, train/compute_ms  mean per batch; train/data_wait_share = wait / (wait + compute)
    train/tflops_per_sec, train/mfu       `flops.step_flops` of the window's batches over its time;
                                          MFU only where a peak is known (`peak_tflops`, or Lightning's table)

and at the end of fit one summary line over the run (rank 0), kept in `Throughput.summary`.

Packed batches (`data.Batching.pack`: several samples per row, positions restarting at 0 per
sample) count samples, not rows: `seq_tokens` holds each sample's length, `row_tokens` each
row's. Tokens and padding come from the rows (a row's pad tail is the only padding), attention
FLOPs from the samples: each sample attends causally within itself, so the useful work is
sum over samples of L_i^2, not the row's square. Flash-attention's varlen path does just that;
sdpa's packed-sequence mask computes the masked row square, and the excess shows as lost MFU,
as padding does.

Timing: data wait = the previous batch's end (the first batch of an epoch: the epoch's
start) -> this batch's start, i.e. the loader's fetch plus Lightning's bookkeeping; compute
= batch start -> end (forward, backward, optimizer, the other callbacks' batch hooks). A gap
that holds validation or a checkpoint save counts as neither (one batch's fetch is lost per
such event), so the rates are those of training alone. CUDA runs ahead of the host, so the
window ends with one `torch.cuda.synchronize()`: the window's host time then covers its GPU
work. There is no per-step sync; the split between wait and compute holds per batch because
the module already syncs once per optimizer step (its non-finite check).

Why written to `trainer.loggers` and not through `self.log`: Lightning's logger connector
writes step values only on its own `log_every_n_steps` cadence, and re-writes a key's last
value at every later logging step of the epoch, so any other window would show missing or
stale points (and `on_epoch` would average rates batch-weighted). Here each window is one
point, at the step Lightning logs that batch's `train/loss` at (so these keys are not in
`trainer.callback_metrics`: nothing can monitor them). Under DDP every rank measures its own
device and rank 0's logger writes its numbers.

Cost: per batch two `perf_counter` calls, sums over three short int lists and a list extend;
per window two `step_flops` calls (the sum of the batches' step FLOPs, which are linear in
clips, tokens and squared sample lengths), one CUDA sync and one logger write.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields

import lightning as L
import torch

from borealis.flops import peak_flops, step_flops
from borealis.shards import SAMPLE_RATE

log = logging.getLogger(__name__)

__all__ = ["Throughput"]


@dataclass
class _Tally:
    """Sums over training batches (one window, or the whole run)."""

    batches: int = 0
    steps: int = 0  # optimizer steps
    samples: int = 0  # samples (a packed row holds several)
    audio_samples: int = 0  # 16 kHz samples of the samples' clips
    tokens: int = 0  # non-pad LLM positions
    slots: int = 0  # R x W LLM positions (rows x width), padding included
    flops: int = 0
    wait_s: float = 0.0
    compute_s: float = 0.0

    def add(self, other: _Tally) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def rates(self, peak: float | None, with_flops: bool = True) -> dict[str, float]:
        """The logged metrics (per device) of these sums; `peak` in FLOP/s, None: no MFU;
        `with_flops` False: FLOPs unknown (a module without a Borealis config), none logged."""
        seconds = max(self.wait_s + self.compute_s, 1e-12)
        out = {"train/audio_sec_per_sec": self.audio_samples / SAMPLE_RATE / seconds,
               "train/tokens_per_sec": self.tokens / seconds,
               "train/samples_per_sec": self.samples / seconds,
               "train/padding_ratio": 1 - self.tokens / self.slots if self.slots else 0.0,
               "train/data_wait_ms": 1000 * self.wait_s / max(self.batches, 1),
               "train/compute_ms": 1000 * self.compute_s / max(self.batches, 1),
               "train/data_wait_share": self.wait_s / seconds}
        if with_flops:
            out["train/tflops_per_sec"] = self.flops / seconds / 1e12
            if peak:
                out["train/mfu"] = self.flops / seconds / peak
        return out


class Throughput(L.Callback):
    """Log per-device throughput, the data-wait/compute split and MFU per window of steps.

    Args:
        window: optimizer steps per logged point, ending where `global_step` is a multiple
            of it (so on optimizer-step boundaries under gradient accumulation); null:
            `trainer.log_every_n_steps`, the points then sit beside `train/loss`.
        peak_tflops: the device's dense peak at the training precision, TFLOP/s, for MFU
            (989 for an H100 SXM in bf16); it wins over Lightning's device table, which
            does not know CPUs or every chip (there MFU is not logged without it).
    """

    def __init__(self, window: int | None = None, peak_tflops: float | None = None) -> None:
        problems = []
        if window is not None and window < 1:
            problems.append(f"throughput.window must be >= 1 or null, got {window}")
        if peak_tflops is not None and not peak_tflops > 0:
            problems.append(f"throughput.peak_tflops must be > 0 or null, got {peak_tflops}")
        if problems:
            raise ValueError("; ".join(problems))
        self.window, self.peak_tflops = window, peak_tflops
        self.summary: dict = {}
        self._every = 0
        self._peak: float | None = None
        self._config = None
        self._frames = None  # model.encoder_frames, where the model has it
        self._label_only = True  # the module trains with model.loss (label_logits_only)
        self._win, self._total = _Tally(), _Tally()
        self._lengths: list[int] = []  # the window's sample lengths (the sequences attention runs over)
        self._clips: Counter = Counter()  # the window's clips by encoder frames (None: the full window)
        self._labels: int | None = 0  # the window's labelled tokens (None: a batch did not say)
        self._prev_end: float | None = None
        self._start = self._wait = 0.0
        self._steps_before = 0
        self._gap_excluded = False
        self._warned = False

    # ------------------------------------------------------------------ setup
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._every = self.window or trainer.log_every_n_steps  # 0: no logged windows, totals only
        self._peak = (self.peak_tflops * 1e12 if self.peak_tflops is not None
                      else peak_flops(trainer.strategy.root_device, trainer.precision))
        model = getattr(pl_module, "model", None)
        self._config = getattr(model, "config", None)
        self._frames = getattr(model, "encoder_frames", None)
        # the LM head runs on the labelled positions only, unless the module says otherwise
        self._label_only = bool(getattr(pl_module, "hparams", {}).get("label_logits_only", True))
        self._win, self._total = _Tally(), _Tally()
        self._lengths, self._clips, self._labels = [], Counter(), 0
        self.summary = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._prev_end, self._gap_excluded = time.perf_counter(), False

    # ------------------------------------------------------------------ gaps that are not training
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._gap_excluded = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._prev_end, self._gap_excluded = time.perf_counter(), False  # a checkpoint after it sets it again

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._gap_excluded = True

    # ------------------------------------------------------------------ per batch
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        excluded = self._gap_excluded or self._prev_end is None
        self._wait = 0.0 if excluded else now - self._prev_end
        self._start, self._gap_excluded = now, False
        self._steps_before = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        rows, seqs, clips = self._counts(batch)
        w = self._win
        w.batches += 1
        w.samples += len(seqs)
        w.tokens += sum(rows)  # = sum(seqs): packing moves tokens between rows, it adds none
        w.slots += batch["input_ids"].numel()  # R x W, pad tails included
        w.audio_samples += sum(clips)
        self._lengths.extend(seqs)
        labels = batch.get("label_tokens")
        self._labels = None if labels is None or self._labels is None else self._labels + sum(labels)
        if clips:
            self._clips[self._frames(max(clips)) if self._frames is not None else None] += len(clips)
        stepped = trainer.global_step > self._steps_before
        w.steps += stepped
        close = stepped and self._every and trainer.global_step % self._every == 0
        if close and trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)  # the window's GPU work lands inside it
        now = time.perf_counter()
        w.wait_s += self._wait
        w.compute_s += now - self._start
        self._prev_end = now
        if close:
            # the step Lightning logs this batch's train/loss at (it advances after this hook)
            self._close(trainer, step=trainer.fit_loop.epoch_loop._batches_that_stepped)

    def _counts(self, batch: dict) -> tuple[list[int], list[int], list[int]]:
        """Non-pad tokens per row, tokens per sample and 16 kHz samples per clip, from `collate`'s
        host-side lists (unpacked: one sample per row, so a batch without `seq_tokens` uses the rows)."""
        rows, seqs, clips = batch.get("row_tokens"), batch.get("seq_tokens"), batch.get("audio_samples")
        if rows is not None and clips is not None:
            return rows, rows if seqs is None else seqs, clips
        if batch.get("attention_mask") is None:  # packed rows: pad and samples are not told apart without the lists
            raise ValueError("a training batch without attention_mask (packed rows) must carry row_tokens, "
                             "seq_tokens and audio_samples, as data.collate_packed puts them")
        if not self._warned:  # a batch from elsewhere: read the device tensors (one sync per batch)
            log.warning("training batches carry no row_tokens/audio_samples (see data.collate); throughput reads "
                        "attention_mask and audio_lengths instead, one device sync per batch")
            self._warned = True
        rows = batch["attention_mask"].sum(-1).tolist()
        lengths = batch.get("audio_lengths")
        return rows, rows, lengths.tolist() if lengths is not None else []

    # ------------------------------------------------------------------ per window / run
    def _close(self, trainer: L.Trainer, step: int) -> None:
        """Count the window's FLOPs, add it to the run's totals and log it."""
        w = self._win
        if self._config is not None:
            # step_flops is additive over sequences and over clips: one call for all the window's samples
            # (attention per sample, packed or not), one per clip length
            # the LM head runs on the labelled positions only (`BorealisForConditionalGeneration.loss`)
            labels = self._labels if self._label_only else None
            w.flops = step_flops(self._config, self._lengths, 0, label_tokens=labels).total + sum(
                step_flops(self._config, [], n, frames).total for frames, n in self._clips.items())
        self._total.add(w)
        if w.batches and trainer.loggers:
            metrics = w.rates(self._peak, with_flops=self._config is not None)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        self._win, self._lengths, self._clips, self._labels = _Tally(), [], Counter(), 0

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._win.batches:  # a last window shorter than `window`
            self._close(trainer, step=trainer.fit_loop.epoch_loop._batches_that_stepped)
        t, peak = self._total, self._peak if self._config is not None else None
        rates = t.rates(peak, with_flops=self._config is not None)
        self.summary = {**asdict(t), "audio_seconds": t.audio_samples / SAMPLE_RATE, "tflops_per_sec": None,
                        "mfu": None, "peak_tflops": peak / 1e12 if peak else None,
                        **{k.removeprefix("train/"): v for k, v in rates.items()}}
        if t.batches and trainer.is_global_zero:
            mfu = (f"MFU {rates['train/mfu']:.1%} of {peak / 1e12:g} TFLOP/s" if peak
                   else "MFU n/a (unknown peak; set throughput.peak_tflops)")
            log.info("throughput per device over %d optimizer steps (%.1f s of training): %.1f audio-s/s, %.0f "
                     "tokens/s, %.2f samples/s, padding %.1f%%; data wait %.1f%% of step time (%.1f ms/batch); "
                     "%.3g TFLOP/s, %s", t.steps, t.wait_s + t.compute_s, rates["train/audio_sec_per_sec"],
                     rates["train/tokens_per_sec"], rates["train/samples_per_sec"],
                     100 * rates["train/padding_ratio"], 100 * rates["train/data_wait_share"],
                     rates["train/data_wait_ms"], self.summary["tflops_per_sec"] or 0.0, mfu)
