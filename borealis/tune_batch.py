"""`borealis tune-batch`: the largest packed token budget per GPU that trains, with a margin.

    borealis tune-batch --config configs/it_fresh.yaml [--config overlay.yaml] [--margin 0.1]

What: builds the config's model on the GPU and runs real training steps (forward, backward,
the same loss as `fit`, under the config's precision and activation checkpointing) on
worst-case packed batches: every row of `data.batching.max_tokens_per_row` tokens filled with
`data.max_seconds` clips (the most encoder work and audio slots per token). It grows the
budget by doubling from one row until a step runs out of memory (or `--max-budget`), then
bisects in whole rows; it prints the largest budget that fit and that budget less `--margin`
(rounded down to whole rows), the value for `data.batching.max_tokens_per_batch`.

Why: memory is a knob, not a crash. The peak depends on the card, the model, the precision,
checkpointing and the allocator; measuring it beats estimating it. The search is
`search_budget`, a pure function of a `fits(budget)` predicate, tested on the CPU against a
simulated memory limit (tests/test_tune_batch.py). Cost: one model build plus ~2 log2(budget
/ row) steps, each at most a few seconds at flagship shapes.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)


def search_budget(fits: Callable[[int], bool], *, step: int, limit: int) -> int:
    """The largest multiple of `step` up to `limit` for which `fits` holds, assuming it holds
    below some threshold and fails above it; 0 when even `step` fails.

    Doubling from `step` brackets the threshold, then bisection (in whole steps) closes it:
    about 2 log2(limit / step) calls of `fits`.
    """
    if step < 1 or limit < step:
        raise ValueError(f"need 1 <= step <= limit, got step {step}, limit {limit}")
    if not fits(step):
        return 0
    good, bad = 1, None  # in units of `step`
    top = limit // step
    while bad is None:
        nxt = min(good * 2, top)
        if nxt == good:
            return good * step
        if fits(nxt * step):
            good = nxt
        else:
            bad = nxt
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid * step):
            good = mid
        else:
            bad = mid
    return good * step


def with_margin(budget: int, margin: float, step: int) -> int:
    """`budget` less `margin` (a fraction), rounded down to a multiple of `step` (at least one)."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"--margin must be in [0, 1), got {margin}")
    return max(step, int(budget * (1.0 - margin)) // step * step)


def worst_case_batch(prompts, rows: int, row_tokens: int, seconds: float, answer_words: int = 60) -> dict:
    """A packed batch of `rows` rows, each filled with as many `seconds`-long ASR samples as fit."""
    import numpy as np

    from borealis.data.batching import collate
    from borealis.prompts import AUDIO_PLACEHOLDER
    from borealis.shards import SAMPLE_RATE

    n = int(seconds * SAMPLE_RATE)
    chat = [{"role": "user", "content": f"Transcribe the audio. {AUDIO_PLACEHOLDER}"},
            {"role": "assistant", "content": " ".join(["one two three"] * (answer_words // 3))}]
    enc = prompts.encode(chat, num_samples=n)
    per_row = max(1, row_tokens // len(enc.input_ids))
    audio = (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    items = [{"key": f"worst-{r}-{i}", "input_ids": enc.input_ids, "labels": enc.labels, "num_samples": n,
              "audio": audio, "row": r} for r in range(rows) for i in range(per_row)]
    return collate(items, prompts.pad_token_id)


def training_step_fits(module, batch: dict, precision: str) -> bool:
    """One forward + backward of `module`'s training loss on `batch`; False on out-of-memory."""
    device = next(module.model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in module._model_inputs(batch).items()}
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision.split("-")[0])
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None and precision.endswith("-mixed")):
            loss = module.model.loss(**inputs, reduction="sum", chunk_tokens=module.hparams.loss_chunk_tokens)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        module.model.zero_grad(set_to_none=True)
        inputs = loss = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="borealis tune-batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="fit config(s), later ones overlaying")
    parser.add_argument("--margin", type=float, default=0.1, help="fraction kept free below the largest fit")
    parser.add_argument("--max-budget", type=int, default=262_144, help="largest token budget tried")
    parser.add_argument("--device", default="cuda", help="device to measure on (cuda, cuda:N)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from borealis.cli import BorealisCLI
    from borealis.data import BorealisDataModule
    from borealis.module import BorealisLightningModule

    cli = BorealisCLI(BorealisLightningModule, BorealisDataModule, run=False, auto_configure_optimizers=False,
                      args=[x for c in args.config for x in ("--config", c)] + ["--trainer.devices", "1",
                                                                                 "--trainer.logger", "false"])
    batching = cli.datamodule.batching
    if not batching.pack:
        print("borealis tune-batch: error: data.batching.pack must be true (the search is over packed token "
              "budgets, in whole rows of max_tokens_per_row)", file=sys.stderr)
        return 2
    module, device = cli.model, torch.device(args.device)
    module._trainer = cli.trainer  # configure_model reads the precision and the strategy
    with device:
        module.configure_model()
    module.model.to(device).train()
    row = batching.max_tokens_per_row
    precision = str(cli.trainer.precision)

    def fits(budget: int) -> bool:
        ok = training_step_fits(module, worst_case_batch(module.prompt_builder, budget // row, row,
                                                         cli.datamodule.max_seconds), precision)
        log.info("budget %d tokens (%d rows): %s", budget, budget // row, "fits" if ok else "out of memory")
        return ok

    largest = search_budget(fits, step=row, limit=args.max_budget)
    if largest == 0:
        print(f"borealis tune-batch: error: one row of {row} tokens does not fit on {args.device}; lower "
              f"data.batching.max_tokens_per_row or turn on model.activation_checkpointing", file=sys.stderr)
        return 1
    tuned = with_margin(largest, args.margin, row)
    print(f"largest budget that fits: {largest} tokens ({largest // row} rows of {row}); with a {args.margin:.0%} "
          f"margin: data.batching.max_tokens_per_batch: {tuned}")
    return 0
