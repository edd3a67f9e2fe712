"""Validation speed: RTFx of `borealis validate`, batched (the config's `val_batching`) vs one by one.

What:
    python tools/bench_validate.py --config configs/demo.yaml --ckpt_path demo/runs/checkpoints/last.ckpt
    python tools/bench_validate.py ... --limit 50 --json out.json   # 50 samples per benchmark: a quick run
    python tools/bench_validate.py ... --repeats 5                  # 5 alternating rounds (default 3)
    python tools/bench_validate.py ... -- --data.num_workers 2      # more `borealis validate` options after --

Builds the real CLI objects once (`BorealisCLI(run=False)`: model, DataModule, Trainer) and
validates the config's benchmarks twice in this process with `Trainer.validate` on the
checkpoint: batched, with `data.val_batching` (duration-sorted batches, greedy generation with
the KV cache), and one by one (batch_size 1, the baseline). The speed figures are the
module's own, as every `borealis validate` writes them to wer.json: per benchmark and overall,
samples, audio seconds, wall seconds of generation and RTFx = audio seconds / wall seconds.
It prints them for both modes with the ratio batched / one by one, where the time went (log-mel,
encoder + adapter, shared prompt prefix, the LLM's generate, other), and each mode's WER with
the number of hypotheses that differ (greedy decoding: batching changes only the padding, so
a few may flip through float rounding, no more). `--warmup N` first runs N untimed batches
per benchmark, so one-time costs (thread pools, allocator) fall on neither mode. `--repeats N`
runs N rounds of (batched, one by one), alternating so that a drift in the machine's speed
(a shared VM's varies by ~20% over minutes) falls on both modes; each mode's figures are those
of its median round by wall time (the faster middle one for an even N), and the ratio of
each round is printed as well.

The model options come from the config(s) (later wins), not from the checkpoint's stored
hyper-parameters: give the config the checkpoint was trained with (a mismatched architecture
fails when the weights load, naming the keys).

Why: validation speed is a target, measured: RTFx and its ratio against one-by-one
generation, target >= 4x. Wall time is the figure, so note what else runs on the machine
(the load average before and after is printed and written).

Cost: one model load and two passes over the benchmarks per round; the demo (450 clips, 553 s
of audio) takes ~12 s a round on 2 CPU cores, most of it one by one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


import lightning as L
import torch

import borealis
from borealis.cli import BorealisCLI
from borealis.data import Batching, BorealisDataModule
from borealis.metrics import average_wer
from borealis.module import BorealisLightningModule

MODES = ("batched", "single")


class Hypotheses(L.Callback):
    """Collects each real row's hypothesis, by (benchmark index, key), from `validation_step`'s output."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, str], str] = {}
        self.repeated = 0  # rows scored more than once: must stay 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        for key, hyp in zip(outputs["keys"], outputs["hypotheses"], strict=True):
            self.repeated += (dataloader_idx, key) in self.rows
            self.rows[(dataloader_idx, key)] = hyp


