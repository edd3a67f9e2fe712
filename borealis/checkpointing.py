"""Checkpoints you can trust: atomic writes, weights-only loads, saves on optimizer steps.

What:
  * `AtomicCheckpointIO`, a Lightning `CheckpointIO` that the `borealis` CLI installs unless
    the trainer names its own: a checkpoint is written to a `.ckpt-*.partial` file in the
    target folder, fsynced, renamed over the target with `os.replace` (atomic on POSIX), and
    the folder is fsynced. A crash or SIGKILL mid-save leaves the previous file whole (and at
    worst a stale `.partial`, which `--ckpt_path last` never picks). Loads always use
    `torch.load(weights_only=True)`: a checkpoint carries tensors and plain Python values,
    never code. Remote (fsspec) paths keep Lightning's transactional writer.
  * `Checkpoint`, the CLI's `checkpoint:` options: Lightning's `ModelCheckpoint` with the
    options a long run needs in `borealis fit --help`, keeping `last.ckpt` by default, plus:
    a `save_last: link` symlink (or its copy) is replaced atomically too, and a step- or
    time-triggered save waits for an optimizer-step boundary, since a checkpoint inside a
    gradient-accumulation window could not hold the gradients accumulated so far.
Why: a resume is only as good as the file it starts from. Lightning's own local writer
stages the file in the system temp folder and moves it over (a copy, not an atomic rename,
when /tmp is another file system), never fsyncs, and replaces the `last.ckpt` link by
delete-then-create.
Cost: one fsync of the file and one of its folder per checkpoint (seconds for the flagship's
~6.6 GB of LoRA + adapter + AdamW state, next to the write itself).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


def _write(checkpoint: dict[str, Any], f) -> None:
    """Serialise `checkpoint` into the open file `f` (a seam for the crash-mid-write test)."""
    torch.save(checkpoint, f)


def _fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(target: str | Path, fill) -> None:
    """Create `target` by `fill(f)` on a temp file beside it, fsync, then `os.replace` it in.

    On any exception the temp file is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic, fsynced checkpoint writes and `weights_only=True` loads (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_replace(path, lambda f: _write(checkpoint, f))

    def load_checkpoint(self, path, map_location: Any | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            log.warning("loading %s with weights_only=True anyway: Borealis never unpickles code", path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class Checkpoint(ModelCheckpoint):
    """When and where training saves checkpoints (Lightning's ModelCheckpoint, made safe).

    Checkpoints are taken at optimizer-step boundaries and written atomically; every one can
    resume exactly (`borealis fit --ckpt_path last`, see README "Resume"). At most one of
    `every_n_train_steps`, `train_time_interval` and `every_n_epochs` may be set; with none,
    a checkpoint is saved at the end of every epoch. `last.ckpt` also gets the final state
    when training ends.

    Args:
        dirpath: folder of the checkpoints (default: `<default_root_dir>/checkpoints`, or the
            logger's version folder).
        filename: name pattern of the top-k checkpoints, e.g. `{epoch}-{step}` (no `.ckpt`).
        save_last: keep `last.ckpt`, rewritten at every save (`link`: a symlink to the newest
            top-k file, replaced atomically).
        save_top_k: keep the k best checkpoints by `monitor` (-1: all; 0: only `last.ckpt`).
        monitor: metric that ranks the top-k checkpoints, e.g. `val/wer_avg`.
        mode: `min` or `max` for `monitor`.
        every_n_train_steps: save every this many optimizer steps.
        train_time_interval: save when this much training time has passed since the last
            save, at the next optimizer step (e.g. `0:30:00`).
        every_n_epochs: save every this many epochs.
    """

    def __init__(self, dirpath: str | None = None, filename: str | None = None,
                 save_last: bool | Literal["link"] = True, save_top_k: int = 0, monitor: str | None = None,
                 mode: Literal["min", "max"] = "min", every_n_train_steps: int | None = None,
                 train_time_interval: timedelta | None = None, every_n_epochs: int | None = None) -> None:
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, save_last=save_last,
                         save_top_k=save_top_k, mode=mode, every_n_train_steps=every_n_train_steps,
                         train_time_interval=train_time_interval, every_n_epochs=every_n_epochs)
        self._step_seen: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._step_seen = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        stepped, self._step_seen = trainer.global_step != self._step_seen, trainer.global_step
        if stepped:  # mid-accumulation a time-triggered save waits: the gradients so far cannot be saved
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the final state in `last.ckpt` however the step or time triggers fell (Lightning
        writes it at the end only when no checkpoint was saved at all)."""
        if self.save_last is True and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        """Point `linkpath` at `filepath` (a relative symlink, or a copy where links fail) by
        building it beside `linkpath` and renaming it over: there is always a `last.ckpt`."""
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)
            folder = os.path.dirname(linkpath)
            tmp = os.path.join(folder, f".ckpt-link-{os.getpid()}.partial")
            if os.path.lexists(tmp):
                os.remove(tmp)
            try:
                os.symlink(os.path.relpath(filepath, folder), tmp)
                os.replace(tmp, linkpath)
                _fsync_dir(folder)
            except OSError:  # no symlinks here (e.g. Windows without the privilege): an atomic copy
                if os.path.lexists(tmp):
                    os.remove(tmp)
                atomic_replace(linkpath, lambda f: _copy_into(filepath, f))
        trainer.strategy.barrier()


def _copy_into(source: str, f) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f, length=16 << 20)
