"""The `borealis` command: one entry point for training and for the tools users run.

    borealis fit|validate|test|predict ...   train and evaluate (LightningCLI, `borealis.cli`)
    borealis shards build|inspect ...        build and check shard pools (`borealis.shards.cli`)
    borealis export ...                      a Hugging Face directory from a `borealis fit` checkpoint
    borealis demo ...                        the demo corpus, tiny pretrained bases, its stage-1 pretrain (`borealis.demo`)
    borealis ablate run|report ...           the seed's grid of overlays, one table + heatmap (`borealis.ablate`)
    borealis tune-batch --config ...         the largest packed token budget that fits a GPU (`borealis.tune_batch`)

Why: the first word picks the command before LightningCLI sees the arguments, and each
command imports what it needs only when it runs, so `borealis shards --help` answers in a
fraction of a second instead of waiting for torch, transformers and Lightning (~5 s).

Exit codes: 0 done; 2 a configuration the user must fix: unknown keys and wrong types
(jsonargparse), a missing config file, and `ConfigError` (data that is not there, a base
model that cannot be loaded, ...). Those print one message and no traceback, as `--help`-style
tools do; any other exception keeps its traceback, because it is a bug or a failure of the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

LIGHTNING = ("fit", "validate", "test", "predict")


class ConfigError(ValueError):
    """A configuration the user must fix; `borealis` prints the message and exits with code 2.

    `gather` builds one from every problem found, each named by its config key. It lives in
    this module, which imports nothing heavy, so that any module can raise it.
    """

    @staticmethod
    def gather(problems: Sequence[tuple[str, Exception]], what: str) -> ConfigError:
        """One error listing each (key, problem) as `  - key: problem`; a `MissingPathError` when
        every problem is a missing file or folder (a FileNotFoundError too)."""
        kind = MissingPathError if all(isinstance(e, FileNotFoundError) for _, e in problems) else ConfigError
        lines = "".join(f"\n  - {key}: {err}" for key, err in problems)
        return kind(f"{len(problems)} problem(s) with {what}:{lines}")


class MissingPathError(ConfigError, FileNotFoundError):
    """A `ConfigError` whose every problem is a file or folder that is not there."""


USAGE = """\
usage: borealis {fit,validate,test,predict,shards,export,demo,ablate,tune-batch} ...

Train audio-language models and prepare their data.

commands:
  fit         train (LightningCLI; `borealis fit --help` lists every option)
  validate    WER per benchmark plus the average, as a table, JSON and a plot
  test        run the test loop of LightningCLI
  predict     transcripts or answers as JSONL
  shards      build shard pools from corpora (`shards build`), list and verify them (`shards inspect`)
  export      write a Hugging Face model directory from a checkpoint
  demo        build the demo corpus, the tiny pretrained bases it trains on, and save its stage-1 pretrain
  ablate      run the grid of overlays (fit + validate each), then one WER table + heatmap beside the seed's
  tune-batch  the largest packed token budget per GPU that trains without running out of memory

`borealis COMMAND --help` describes a command's options.
"""

EXPORT_HELP = """Export a `borealis fit` checkpoint as a Hugging Face model directory (remote code or stock Voxtral).

What:
    borealis export --ckpt runs/it_fresh/checkpoints/last.ckpt --config configs/it_fresh.yaml \\
        --out exports/borealis-5b                                   # LoRA merged, bf16 (the run's base_dtype)
    borealis export --ckpt ... --out exports/borealis-5b-lora --keep-adapter   # LoRA as a peft adapter
    borealis export --ckpt ... --out exports/borealis-5b-voxtral --format voxtral

The `hf` directory is used from plain transformers, without borealis installed (DESIGN.md,
"The client interface exported models must serve"):

    model = AutoModel.from_pretrained("exports/borealis-5b", trust_remote_code=True, device="cuda")
    ids = model.generate(audio=wave_16k, user_prompt="What is this audio about? <|start_of_audio|><|end_of_audio|>",
                         system_prompt="You are a helpful voice assistant.", max_new_tokens=256)
    print(model.decode(ids[0]))

