"""`borealis ablate`: the seed's ablation grid in one command, and its table beside the seed's figures.

    borealis ablate run --base configs/it_fresh.yaml --overlays configs/ablations/
    borealis ablate run ... --only ru_only,en_only -- --trainer.devices 4   # extra fit/validate options
    borealis ablate run ... --print-jobs > jobs.txt                          # one command per overlay (SLURM)
    borealis ablate report --overlays configs/ablations/ --out runs/ablation
    borealis ablate report --runs runs/ru_only/report ru_alt=runs/x/wer.json --out runs/ablation

`run` (`borealis.ablate.run`) trains and validates each overlay in turn, then `report`
(`borealis.ablate.report`) writes ablation.md, ablation.json and ablation.png. The package
imports neither torch nor Lightning: each run is its own `borealis fit|validate` process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

HELP = """The seed's grid of overlays: train and validate each, then one table + heatmap beside the seed's figures.

run: for each overlay (a folder's *.yaml, by name, or files), one after another:
    borealis fit --config BASE --config OVERLAY [EXTRA]
    borealis validate --config BASE --config OVERLAY [EXTRA] --ckpt_path <the checkpoint fit wrote>
  A run writes under the overlay's trainer.default_root_dir (else ROOT/<overlay name>), its
  checkpoints to checkpoint.dirpath (else <run>/checkpoints) and wer.json to model.report_dir
  (else <run>/report); fit and validate get these folders on the command line. Runs that would
  share a folder, or keep a top-k checkpoint callback's fixed dirpath from the base (the base
  run's folder), are refused before anything starts. A failed run is logged and the next one
  starts; then the report is written (--out, default ROOT/ablation). Output of each fit and
  validate is shown and kept in <run>/ablate-fit.log and <run>/ablate-validate.log (under srun,
  ranks other than 0 write ablate-<stage>.rank<N>.log). Arguments after `--` go to both fit
  and validate.

  For a SLURM array, print one command per overlay, submit one task per line, and collect the
  table once every task has finished:
    borealis ablate run --base configs/it_fresh.yaml --overlays configs/ablations/ --print-jobs > jobs.txt
    sbatch --array=0-$(( $(wc -l < jobs.txt) - 1 )) --nodes=1 --ntasks-per-node=8 --gpus-per-node=8 \\
        --wrap 'srun bash -c "$(sed -n "$((SLURM_ARRAY_TASK_ID+1))p" jobs.txt)"'
    borealis ablate report --overlays configs/ablations/ --out runs/ablation

report: every run's wer.json in one table (rows: runs; columns: benchmarks, Avg, the seed's
  published Avg for runs named like the seed's rows, and the difference), plus the Whisper
  baseline row when wer.json carries it. Writes OUT/ablation.md, OUT/ablation.json (WER as
  fractions, as in wer.json) and OUT/ablation.png (a WER heatmap, runs x benchmarks). A run
  without wer.json is named in the notes and left out.

Exit status: 0 done; 1 a run failed (run) or no run had a wer.json (report); 2 bad arguments.
"""


def parser() -> argparse.ArgumentParser:
    """`borealis ablate`'s options (extra fit/validate arguments come after `--`)."""
    top = argparse.ArgumentParser(prog="borealis ablate", description=HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="fit + validate every overlay, then the report",
                         description="fit + validate every overlay in turn, then the report (see `borealis ablate "
                                     "--help`). Arguments after `--` go to both fit and validate.")
    run.add_argument("--base", type=Path, action="append", required=True,
                     help="the config every overlay is stacked on, e.g. configs/it_fresh.yaml (repeat for several)")
    report = sub.add_parser("report", help="collect wer.json files into ablation.md/.json/.png",
                            description="collect the runs' wer.json into ablation.md, ablation.json and ablation.png")
    report.add_argument("--runs", nargs="+", default=[], metavar="[NAME=]PATH",
                        help="a run's report folder or wer.json; NAME defaults to the folder's name (the folder above "
                             "a folder named `report`)")
    for p in (run, report):
        p.add_argument("--overlays", nargs="+", type=Path, default=[], metavar="PATH",
                       help="overlay folders (their *.yaml) or files; a run is named after its file")
        p.add_argument("--only", type=lambda s: [n for n in s.split(",") if n], default=None, metavar="A,B",
                       help="only these overlays (by name)")
        p.add_argument("--root", type=Path, default=Path("runs"),
                       help="folder of runs whose overlay sets no trainer.default_root_dir (default: runs)")
    run.add_argument("--out", type=Path, default=None, help="report folder (default: ROOT/ablation)")
    report.add_argument("--out", type=Path, required=True, help="report folder")
    run.add_argument("--print-jobs", action="store_true",
                     help="print one shell command per overlay (for a SLURM array) and run nothing")
    run.add_argument("--skip-existing", action="store_true", help="keep runs whose wer.json exists already")
    run.add_argument("--no-report", action="store_true", help="run only; `borealis ablate report` collects later")
    return top


def _run_name(path: Path) -> str:
    folder = path.parent if path.suffix == ".json" else path
    return folder.parent.name if folder.name == "report" and folder.parent.name else folder.name


def _entries(args: argparse.Namespace, extra: Sequence[str] = ()) -> list[tuple[str, Path]]:
    """(name, report folder or wer.json) of every run the arguments name."""
    from borealis.ablate.run import find_overlays, plan

    entries = []
    if args.overlays:
        runs = plan(find_overlays(args.overlays, args.only), extra, args.root)
        entries += [(r.name, r.report) for r in runs]
    for item in getattr(args, "runs", []):
        name, sep, path = item.partition("=")
        path = Path(path) if sep else Path(item)
        entries.append((name if sep else _run_name(path), path))
    names = [n for n, _ in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several runs are named {', '.join(duplicates)}: name them with NAME=PATH")
    if not entries:
        raise ValueError("no runs: give --overlays and/or --runs")
    return entries


def report_main(entries: Sequence[tuple[str, Path]], out: Path, failed: dict[str, str] | None = None) -> int:
    """Write the report of `entries`; 0 when written, 1 when no run had a readable wer.json."""
    from borealis.ablate.report import collect, markdown, write

    grid = collect(entries, failed)
    for s in grid.skipped:
        log.warning("not in the report: %s: %s %s", s["name"], s["reason"], s["path"])
    try:
        paths = write(grid, out)
    except ValueError as err:
        print(f"ablate report: error: {err}", file=sys.stderr)
        return 1
    print(markdown(grid))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`borealis ablate run|report ...`; returns the exit status (see HELP)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from borealis.ablate.run import find_overlays, job_lines, plan, run_grid

    try:
        if args.command == "report":
            return report_main(_entries(args), args.out)
        missing = [str(b) for b in args.base if not b.is_file()]
        if missing:
            raise ValueError(f"--base {', '.join(missing)}: no such file")
        if not args.overlays:
            raise ValueError("--overlays: give an overlay folder or files")
        runs = plan(find_overlays(args.overlays, args.only), extra, args.root, args.base)
    except ValueError as err:
        print(f"ablate {args.command}: error: {err}", file=sys.stderr)
        return 2
    if args.print_jobs:
        print("\n".join(job_lines(args.base, runs, extra, args.root)))
        return 0
    outcomes = run_grid(runs, args.base, extra, skip_existing=args.skip_existing)
    failed = {o.name: f"run failed: {o.detail}" for o in outcomes if not o.ok}
    log.info("ablation grid: %d of %d runs done%s", len(runs) - len(failed), len(runs),
             "; failed: " + ", ".join(failed) if failed else "")
    status = 1 if failed else 0
    if not args.no_report:
        ok = [(r.name, r.report) for r, o in zip(runs, outcomes) if o.ok]
        status = max(status, report_main(ok, args.out or args.root / "ablation", failed))
    return status
