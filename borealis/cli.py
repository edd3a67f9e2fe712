"""The `borealis` command: LightningCLI over BorealisLightningModule + BorealisDataModule.

    borealis fit --config configs/it_fresh.yaml
    borealis validate --config configs/demo.yaml --ckpt_path demo/runs/checkpoints/last.ckpt
    borealis predict --config configs/demo.yaml --ckpt_path ...
    borealis fit --help            # every option, from the constructors' docstrings

The model's prompt builder (tokenizer + audio token geometry) is linked into the data
module at instantiation, so the two can never disagree about token ids. The augmentation
curriculum's clock (`callbacks.AugmentationScheduler`) is always installed; its options sit
under `augmentation_scheduler:` and it does nothing when `data.augmentation` is null.
"""

from __future__ import annotations

import logging
import os

from lightning.pytorch.cli import LightningCLI

from borealis.callbacks import AugmentationScheduler
from borealis.data import BorealisDataModule
from borealis.module import BorealisLightningModule


class BorealisCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model", "data.prompt_builder", compute_fn=lambda m: m.prompt_builder,
                              apply_on="instantiate")
        # Validation batches are dealt to ranks by data.RankBatches; Lightning must not re-shard them.
        parser.set_defaults({"trainer.use_distributed_sampler": False})
        parser.add_lightning_class_args(AugmentationScheduler, "augmentation_scheduler")


def main(args: list[str] | None = None) -> None:
    """Console entry point; returns nothing, so the exit status is 0 unless a step raised."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    BorealisCLI(BorealisLightningModule, BorealisDataModule, args=args, save_config_kwargs={"overwrite": True},
                auto_configure_optimizers=False)


if __name__ == "__main__":
    main()
