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

Configuration errors come before any weight loads. Unknown keys and wrong types fail in
jsonargparse; then, for every subcommand, `config_problems` checks what can be checked
without the model: the data (`BorealisDataModule.problems` on a copy of the `data:` section,
instantiated on its own: the model's tokenizer is not needed to list shards), the base models'
sources (`model.encoder`/`model.llm` a local folder or a hub id, cached when HF_HUB_OFFLINE is
set; `model.init_from` present) and `--ckpt_path`. Every problem is named by its key in one
`commands.ConfigError`, which `borealis` prints without a traceback (exit code 2). The check
runs in `before_instantiate_classes`, so neither the tokenizer, nor the trainer (a GPU config
on a CPU machine), nor a weight is touched first: ~8 s on the flagship config, all of it
imports and parsing. The DataModule's `setup` runs the same check again (cheap, and it covers
code that builds a DataModule itself); the copy is then dropped, so training reads exactly as
before.

Evaluation runs: `validate`, `test` and `predict` log to a run of their own next to the
training run, never into it: a TensorBoardLogger's (or CSVLogger's) version becomes
`<version>-<subcommand>-<checkpoint stem>-<n>` (`demo-validate-last-1`; without a configured
version, `validate-last-1`), n counting up so that repeated evaluations of one checkpoint keep
separate runs. `EvaluationRun` writes the resolved checkpoint path into that run
(TensorBoard text `run/checkpoint`).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import lightning as L
from jsonargparse import ArgumentParser, Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from borealis.callbacks import AugmentationScheduler
from borealis.checkpointing import AtomicCheckpointIO, Checkpoint
from borealis.commands import ConfigError
from borealis.data import BorealisDataModule
from borealis.module import BorealisLightningModule
from borealis.settings import plain
from borealis.throughput import Throughput

log = logging.getLogger(__name__)

EVALUATIONS = ("validate", "test", "predict")
CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # --ckpt_path values Lightning resolves itself


