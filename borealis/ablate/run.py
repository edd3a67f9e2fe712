"""`borealis ablate run`: the seed's grid of overlays, each trained and validated in turn.

What: for every overlay (a YAML in `configs/ablations/`, stacked on a base such as
`configs/it_fresh.yaml`), `borealis fit --config BASE --config OVERLAY ...`, then
`borealis validate` on the checkpoint that fit wrote, so each run's wer.json lands in its
own report folder. One run's failure is logged and the next run starts; `--print-jobs`
writes one shell command per overlay instead, for a SLURM array.
Where a run writes: the overlay's own `trainer.default_root_dir` (else `<root>/<overlay
name>`), `checkpoint.dirpath` (else `<run>/checkpoints`) and `model.report_dir` (else
`<run>/report`), or the same keys among the extra arguments. They are passed to fit and
validate explicitly, so the checkpoint and wer.json are found where they were written. Two
runs that would share a folder, or a run whose top-k checkpoint callback (`trainer.callbacks`)
keeps the base's fixed folder, are refused before anything starts: the base's folders would
be overwritten run after run.
Why: the seed's table is a grid of runs that differ in one thing each; running them by hand
is where folders get mixed up and failures go unnoticed.
Cost: the runs themselves, one after another; each fit and validate is its own process (a
crash or out-of-memory in one cannot take the others down), with its output shown and kept
in `<run>/ablate-fit.log` and `<run>/ablate-validate.log` (under `srun`, ranks other than 0
keep `ablate-<stage>.rank<N>.log`).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Run:
    """One overlay of the grid and the folders its fit and validate write to."""

    name: str  # the overlay's file name without .yaml, e.g. ru_only (matched to the seed's rows)
    overlay: Path
    root: Path  # trainer.default_root_dir
    checkpoints: Path  # checkpoint.dirpath
    report: Path  # model.report_dir: wer.json goes here

    @property
    def wer_json(self) -> Path:
        return self.report / "wer.json"

    def location_args(self) -> list[str]:
        return ["--trainer.default_root_dir", str(self.root), "--checkpoint.dirpath", str(self.checkpoints),
                "--model.report_dir", str(self.report)]


@dataclass
class Outcome:
    """How a run ended: ok, or the stage that failed and why."""

    name: str
    ok: bool
    detail: str  # ok: the wer.json written; else what failed
    seconds: float = 0.0


def find_overlays(paths: Sequence[str | Path], only: Sequence[str] | None = None) -> list[Path]:
    """The overlay YAMLs in `paths` (folders: their *.yaml/*.yml, by name; files as given), or the
    `only` ones among them. ValueError lists every problem (missing paths, duplicate or unknown names)."""
    problems, found = [], []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))
            if not files:
                problems.append(f"--overlays {path}: no *.yaml in this folder")
            found += files
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"--overlays {path}: no such file or folder")
    names = [p.stem for p in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"overlays with the same name (a run is named after its file): {', '.join(duplicates)}")
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            problems.append(f"--only {','.join(unknown)}: no such overlay (choose from {', '.join(names) or 'none'})")
        found = [p for p in found if p.stem in only]
    if problems:
        raise ValueError("\n".join(problems))
    return found


def _load(path: Path) -> dict:
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not YAML ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a mapping of options, got {type(config).__name__}")
    return config


def _get(config: dict, key: str):
    """`config["a"]["b"]` for key `a.b`, or None."""
    for part in key.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


def _option(args: Sequence[str], key: str) -> str | None:
    """The last value given for `--key` in command-line `args` (`--key V` or `--key=V`), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == f"--{key}" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return value


def _where(config: dict, extra: Sequence[str], key: str, default: Path) -> Path:
    """A run's folder: `--key` among the extra arguments, else the overlay's `key`, else `default`."""
    return Path(_option(extra, key) or _get(config, key) or default)


def plan(overlays: Sequence[Path], extra: Sequence[str] = (), root: str | Path = "runs",
         base: Sequence[Path] = ()) -> list[Run]:
    """The runs of `overlays`, with their folders (see the module docstring).

    ValueError, listing every problem, when two runs would write to the same checkpoint or
    report folder, or when a checkpoint callback in `trainer.callbacks` with a fixed `dirpath`
    is shared: either inherited from the base (the base run's folder) or named by two overlays.
    The check is skipped when the extra arguments set `--trainer.callbacks`.
    """
    runs, problems, callback_dirs = [], [], {}
    base_callbacks = None  # the last base that sets trainer.callbacks wins, as when the configs merge
    for config in map(_load, base):
        if _get(config, "trainer.callbacks") is not None:
            base_callbacks = _get(config, "trainer.callbacks")
    for overlay in overlays:
        config = _load(overlay)
        run_root = _where(config, extra, "trainer.default_root_dir", Path(root) / overlay.stem)
        runs.append(Run(overlay.stem, overlay, run_root,
                        _where(config, extra, "checkpoint.dirpath", run_root / "checkpoints"),
                        _where(config, extra, "model.report_dir", run_root / "report")))
        own = _get(config, "trainer.callbacks")
        if _option(extra, "trainer.callbacks") is not None:
            continue
        for i, cb in enumerate(own if own is not None else base_callbacks or []):
            dirpath = _get(cb, "init_args.dirpath") if isinstance(cb, dict) else None
            if dirpath and own is None:
                problems.append(f"{overlay.stem}: trainer.callbacks[{i}], inherited from the base, writes checkpoints "
                                f"to {dirpath}, the base run's folder; set trainer.callbacks in the overlay with its "
                                f"own dirpath, or drop the base's dirpath (Lightning then uses the logger's folder)")
            elif dirpath:
                callback_dirs.setdefault(str(dirpath), []).append(f"{overlay.stem} (trainer.callbacks[{i}])")
    for label, folders in (("checkpoint.dirpath", [r.checkpoints for r in runs]),
                           ("model.report_dir", [r.report for r in runs])):
        for folder in sorted(set(folders)):
            sharing = [r.name for r, f in zip(runs, folders) if f == folder]
            if len(sharing) > 1:
                problems.append(f"runs {', '.join(sharing)} would share {label} {folder}: give each overlay its own "
                                f"trainer.default_root_dir (or {label})")
    for folder, users in callback_dirs.items():
        if len(users) > 1:
            problems.append(f"{', '.join(users)} write checkpoints to the same dirpath {folder}: each run would "
                            f"overwrite the others'; give each overlay's callback its own dirpath")
    if problems:
        raise ValueError("\n".join(problems))
    return runs


def _configs(base: Sequence[Path], run: Run) -> list[str]:
    return [arg for path in (*base, run.overlay) for arg in ("--config", str(path))]


def job_lines(base: Sequence[Path], runs: Sequence[Run], extra: Sequence[str] = (), root: str | Path = "runs",
              program: str = "borealis") -> list[str]:
    """One shell command per run: `borealis ablate run` on that overlay alone, without the report
    (the array's jobs finish in any order; `borealis ablate report` collects them afterwards)."""
    lines = []
    for run in runs:
        argv = [program, "ablate", "run", *(a for b in base for a in ("--base", str(b))), "--overlays",
                str(run.overlay), "--root", str(root), "--no-report"]
        lines.append(shlex.join([*argv, *(["--", *extra] if extra else [])]))
    return lines


def _stream(argv: Sequence[str], log_path: Path) -> int:
    """Run `argv`, echoing its output (stdout and stderr) here and into `log_path`; returns its exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace") as proc:
            for line in proc.stdout:
                sys.stdout.write(line)
                f.write(line)
    sys.stdout.flush()
    return proc.returncode


def _rank() -> int:
    """This process's rank when a launcher started one per device (`srun` in a SLURM array job), else 0."""
    return int(os.environ.get("SLURM_PROCID") or os.environ.get("RANK") or 0)


def _log(run: Run, stage: str) -> Path:
    """`<run>/ablate-<stage>.log`; ranks other than 0 keep their own `ablate-<stage>.rank<N>.log`."""
    return run.root / (f"ablate-{stage}.log" if _rank() == 0 else f"ablate-{stage}.rank{_rank()}.log")


def last_checkpoint(folder: Path, since: float) -> Path:
    """`folder/last.ckpt`, else the newest `*.ckpt` there, written at or after `since` (a
    time.time()); FileNotFoundError when fit left none, or only older ones."""
    last = folder / "last.ckpt"
    found = [last] if last.exists() else sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"fit wrote no checkpoint in {folder} (keep checkpoint.save_last: true)")
    newest = found[-1]
    if newest.stat().st_mtime < since - 1.0:  # 1 s for file systems with coarse time stamps
        raise FileNotFoundError(f"{newest} is older than this run's fit: fit wrote no new checkpoint in {folder}")
    return newest


def execute(run: Run, base: Sequence[Path], extra: Sequence[str] = (), python: str = sys.executable) -> Outcome:
    """fit, then validate on the checkpoint fit wrote; the Outcome says where it stopped if it failed.

    Under a launcher that starts one process per device, every rank runs both, and rank 0
    alone checks that wer.json was written (only rank 0 writes it).
    """
    started = time.time()
    command = [python, "-m", "borealis.commands"]
    fit = [*command, "fit", *_configs(base, run), *run.location_args(), *extra]
    log.info("%s: fit (log: %s)\n  %s", run.name, _log(run, "fit"), shlex.join(fit))
    status = _stream(fit, _log(run, "fit"))
    if status != 0:
        return Outcome(run.name, False, f"fit exited {status} (log: {_log(run, 'fit')})", time.time() - started)
    try:
        ckpt = last_checkpoint(run.checkpoints, started)
    except FileNotFoundError as err:
        return Outcome(run.name, False, str(err), time.time() - started)
    validating = time.time()
    validate = [*command, "validate", *_configs(base, run), *run.location_args(), *extra, "--ckpt_path", str(ckpt)]
    log.info("%s: validate %s (log: %s)\n  %s", run.name, ckpt, _log(run, "validate"), shlex.join(validate))
    status = _stream(validate, _log(run, "validate"))
    if status != 0:
        return Outcome(run.name, False, f"validate exited {status} (log: {_log(run, 'validate')})",
                       time.time() - started)
    if _rank() == 0 and not run.wer_json.is_file() or run.wer_json.stat().st_mtime < validating - 1.0:
        return Outcome(run.name, False, f"validate wrote no new {run.wer_json}", time.time() - started)
    return Outcome(run.name, True, str(run.wer_json), time.time() - started)


def run_grid(runs: Sequence[Run], base: Sequence[Path], extra: Sequence[str] = (), skip_existing: bool = False,
             python: str = sys.executable) -> list[Outcome]:
    """Every run in turn; a failed run is logged and the next one starts. Returns their outcomes."""
    outcomes = []
    for i, run in enumerate(runs, 1):
        log.info("[%d/%d] %s: %s", i, len(runs), run.name, run.overlay)
        if skip_existing and run.wer_json.is_file():
            outcome = Outcome(run.name, True, f"{run.wer_json} (kept: --skip-existing)")
        else:
            outcome = execute(run, base, extra, python)
        outcomes.append(outcome)
        log.log(logging.INFO if outcome.ok else logging.ERROR, "[%d/%d] %s: %s in %.0f s: %s", i, len(runs),
                run.name, "done" if outcome.ok else "FAILED", outcome.seconds, outcome.detail)
    return outcomes