The `voxtral` directory loads with `VoxtralForConditionalGeneration.from_pretrained` (no remote
code). It takes `input_ids` holding `<|start_of_audio|>` + 375 `<|AUDIO|>` + `<|end_of_audio|>`
per 30 s clip in Borealis' ChatML prompt, and `input_features` from the directory's
`WhisperFeatureExtractor`; Voxtral's own processor expects a Mistral tokenizer and does not
apply. Only models trained with `trim_audio_tokens: false` and the simple adapter map onto
Voxtral; for others the export stops and says what differs.

Both formats get a model card, OUT/README.md: what the model is, the pinned `pip install` line,
a snippet that runs as printed (audio read with soundfile, resampled with torchaudio) and, with
`--wer runs/<run>/wer.json` (written by `borealis validate` on the same checkpoint), the WER table.

`--config` is the YAML used for training (its `model:` section; repeat it for stacked configs,
`--config configs/demo.yaml --config configs/variants/demo_no_augment.yaml`); without it the
checkpoint's stored hyper-parameters are used. The base models it names must be reachable
(hub or local folders, relative to the working directory as in training). `--out` must be new
or empty. Exit code: 0 written; 2 bad arguments or a checkpoint that does
not fit (the message says why).
"""


def export_parser() -> argparse.ArgumentParser:
    """`borealis export`'s options."""
    from borealis.export import DTYPES, FORMATS  # imports torch and transformers

    parser = argparse.ArgumentParser(prog="borealis export", description=EXPORT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="Lightning checkpoint written by `borealis fit`")
    parser.add_argument("--config", type=Path, action="append", default=None,
                        help="training YAML (its model: section); repeat for stacked configs as in training "
                             "(later wins); default: the checkpoint's hyper_parameters")
    parser.add_argument("--out", type=Path, required=True, help="new (or empty) output directory")
    parser.add_argument("--format", choices=FORMATS, default="hf",
                        help="hf: remote code, the reference client API (default); voxtral: stock transformers class")
    parser.add_argument("--keep-adapter", action="store_true",
                        help="hf only: write LoRA as a peft adapter in OUT/lora/ instead of merging it")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights dtype on disk (default: the run's base_dtype)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument("--wer", type=Path, default=None,
                        help="wer.json written by `borealis validate` on this checkpoint: its WER table goes into "
                             "the model card (OUT/README.md)")
    return parser


def export_main(argv: Sequence[str]) -> int:
    """`borealis export ...`; returns 0 when the directory was written, 2 when the inputs do not allow it."""
    args = export_parser().parse_args(argv)
    from borealis.export import export

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = export(args.ckpt, args.out, config=args.config, format=args.format, keep_adapter=args.keep_adapter,
                     dtype=args.dtype, max_shard_size=args.max_shard_size, wer=args.wer)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} -> {out} ({args.format})")
    return 0


def _demo(argv: Sequence[str]) -> int:
    from borealis.demo import main as demo_main  # the demo builder imports torch and transformers

    return demo_main(list(argv))


def _shards(argv: Sequence[str]) -> int:
    from borealis.shards.cli import main as shards_main

    return shards_main(argv)


def _ablate(argv: Sequence[str]) -> int:
    from borealis.ablate import main as ablate_main  # runs fit/validate as subprocesses

    return ablate_main(argv)


def _tune_batch(argv: Sequence[str]) -> int:
    from borealis.tune_batch import main as tune_main  # builds the model on the GPU

    return tune_main(argv)


COMMANDS = {"shards": _shards, "export": export_main, "demo": _demo, "ablate": _ablate, "tune-batch": _tune_batch}


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point; returns the exit status."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    if argv[0] in LIGHTNING or argv[0].startswith("-"):
        from borealis.cli import main as lightning_main

        try:  # LightningCLI reads sys.argv itself (given both, it warns)
            lightning_main(None if from_command_line else argv)
        except ConfigError as err:
            print(f"borealis{f' {argv[0]}' if argv[0] in LIGHTNING else ''}: error: {err}", file=sys.stderr)
            return 2
        return 0
    print(USAGE, file=sys.stderr)
    print(f"borealis: error: unknown command {argv[0]!r} (choose from {', '.join([*LIGHTNING, *COMMANDS])})",
          file=sys.stderr)
    return 2


if __name__ == "__main__":  # `python -m borealis.commands`: this module's classes, as `borealis.cli` raises them
    from borealis.commands import main as entry

    sys.exit(entry())