def data_only(data: Namespace) -> BorealisDataModule:
    """The `data:` section of a parsed config instantiated on its own, without the prompt builder
    the CLI links in from the model (listing shards does not need it)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(BorealisDataModule, "data", skip={"prompt_builder"}, fail_untyped=False,
                               sub_configs=True)
    return parser.instantiate_classes(Namespace(data=data.clone())).data


def _hub_problem(source: str, files: tuple[str, ...], is_repo_id) -> Exception | None:
    """Why `source`, not a local path, cannot load: not a hub id, or HF_HUB_OFFLINE set and none
    of `files` of it in the hub cache. Online, a hub id passes (asking the hub is not free)."""
    from huggingface_hub import is_offline_mode, try_to_load_from_cache

    if not is_repo_id(source):
        return FileNotFoundError(f"{source!r}: no such file or folder (nor a hub id)")
    if is_offline_mode() and not any(isinstance(try_to_load_from_cache(source, f), str) for f in files):
        return FileNotFoundError(f"{source!r} is not a local folder and cannot be loaded offline: HF_HUB_OFFLINE "
                                 f"is set and the hub cache holds no copy of it; give a local folder, or download "
                                 f"it first")
    return None


def _from_pretrained_id(source: str) -> bool:
    """Whether `from_pretrained` would look `source` up on the hub (huggingface_hub's rule)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def model_source_problems(model: Namespace) -> list[tuple[str, Exception]]:
    """`model.encoder`/`model.llm` that `from_pretrained` cannot load (a file; neither a local
    folder nor a hub id; a hub id missing from the cache while offline), and a `model.init_from`
    that `modeling.read_weights` cannot find, by its rules (local path, or hub id's weights)."""
    from borealis.modeling import HUB_WEIGHTS, _is_repo_id

    problems: list[tuple[str, Exception]] = []
    for key in ("encoder", "llm"):
        source = model.get(key)
        if source is None or Path(source).is_dir():
            continue
        if Path(source).exists():
            problems.append((f"model.{key}", ValueError(f"{source!r} is a file; give a model folder or a hub id")))
        elif (err := _hub_problem(source, ("config.json",), _from_pretrained_id)) is not None:
            problems.append((f"model.{key}", err))
    init_from = model.get("init_from")
    if init_from and not Path(init_from).exists() and (err := _hub_problem(init_from, HUB_WEIGHTS, _is_repo_id)):
        problems.append(("model.init_from", err))
    return problems


def config_problems(config: Namespace, stage: str) -> list[tuple[str, Exception]]:
    """What `borealis STAGE` can check before any weight loads, as (key, error): the data first
    (`BorealisDataModule.problems` on `data_only(config.data)`), then the models' sources and
    `ckpt_path`. A constructor's own check of `data:` (e.g. text_ratio without text_pool) is
    reported as it stands, in place of the data problems."""
    try:
        problems = data_only(config.data).problems(stage)
    except ValueError as err:
        problems = [("data", err)]
    problems += model_source_problems(config.model)
    ckpt = config.get("ckpt_path")
    if ckpt and ckpt not in CKPT_KEYWORDS and "://" not in str(ckpt) and not Path(ckpt).is_file():
        problems.append(("ckpt_path", FileNotFoundError(f"{ckpt!r}: no such file")))
    return problems


def evaluation_version(logger: Logger, subcommand: str, ckpt_path: str | None) -> str:
    """The run name of an evaluation: `<configured version>-<subcommand>-<checkpoint stem>-<n>`,
    the first n from 1 whose folder is not there yet."""
    base = logger._version  # as configured: None until the logger picks the next number itself
    prefix = "" if base is None else f"{base}-" if isinstance(base, str) else f"version_{base}-"
    prefix += f"{subcommand}-{Path(ckpt_path).stem if ckpt_path else 'no-checkpoint'}-"
    n = 1
    while (Path(logger.root_dir) / f"{prefix}{n}").exists():
        n += 1
    return f"{prefix}{n}"


class EvaluationRun(L.Callback):
    """Writes the checkpoint an evaluation scores into its run (TensorBoard text `run/checkpoint`)."""

    def __init__(self, subcommand: str) -> None:
        self.subcommand = subcommand

    def _record(self, trainer: L.Trainer) -> None:
        ckpt = trainer.ckpt_path
        what = f"`{Path(ckpt).resolve()}`" if ckpt else "no checkpoint: the model as configured"
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                logger.experiment.add_text("run/checkpoint", f"`borealis {self.subcommand}` scored {what}", 0)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)


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
        """Raise one `ConfigError` for every problem `config_problems` finds, before the model,
        the trainer or a weight is built."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        steps = config.get("save_every_n_steps")
        problems = config_problems(config, self.subcommand) if self.subcommand else []
        if steps is not None and steps < 1:
            problems.append(("save_every_n_steps", ValueError(f"must be >= 1, got {steps}")))
        if problems:
            what = f"the configuration of `borealis {self.subcommand}`" if self.subcommand else "the configuration"
            raise ConfigError.gather(problems, what)
        if steps is not None:
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
            raise ConfigError(f"trainer.callbacks{clash}: a ModelCheckpoint with save_last, but `checkpoint:` keeps "
                             f"last.ckpt already; set save_last: false there (extra top-k checkpoints are fine) or "
                             f"move its options under `checkpoint:` (see `borealis fit --help`)")
        evaluation = self.subcommand if self.subcommand in EVALUATIONS else None
        if evaluation:
            callbacks = [*callbacks, EvaluationRun(evaluation)]
        trainer = super()._instantiate_trainer(config, callbacks)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: no plugin was named
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        for logger in trainer.loggers if evaluation else []:
            if isinstance(logger, (TensorBoardLogger, CSVLogger)):
                # No public setter; the version is read lazily, when the run first logs.
                logger._version = evaluation_version(logger, evaluation, self.config[evaluation].get("ckpt_path"))
        return trainer


def main(args: list[str] | None = None) -> None:
    """`borealis fit|validate|test|predict ARGS` (None: sys.argv); `borealis.commands.main` turns a
    `ConfigError` into a message and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    BorealisCLI(BorealisLightningModule, BorealisDataModule, args=args, save_config_kwargs={"overwrite": True},
                auto_configure_optimizers=False)


if __name__ == "__main__":  # `python -m borealis.cli fit ...`: as `borealis fit ...`, exit codes included
    import sys

    from borealis.commands import main as borealis_main

    sys.exit(borealis_main())