class Phases(L.Callback):
    """Wall seconds of validation per phase, timed at Borealis's own boundaries: the log-mel, the
    encoder + adapter, the shared prompt prefix, and the LLM's `generate` (the rest of the prefill
    and the decoding). `other` (filled in by the caller) is the rest: data loading, scoring, the
    loop. The model's methods are wrapped on the instance for the pass and restored after it; on a
    GPU each timer synchronises the device, so the phases add up to the wall time."""

    METHODS = (("log-mel", "log_mel"), ("encoder+adapter", "encode_audio"), ("shared prefix", "_prefill_shared_prefix"))

    def __init__(self) -> None:
        self.seconds = dict.fromkeys([name for name, _ in self.METHODS] + ["llm generate"], 0.0)
        self._wrapped: list[tuple[object, str]] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        sync = torch.cuda.synchronize if pl_module.device.type == "cuda" else (lambda: None)
        model = pl_module.model
        for obj, attr, name in [*((model, attr, name) for name, attr in self.METHODS),
                                (model.llm, "generate", "llm generate")]:
            setattr(obj, attr, self._timed(getattr(obj, attr), name, sync))
            self._wrapped.append((obj, attr))

    def _timed(self, method, name: str, sync):
        def timed(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                sync()
                self.seconds[name] += time.perf_counter() - start
        return timed

    def on_validation_end(self, trainer, pl_module) -> None:
        for obj, attr in self._wrapped:
            delattr(obj, attr)  # the class's method again
        self._wrapped.clear()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.on_validation_end(trainer, pl_module)  # a failed pass leaves no wrapped methods behind


def build_cli(configs: Sequence[Path], extra: Sequence[str]) -> BorealisCLI:
    """The model, DataModule and Trainer that `borealis validate --config ...` would build (no logger;
    no Whisper baseline row, whose generation would count in the timed rounds' wall time)."""
    args = [*(a for c in configs for a in ("--config", str(c))), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--model.whisper_baseline", "false", *extra]
    return BorealisCLI(BorealisLightningModule, BorealisDataModule, run=False, args=args, save_config_callback=None,
                       auto_configure_optimizers=False)


def limit_benchmarks(datamodule: BorealisDataModule, limit: int | None) -> None:
    """Index the benchmarks now and keep only the first `limit` samples of each (shard order)."""
    datamodule.setup("validate")
    if limit is None:
        return
    for ds in datamodule.benchmarks.values():
        ds.refs, ds.durations = ds.refs[:limit], ds.durations[:limit]


def validate(cli: BorealisCLI, ckpt: Path, batching: Batching, report_dir: Path, *,
             max_batches: int | None = None) -> tuple[dict, Hypotheses, float, dict[str, float]]:
    """One `Trainer.validate` pass with `batching`; returns (its wer.json, hypotheses, outer wall
    seconds, seconds per phase)."""
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    dm.val_batching, model.hparams.report_dir = batching, str(report_dir)
    hyps, phases = Hypotheses(), Phases()
    trainer.callbacks += [hyps, phases]
    limit, trainer.limit_val_batches = trainer.limit_val_batches, max_batches or trainer.limit_val_batches
    start = time.perf_counter()
    try:
        trainer.validate(model, datamodule=dm, ckpt_path=str(ckpt), verbose=False)
    finally:
        trainer.callbacks.remove(hyps)
        trainer.callbacks.remove(phases)
        trainer.limit_val_batches = limit
    report = json.loads((report_dir / "wer.json").read_text())
    seconds = {**phases.seconds, "other": report["seconds"] - sum(phases.seconds.values())}
    return report, hyps, time.perf_counter() - start, seconds


def compare(reports: dict[str, dict], hyps: dict[str, Hypotheses], names: list[str]) -> dict:
    """Per benchmark and overall: samples, audio seconds, each mode's figures, ratio, differing hypotheses."""
    batched, single = (reports[m] for m in MODES)
    out: dict = {"benchmarks": {}}
    for i, name in enumerate(names):
        b, s = batched["benchmarks"][name], single["benchmarks"][name]
        if (b["samples"], b["audio_seconds"]) != (s["samples"], s["audio_seconds"]):
            raise RuntimeError(f"{name}: the modes scored different data: {b['samples']} samples, "
                               f"{b['audio_seconds']} s batched vs {s['samples']}, {s['audio_seconds']} s one by one")
        keys = {k for (j, k) in hyps["batched"].rows if j == i}
        differ = sum(hyps["batched"].rows[(i, k)] != hyps["single"].rows.get((i, k)) for k in keys)
        out["benchmarks"][name] = {
            "samples": b["samples"], "audio_seconds": b["audio_seconds"], "hypotheses": len(keys), "differ": differ,
            **{m: {k: reports[m]["benchmarks"][name][k] for k in ("seconds", "rtfx", "wer", "errors", "words")}
               for m in MODES},
            "ratio": b["rtfx"] / s["rtfx"]}
    rows = out["benchmarks"].values()
    out["overall"] = {
        "samples": sum(r["samples"] for r in rows), "audio_seconds": batched["audio_seconds"],
        "hypotheses": sum(r["hypotheses"] for r in rows), "differ": sum(r["differ"] for r in rows),
        **{m: {"seconds": reports[m]["seconds"], "rtfx": reports[m]["rtfx"],
               "wer_avg": average_wer({n: reports[m]["benchmarks"][n]["wer"] for n in names})} for m in MODES},
        "ratio": batched["rtfx"] / single["rtfx"]}
    return out


def _describe(batching: Batching) -> str:
    for name in ("batch_size", "max_seconds_per_batch", "max_tokens_per_batch"):
        if getattr(batching, name):
            return f"{name} {getattr(batching, name)}"
    return str(batching)


def print_table(result: dict) -> None:
    print(f"{'benchmark':<16} {'samples':>7} {'audio s':>8} | {'batched s':>9} {'RTFx':>7} {'WER %':>6} | "
          f"{'1-by-1 s':>9} {'RTFx':>7} {'WER %':>6} | {'ratio':>6} {'differ':>6}")
    rows = [*result["benchmarks"].items(), ("overall", result["overall"])]
    for name, r in rows:
        wer = "wer" if name != "overall" else "wer_avg"
        cells = [f"{r[m]['seconds']:>9.2f} {r[m]['rtfx']:>7.1f} {100 * r[m][wer]:>6.2f}" for m in MODES]
        print(f"{name:<16} {r['samples']:>7} {r['audio_seconds']:>8.1f} | {cells[0]} | {cells[1]} | "
              f"{r['ratio']:>5.2f}x {r['differ']:>6}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", required=True,
                        help="the run's config(s), as for borealis validate (repeat to stack; later wins)")
    parser.add_argument("--ckpt_path", type=Path, required=True, help="the checkpoint to validate")
    parser.add_argument("--limit", type=int, default=None, help="first N samples of each benchmark (quick run)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per benchmark before measuring")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of (batched, one by one); each mode reports its median round")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("extra", nargs="*", help="more `borealis validate` options, after `--` (e.g. -- "
                                                 "--data.num_workers 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    missing = [f"--config {c}" for c in args.config if not c.is_file()]
    missing += [f"--ckpt_path {args.ckpt_path}"] if not args.ckpt_path.is_file() else []
    bad = [f"--{k} must be >= {low}, got {v}" for k, v, low in
           (("limit", args.limit, 1), ("warmup", args.warmup, 0), ("repeats", args.repeats, 1))
           if v is not None and v < low]
    if missing or bad:
        print("bench_validate: error: " + "; ".join([*(f"not found: {m}" for m in missing), *bad]), file=sys.stderr)
        return 2
    print(f"borealis from {Path(borealis.__file__).parent}; load average {os.getloadavg()[0]:.2f}")
    load_before = os.getloadavg()
    cli = build_cli(args.config, args.extra)
    limit_benchmarks(cli.datamodule, args.limit)
    names = list(cli.datamodule.val_sets)
    modes = {"batched": cli.datamodule.val_batching, "single": Batching(batch_size=1)}
    rounds: dict[str, list] = {m: [] for m in MODES}  # (wer.json, hypotheses, outer seconds, phases) per round
    with tempfile.TemporaryDirectory(prefix="bench_validate_") as tmp:
        if args.warmup:
            validate(cli, args.ckpt_path, modes["batched"], Path(tmp) / "warmup", max_batches=args.warmup)
        for r in range(args.repeats):
            for mode, batching in modes.items():
                rounds[mode].append(validate(cli, args.ckpt_path, batching, Path(tmp) / f"{mode}_{r}"))
    for mode in MODES:
        for _, hyp, _, _ in rounds[mode]:
            if hyp.repeated:
                raise RuntimeError(f"{mode}: {hyp.repeated} rows were scored more than once")
    median = {m: sorted(rounds[m], key=lambda run: run[0]["seconds"])[(args.repeats - 1) // 2] for m in MODES}
    reports, hyps, outer, phases = ({m: median[m][i] for m in MODES} for i in range(4))
    result = {"config": [str(c) for c in args.config], "ckpt_path": str(args.ckpt_path), "limit": args.limit,
              "warmup": args.warmup, "repeats": args.repeats, "batching": {m: _describe(b) for m, b in modes.items()},
              "validate_seconds": outer, "phases": phases, "load_average": {"before": load_before, "after": os.getloadavg()},
              "rounds": {"seconds": {m: [run[0]["seconds"] for run in rounds[m]] for m in MODES},
                         "ratio": [s[0]["seconds"] / b[0]["seconds"] for b, s in zip(rounds["batched"], rounds["single"])],
                         # hypotheses that change between a mode's rounds (greedy decoding: 0 where deterministic)
                         "unstable": {m: sum(run[1].rows.get(key) != first for run in rounds[m][1:]
                                             for key, first in rounds[m][0][1].rows.items()) for m in MODES}},
              **compare(reports, hyps, names)}
    print_table(result)
    o = result["overall"]
    print(f"rounds (batched / one by one, alternating): ratio "
          f"{', '.join(f'{x:.2f}x' for x in result['rounds']['ratio'])}; the table shows each mode's median round"
          + "".join(f"; {m}: {n} hypotheses changed between rounds" for m, n in result["rounds"]["unstable"].items() if n))
    for mode in MODES:
        print(f"{mode} seconds by phase: " + ", ".join(f"{k} {v:.2f}" for k, v in phases[mode].items()))
    print(f"load average (1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in load_before)}; "
          f"after {', '.join(f'{x:.2f}' for x in result['load_average']['after'])}")
    print(f"bench_validate: RTFx {o['batched']['rtfx']:.1f} batched ({result['batching']['batched']}) vs "
          f"{o['single']['rtfx']:.1f} one by one: {o['ratio']:.2f}x (target >= 4x); WER avg "
          f"{100 * o['batched']['wer_avg']:.2f}% vs {100 * o['single']['wer_avg']:.2f}%, {o['differ']} of "
          f"{o['hypotheses']} hypotheses differ")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
