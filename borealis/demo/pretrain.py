"""The demo's ASR pretrain: stage 1's trainable weights, saved where stage 2 starts from them.

What: `save_pretrain(checkpoint, out)` reads a stage-1 checkpoint of the demo
(`borealis fit --config configs/pretrain.yaml --config configs/demo.yaml --config
configs/demo_pretrain.yaml`, `make demo-pretrain`), checks that it holds exactly the trainable
weights of the model its run configured (adapter + LoRA, nothing of the frozen bases), and
writes them to `out/pretrain/model.safetensors` (float32, the dtype they train in), with
`out/pretrain.json` (the run's step, its last validation's WER per benchmark, the tensors and
parameters) and `out/SHA256SUMS` rewritten over the folder (`bases.write_sums`).

Why: the seed's instruction-tuning runs start from its released ASR pretrain
(`AlexWortega/Borealis5b_90k`) through `model.init_from`; the demo's stage 2 (`make demo`) starts
from this folder the same way (`configs/demo.yaml`), so a new user runs the seed's second stage in
minutes, and the first is one command away. A Lightning checkpoint also holds the optimizer's
moments (twice the weights) and the loops' state; the folder keeps only the weights, in safetensors.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from borealis.demo.bases import write_sums

log = logging.getLogger(__name__)


def save_pretrain(checkpoint: Path, out: Path, report: Path | None = None) -> dict:
    """Write `checkpoint`'s trainable weights to `out/pretrain/model.safetensors`, the summary to
    `out/pretrain.json` and `out/SHA256SUMS`; returns the summary.

    Args:
        checkpoint: a stage-1 Lightning checkpoint (`demo/runs_pretrain/checkpoints/last.ckpt`).
        out: the bases folder (`models/demo`): the run's encoder and LLM must be its `whisper`
            and `qwen3`, so the pretrain is always shipped with the bases it was trained on.
        report: the run's `wer.json` (default: `report/wer.json` beside the checkpoints folder), whose
            WER per benchmark goes into the summary if it scored this checkpoint's step; else none.

    Raises:
        FileNotFoundError: the checkpoint or a base folder is missing.
        ValueError: the checkpoint was trained on other bases, or holds other than the trainable
            weights of its run's model (each key named).
    """
    import torch
    from safetensors.torch import save_file

    from borealis.export import build_model, load_checkpoint, model_settings

    saved = load_checkpoint(checkpoint)
    settings = model_settings(saved)
    for part, folder in (("encoder", "whisper"), ("llm", "qwen3")):
        if not (out / folder).is_dir():
            raise FileNotFoundError(f"{out / folder} is missing: {out} must hold the bases the pretrain was trained on")
        if Path(settings[part]).resolve() != (out / folder).resolve():
            raise ValueError(f"{checkpoint} trained on model.{part} {settings[part]}, not {out / folder}: a pretrain "
                             "is saved beside the bases it was trained on")
    if settings.get("init_from"):
        raise ValueError(f"{checkpoint} started from model.init_from {settings['init_from']}: not a stage-1 run")
    build_model(settings, saved)  # raises naming every key that is not one of the model's trainable weights
    state = {k.removeprefix("model."): v for k, v in saved["state_dict"].items()}
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in sorted(state.items())}
    (out / "pretrain").mkdir(parents=True, exist_ok=True)
    save_file(state, out / "pretrain" / "model.safetensors", metadata={"format": "pt"})
    report = report or checkpoint.parent.parent / "report" / "wer.json"
    wer = {}
    if report.is_file():  # the run's last validation, if it scored these weights
        scored = json.loads(report.read_text())
        if scored.get("checkpoint") == f"step-{saved.get('global_step')}":
            wer = {name: round(100 * b["wer"], 2) for name, b in scored["benchmarks"].items()}
        else:
            log.warning("%s scored %s, not this checkpoint (step %s): pretrain.json has no WER", report,
                        scored.get("checkpoint"), saved.get("global_step"))
    summary = {"checkpoint": checkpoint.name, "epoch": saved.get("epoch"), "global_step": saved.get("global_step"),
               "tensors": len(state), "parameters": sum(v.numel() for v in state.values()),
               "wer": wer, "wer_report": str(report) if wer else None}
    (out / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_sums(out)
    log.info("pretrain in %s: %d tensors, %d parameters, step %s; WER %s", out / "pretrain", summary["tensors"],
             summary["parameters"], summary["global_step"], wer)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="borealis demo pretrain", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Save a demo stage-1 run's trainable weights (adapter + LoRA) as the pretrain the demo's "
                    "stage 2 starts from (configs/demo.yaml's model.init_from).")
    p.add_argument("--ckpt", type=Path, default=Path("demo/runs_pretrain/checkpoints/last.ckpt"),
                   help="the stage-1 checkpoint")
    p.add_argument("--out", type=Path, default=Path("models/demo"),
                   help="the bases folder the run trained on: writes pretrain/, pretrain.json, SHA256SUMS")
    p.add_argument("--report", type=Path, default=None,
                   help="the run's wer.json (default: report/wer.json beside the checkpoints folder)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`borealis demo pretrain`: returns the exit status (2 with one message on a bad checkpoint)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        save_pretrain(args.ckpt, args.out, args.report)
    except (FileNotFoundError, ValueError) as err:
        print(f"borealis demo pretrain: {err}")
        return 2
    return 0
