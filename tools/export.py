"""Export a `borealis fit` checkpoint as a Hugging Face model directory (remote code or stock Voxtral).

What:
    python tools/export.py --ckpt runs/it_fresh/checkpoints/last.ckpt --config configs/it_fresh.yaml \\
        --out exports/borealis-5b                                   # LoRA merged, bf16 (the run's base_dtype)
    python tools/export.py --ckpt ... --out exports/borealis-5b-lora --keep-adapter   # LoRA as a peft adapter
    python tools/export.py --ckpt ... --out exports/borealis-5b-voxtral --format voxtral

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

`--config` is the YAML used for training (its `model:` section; repeat it for stacked configs,
`--config configs/demo.yaml --config configs/ablations/demo_no_augment.yaml`); without it the
checkpoint's stored hyper-parameters are used. The base models it names must be reachable
(hub or local folders, relative to the working directory as in training). `--out` must be new
or empty. Exit code: 0 written; 2 bad arguments or a checkpoint that does
not fit (the message says why).

Why: a Lightning checkpoint holds only the trainable weights (LoRA + adapter); serving needs
one self-contained folder. Details and the format contracts: `borealis/export.py`.

Cost: the base models load in float32 for an exact LoRA merge (~21 GB RAM at 5B shapes), then
the weights are written once in `--dtype`; minutes on a CPU for Borealis-5B, ~1 s for the
tiny test models.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout, without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from borealis.export import DTYPES, FORMATS, export  # noqa: E402

log = logging.getLogger("export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\nWhy:")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="Lightning checkpoint written by `borealis fit`")
    parser.add_argument("--config", type=Path, action="append", default=None,
                        help="training YAML (its model: section); repeat for stacked configs as in training "
                             "(later wins); default: the checkpoint's hyper_parameters")
    parser.add_argument("--out", type=Path, required=True, help="new (or empty) output directory")
    parser.add_argument("--format", choices=FORMATS, default="hf",
                        help="hf: remote code, the seed's client API (default); voxtral: stock transformers class")
    parser.add_argument("--keep-adapter", action="store_true",
                        help="hf only: write LoRA as a peft adapter in OUT/lora/ instead of merging it")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights dtype on disk (default: the run's base_dtype)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns 0 when the directory was written, 2 when the inputs do not allow it."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = export(args.ckpt, args.out, config=args.config, format=args.format, keep_adapter=args.keep_adapter,
                     dtype=args.dtype, max_shard_size=args.max_shard_size)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} -> {out} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
