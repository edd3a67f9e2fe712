"""Exact resume of random draws: every rank's RNG states saved in a checkpoint and restored.

A checkpoint written during `fit` holds, under `checkpoint["borealis"]["rng"]`, one entry per
rank (gathered from all ranks when it is written): torch CPU and CUDA, NumPy, Python, and the
LightningModule's SpecAugment mask generator (`mask_generator`, when it has one). They are
restored in `on_train_start`, the last hook before the first step, not when the checkpoint
loads, so nothing in between (e.g. a DataLoader iterator seeded from the global RNG) shifts
the draws, and the resumed run draws what the uninterrupted one would. (The training
DataLoader seeds its workers from its own generator, never from the global RNG.)

Installed by `BorealisLightningModule.configure_callbacks`.
"""

from __future__ import annotations

import logging
import random

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


def rng_state(pl_module: L.LightningModule) -> dict:
    """This process's RNG states, as plain tensors and numbers (`torch.load(weights_only=True)` reads them)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if pl_module.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(pl_module.device)
    mask = getattr(pl_module, "mask_generator", None)
    if mask is not None:
        state["mask"] = mask.get_state()
    return state


def set_rng_state(pl_module: L.LightningModule, state: dict) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    if "cuda" in state and pl_module.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], pl_module.device)
    if "mask" in state:
        pl_module.mask_generator = torch.Generator(device=pl_module.device)
        pl_module.mask_generator.set_state(state["mask"])


class RngState(L.Callback):
    """Save every rank's RNG states in `fit` checkpoints; restore this rank's when training starts."""

    def __init__(self) -> None:
        self._resume: list[dict] | None = None  # per-rank states of the checkpoint being resumed

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":  # a collective: checkpoints are dumped on every rank
            checkpoint.setdefault("borealis", {})["rng"] = self._gather(trainer, pl_module)

    @staticmethod
    def _gather(trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict]:
        """Every rank's RNG states, in rank order."""
        state = rng_state(pl_module)
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return [state]
        states: list = [None] * trainer.world_size
        torch.distributed.all_gather_object(states, state)  # pickles between our own ranks, never from disk
        return [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in s.items()} for s in states]

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._resume = checkpoint.get("borealis", {}).get("rng")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states, self._resume = self._resume, None
        if not states:
            return
        if len(states) != trainer.world_size:
            log.warning("the checkpoint holds RNG states of %d rank(s), this run has %d: random draws (dropout, "
                        "SpecAugment) continue from this run's seed, not from the checkpoint", len(states),
                        trainer.world_size)
            return
        set_rng_state(pl_module, states[trainer.global_rank])
