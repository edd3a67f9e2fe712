"""Exact resume of the training stream: the position protocol, and the replay that skips.

The DataLoader deals batches from its workers round-robin, in order, so batch i of an epoch
is worker i % W's (i // W)-th batch, and the trainer's position is just (epoch, batches
consumed). `ResumableLoader` saves it in every checkpoint; on resume each worker replays its
deterministic stream past its share of the consumed batches (`worker_role`, `replay`):
reading, decoding, shuffling and tokenising as the interrupted run did, so batch composition
is identical, but without collation and, for length-preserving stages, without augmentation.
The worker that yields first takes the role of the one whose batch was next. Batches that
were prefetched but not consumed are regenerated. Cost: reading the skipped part of the epoch
once more, spread over the workers (plus its augmentation when the stage changes lengths).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from borealis.data.stream import MixtureStream

log = logging.getLogger(__name__)


def worker_role(worker: int, workers: int, consumed: int) -> tuple[int, int]:
    """(role, skip) of a DataLoader worker in an epoch resumed after `consumed` batches.

    Batch i of an epoch is role i % workers's. After `consumed` batches the loader's worker 0
    yields first, so worker w plays role (w + consumed) % workers and skips that role's
    consumed batches.
    """
    role = (worker + consumed) % workers
    return role, len(range(role, consumed, workers))


def replay(batches: Iterable[list[dict]], skip: int, caught_up: Callable[[], None]) -> Iterator[list[dict]]:
    """Drop the first `skip` batches (drawn, for the RNG and the shuffle buffers, but not built);
    `caught_up` runs after the last of them, before the next batch is drawn."""
    for items in batches:
        if skip:
            skip -= 1
            if not skip:
                caught_up()
            continue
        yield items


class ResumableLoader(DataLoader):
    """The training DataLoader: Lightning saves its position in every checkpoint and restores it.

    The state is small and plain: the epoch, the batches the trainer consumed in it (this
    loader counts what it hands out; Lightning does not prefetch from a sized loader), the
    curriculum stage to resume in, and the topology and stream fingerprint it is exact for.
    `load_state_dict` must run before the loader is first iterated, so before any worker
    (persistent ones too) starts: `BorealisDataModule` saves the state as its own and applies
    it when Lightning asks it for the loader. (Lightning's own stateful-loader path, which
    this class also serves, restores too late whenever `configure_optimizers` reads
    `trainer.estimated_stepping_batches`: that creates and iterates the loader before the
    checkpoint's loop states are loaded. Applying the same state twice is harmless.)

    On resume with another world size or worker count the shards are dealt differently, so the
    rest of the interrupted epoch cannot be told apart from what was read: the loader ends that
    epoch at once (with a warning saying how many batches it drops) and the next epoch starts
    on the new topology. No sample is read twice within an epoch; the dropped batches are not
    trained on. With a changed data configuration (fingerprint) the stream continues at the
    same position of the new stream, with a warning.

    Args:
        dataset: the training stream.
        progress: the trainer's (is the batch last handed out the last of Lightning's epoch,
            e.g. with `limit_train_batches`; global step), read when a checkpoint is saved.
        **kwargs: DataLoader arguments.
    """

    def __init__(self, dataset: MixtureStream, *, progress: Callable[[], tuple[bool, int]] | None = None,
                 **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.progress = progress
        self.position = (0, 0)  # (epoch, batches handed out in it)
        self._applied: dict | None = None

    def _topology(self) -> dict:
        stream = self.dataset
        return {"world_size": stream.world_size, "workers": max(self.num_workers, 1)}

    def __iter__(self):
        stream = self.dataset
        epoch = int(stream.epoch.item())
        resume_epoch, consumed = (int(v) for v in stream.resume.tolist())
        self.position = (epoch, consumed if resume_epoch == epoch else 0)
        if resume_epoch != epoch and resume_epoch >= 0:
            stream.resume_at(-1, 0)  # the resumed epoch is over
        for batch in super().__iter__():
            self.position = (epoch, self.position[1] + 1)
            yield batch

    def state_dict(self) -> dict:
        epoch, consumed = self.position
        last, step = self.progress() if self.progress is not None else (False, 0)
        end = bool(last or consumed >= len(self))
        pipeline = self.dataset.augmentation  # the stage the resumed epoch runs in, a function of (epoch, step)
        stage = pipeline.stage_at(epoch + end, step) if pipeline is not None else None
        return {"epoch": epoch, "consumed": consumed, "end_of_epoch": end, "stage": stage, **self._topology(),
                "fingerprint": self.dataset.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if state == self._applied:
            return
        self._applied = dict(state)
        stream = self.dataset
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if state["end_of_epoch"]:
            epoch, consumed = epoch + 1, 0
        saved = {k: state[k] for k in self._topology()}
        if consumed and saved != self._topology():
            log.warning("resume is approximate: the checkpoint's training stream ran on %s, this run on %s, so the "
                        "rest of epoch %d cannot be told apart from what was read; that epoch ends now (its last "
                        "%d batches per rank are dropped, none is repeated) and epoch %d starts on the new "
                        "topology", saved, self._topology(), epoch, max(len(self) - consumed, 0), epoch + 1)
            consumed = len(self)
        elif state["fingerprint"] != stream.fingerprint():
            log.warning("the data configuration (pools, batching, seed, prompt geometry) differs from the "
                        "checkpoint's: the training stream continues at epoch %d, batch %d of the new stream, "
                        "which is not the one the interrupted run read (samples may repeat or be skipped)",
                        epoch, consumed)
        else:
            log.info("resuming the training stream exactly: epoch %d after %d of its %d batches per rank",
                     epoch, consumed, len(self))
        stream.set_epoch(epoch)
        stream.resume_at(epoch, consumed)
        self.position = (epoch, consumed)
        if stream.augmentation is not None and state.get("stage") is not None:
            stream.augmentation.set_stage(int(state["stage"]))  # the scheduler's epoch hook runs too late
