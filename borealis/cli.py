"""`borealis fit|validate|test|predict`: LightningCLI over BorealisLightningModule + BorealisDataModule.

    borealis fit --config configs/it_fresh.yaml
    borealis fit --config configs/it_fresh.yaml --ckpt_path last   # resume exactly where it stopped
    borealis validate --config configs/demo.yaml --ckpt_path demo/runs/checkpoints/last.ckpt
    borealis predict --config configs/demo.yaml --ckpt_path ...
    borealis fit --help            # every option, from the constructors' docstrings

`borealis.commands` is the `borealis` entry point: it hands these subcommands here and runs
`borealis shards|export|demo` itself, without importing Lightning.

The model's prompt builder (tokenizer + audio token geometry) is linked into the data
module at instantiation, so the two can never disagree about token ids. The augmentation
curriculum's clock (`callbacks.AugmentationScheduler`) is always installed; its options sit
under `augmentation_scheduler:` and it does nothing when `data.augmentation` is null.

Throughput: `throughput.Throughput` is always installed, with its options under
`throughput:`. Every `log_every_n_steps` optimizer steps (`--throughput.window N`) it logs per
device `train/audio_sec_per_sec`, `train/tokens_per_sec`, `train/samples_per_sec`,
`train/padding_ratio`, `train/data_wait_ms`, `train/compute_ms`, `train/data_wait_share`,
`train/tflops_per_sec` and `train/mfu`, and at the end of fit it logs a summary line. MFU
needs the chip's peak: Lightning's table knows H100/H200/A100/L4..., not CPUs; otherwise give
it, e.g. `--throughput.peak_tflops 989` (H100 SXM, bf16).

Checkpoints: `checkpointing.Checkpoint` is always installed, with its options under
`checkpoint:` (`--checkpoint.every_n_train_steps`, `--checkpoint.train_time_interval`, ...;
`trainer.enable_checkpointing: false` turns it off). More ModelCheckpoints in
`trainer.callbacks` (e.g. the top-k by WER) must leave `save_last` to it. Checkpoints are
written by `checkpointing.AtomicCheckpointIO` unless the trainer names its own plugin. With
`--ckpt_path FILE`, LightningCLI reads the model options stored in the checkpoint; here
options given in a config or on the command line win over them, and a warning lists those
that differ (a changed architecture then fails where the weights load, naming the keys).
"""

from __future__ import annotations

import copy
import logging
import os

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from borealis.callbacks import AugmentationScheduler
from borealis.checkpointing import AtomicCheckpointIO, Checkpoint
from borealis.data import BorealisDataModule
from borealis.module import BorealisLightningModule
from borealis.settings import plain
from borealis.throughput import Throughput

log = logging.getLogger(__name__)


class BorealisCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model", "data.prompt_builder", compute_fn=lambda m: m.prompt_builder,
                              apply_on="instantiate")
        # Validation batches are dealt to ranks by data.RankBatches; Lightning must not re-shard them.
        parser.set_defaults({"trainer.use_distributed_sampler": False})
        parser.add_lightning_class_args(AugmentationScheduler, "augmentation_scheduler")
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_argument("--save_every_n_steps", type=int | None, default=None,
                            help="shortcut that overrides --checkpoint.every_n_train_steps: save (and keep last.ckpt) "
                                 "every N optimizer steps; the time-based option is --checkpoint.train_time_interval")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        steps = config.get("save_every_n_steps")
        if steps is not None:
            if steps < 1:
                raise ValueError(f"--save_every_n_steps must be >= 1, got {steps}")
            config["checkpoint"]["every_n_train_steps"] = steps

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's checkpoint-hparams merge, with the user's explicit model options on top.

        An option counts as given when its value differs from the parser's default (a config
        file or the command line set it); the checkpoint fills in the rest.
        """
        sub = self.config.get("subcommand")
        given = copy.deepcopy(self.config[sub].get("model")) if sub else None
        super()._parse_ckpt_path()
        if given is None:
            return
        merged = self.config[sub]["model"]
        defaults = self._parser(sub).get_defaults().get("model")
        differ = []
        for key in vars(given):
            mine, stored = plain(given[key]), plain(merged[key])
            if mine != plain(defaults[key] if defaults is not None and key in defaults else None):
                if mine != stored:
                    differ.append(f"{key}: checkpoint {stored!r}, given {mine!r}")
                merged[key] = given[key]
        if differ:
            log.warning("model options differ from the checkpoint's hyperparameters; the given values win (an "
                        "architecture change fails when the weights load): %s", "; ".join(differ))

    def _instantiate_trainer(self, config: dict, callbacks: list):
        if config.get("enable_checkpointing") is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, Checkpoint)]
        ours = next((cb for cb in callbacks if isinstance(cb, Checkpoint)), None)
        clash = [i for i, cb in enumerate(config.get("callbacks") or [])
                 if isinstance(cb, ModelCheckpoint) and cb.save_last and ours is not None and ours.save_last]
        if clash:  # two writers of last.ckpt
            raise ValueError(f"trainer.callbacks{clash}: a ModelCheckpoint with save_last, but `checkpoint:` keeps "
                             f"last.ckpt already; set save_last: false there (extra top-k checkpoints are fine) or "
                             f"move its options under `checkpoint:` (see `borealis fit --help`)")
        trainer = super()._instantiate_trainer(config, callbacks)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: no plugin was named
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def main(args: list[str] | None = None) -> None:
    """Console entry point; returns nothing, so the exit status is 0 unless a step raised."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    BorealisCLI(BorealisLightningModule, BorealisDataModule, args=args, save_config_kwargs={"overwrite": True},
                auto_configure_optimizers=False)


if __name__ == "__main__":
    main()
