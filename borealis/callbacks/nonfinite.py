"""Numerical faults: optimizer steps whose loss or gradient is not finite are skipped and counted.

Such a step is skipped (every gradient set to None, so AdamW changes neither weights nor its
state; the LR schedule and global step still advance), warned about with its batch keys and
counted as `train/skipped_steps`. More than `max_skipped` skips within `window` steps stop the
run, naming the keys. The check is one batched inf-norm over the trainable gradients, one
all-reduce of the flag (the same decision on every rank, FSDP shards included) and one host
sync per optimizer step. The loss checked is the one Lightning backpropagates (divided by the
accumulation count). Under fp16 with a GradScaler the scaler skips overflowing steps itself;
only a non-finite loss counts there.

The counters travel in `fit` checkpoints under `checkpoint["borealis"]` ("skipped_steps",
"skips"), so a resumed run keeps its window. Installed by
`BorealisLightningModule.configure_callbacks` (`model.max_skipped_steps`,
`model.skipped_steps_window`).
"""

from __future__ import annotations

import logging
import math
from collections import deque

import lightning as L
import torch

log = logging.getLogger(__name__)


class NonFiniteSteps(L.Callback):
    """Skip optimizer steps with a non-finite loss or gradient; stop after too many.

    Args:
        max_skipped: more skips than this within `window` optimizer steps stop the run
            (0: the first one stops it).
        window: the window, in optimizer steps.
    """

    def __init__(self, max_skipped: int = 10, window: int = 100) -> None:
        if max_skipped < 0 or window < 1:
            raise ValueError(f"model.max_skipped_steps must be >= 0 and model.skipped_steps_window >= 1, got "
                             f"{max_skipped} and {window}")
        self.max_skipped, self.window = max_skipped, window
        self.skipped_total = 0
        self.skips: deque[tuple[int, list[str]]] = deque()  # (step, keys) of the skips in the window
        self._keys: list[str] = []  # keys of the batches since the last optimizer step
        self._loss_finite: torch.Tensor | None = None  # all their losses finite (on the device: no sync)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._keys.extend(batch["keys"])

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        """Runs before gradient clipping, which ignores None gradients."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        ok = self._loss_finite if self._loss_finite is not None else torch.ones((), dtype=torch.bool,
                                                                                device=pl_module.device)
        if params and getattr(trainer.precision_plugin, "scaler", None) is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=math.inf)  # nan/inf iff any
            ok = ok & torch.isfinite(norm.to(ok.device))
        if trainer.world_size > 1:  # one decision for all ranks (under FSDP each rank sees a shard)
            ok = trainer.strategy.reduce(ok.float(), reduce_op="min") > 0
        keys, self._keys, self._loss_finite = self._keys, [], None
        step = trainer.global_step
        while self.skips and self.skips[0][0] <= step - self.window:
            self.skips.popleft()
        if not bool(ok):  # the one host sync per optimizer step
            for p in params:
                p.grad = None  # AdamW skips parameters without a gradient: no weight or state change
            self.skipped_total += 1
            self.skips.append((step, keys[:32]))
            log.warning("optimizer step %d skipped: non-finite loss or gradient (%d skipped so far); batch keys on "
                        "rank %d: %s", step, self.skipped_total, trainer.global_rank, keys[:32])
            if len(self.skips) > self.max_skipped:
                self._abort(trainer)
        pl_module.log("train/skipped_steps", float(self.skipped_total), batch_size=1)

    def _abort(self, trainer: L.Trainer) -> None:
        skips = list(self.skips)
        if trainer.world_size > 1 and torch.distributed.is_initialized():  # every rank is here: same decision
            gathered: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, skips)
            skips = [(step, [k for rank_skips in gathered for s, ks in rank_skips if s == step for k in ks])
                     for step, _ in skips]
        detail = "; ".join(f"step {step}: {', '.join(keys)}" for step, keys in skips)
        raise RuntimeError(f"{len(skips)} of the last {self.window} optimizer steps had a non-finite "
                           f"loss or gradient and were skipped, more than model.max_skipped_steps="
                           f"{self.max_skipped}: stopping. Batch keys of the skipped steps: {detail}. Inspect "
                           f"these samples (borealis shards inspect POOL --play KEY), or lower model.learning_rate")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":
            checkpoint.setdefault("borealis", {}).update(
                skipped_steps=self.skipped_total, skips=[[step, keys] for step, keys in self.skips])

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        extra = checkpoint.get("borealis", {})
        self.skipped_total = int(extra.get("skipped_steps", 0))
        self.skips = deque((int(step), list(keys)) for step, keys in extra.get("skips", []))
