"""Learning curve: training loss and validation WER against optimizer steps, drawn beside wer.json.

What: when `fit` ends, and when `validate` (or `test`) ends, global rank 0 writes
`learning_curve.png` into the report folder (`metrics.report_dir`, where wer.json goes). Top
panel: `train/loss` against the optimizer step, raw and smoothed (a debiased exponential
moving average, weight `SMOOTHING`, as TensorBoard's slider computes it). Bottom panel: WER (%)
per benchmark and their average against the step, from fit's periodic validation
(`val/wer/<name>`, `val/wer_avg`); an evaluation adds its own result as a star for the
checkpoint it scored. `learning_curve.json` beside it holds the plotted numbers (WER as a
fraction, as in wer.json; null where a value is not finite), the folders read and what was
missing. Nothing is written during the sanity check or fit's periodic validations.

Steps are TensorBoard's, as Lightning logs them: a loss at the 0-based index of its optimizer
step, a validation at the index of the step it followed (after 6 steps: 5). The evaluation's
star goes where fit logs a validation of the same weights, the checkpoint's `global_step - 1`
(json: `final.step`, with `final.global_step`), so last.ckpt's star sits on fit's last
validation, the same WER when nothing changed in between.

Why: the seed's write-up judges runs by their curves (does WER still fall, did the loss
plateau), and a report folder copied off a cluster has no TensorBoard server beside it.

Source: the fit's TensorBoard event files, read with tensorboard's `EventAccumulator`, not a
history this callback keeps on its own. The event files are the run's log of record: what
TensorBoard shows, written by the logger whatever this callback does, so the figure cannot
disagree with them, and a kill loses nothing that was logged. A copy kept by the callback would
have to match the logger's cadence (`log_every_n_steps`) and be cut back on every resume to stay
equal to it. What the callback keeps is where those logs are: every checkpoint carries the
TensorBoard folders of the fit that wrote it (its callback state: absolute paths, one per fit
segment, so a resume into a new `version_N` folder keeps the earlier ones). `borealis validate`
therefore finds the history from the checkpoint alone, whatever the logger's version or
`model.report_dir` (`it_fresh.yaml` has no configured version, so the evaluation's run name
`validate-last-1` names no fit run), and draws only the points up to the checkpoint's step: a
best-by-WER checkpoint of a run that went on shows its own history. A checkpoint written without
this callback falls back to the fit folder the evaluation's run name gives
(`<fit version>-validate-<ckpt>-<n>`, see `cli.evaluation_version`). A step logged twice (a
resumed fit logs again the steps after its checkpoint) keeps its latest value: the trajectory
that led to the final weights. An evaluation whose fit folders are gone (or that had none) draws
what exists (at least its own point) and says what was missing in its one info line; a fit
without a TensorBoardLogger writes no figure and says so. Neither fails the run.

Cost: at the end of a run only, on rank 0. A 90k-step run logged every 50 steps (1,800 loss
points, 20 validations of 6 benchmarks, two more scalar tags) reads in 0.1 s and draws in 0.2 s
(matplotlib, Agg; its import included) on 2 shared CPU cores.
Installed by `BorealisLightningModule.configure_callbacks`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn

from borealis.metrics import report_dir

log = logging.getLogger(__name__)

PNG, JSON = "learning_curve.png", "learning_curve.json"
LOSS, WER_PREFIX, WER_AVG = "train/loss", "val/wer/", "val/wer_avg"
SMOOTHING = 0.9  # EMA weight of the smoothed loss: ~10 logged points of memory


def smooth(values: Sequence[float | None], weight: float = SMOOTHING) -> list[float | None]:
    """Debiased exponential moving average (TensorBoard's smoothing): the first point is itself. A
    non-finite loss (None: a step `NonFiniteSteps` skipped) stays None and leaves the average as it was."""
    out, last, n = [], 0.0, 0
    for value in values:
        if value is None:
            out.append(None)
            continue
        n += 1
        last = weight * last + (1 - weight) * value
        out.append(last / (1 - weight ** n))
    return out


def latest_trajectory(points: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """(step, value) points in the order they were logged, with the steps a later segment logged again
    (a resume from an earlier checkpoint) replaced by that segment's: the points that lead to the end."""
    kept: list[tuple[int, float]] = []
    for step, value in points:
        while kept and kept[-1][0] >= step:
            kept.pop()
        kept.append((step, value))
    return kept


def read_scalars(folders: Sequence[Path]) -> tuple[dict[str, list[tuple[int, float]]], list[str]]:
    """The loss and WER scalars of the TensorBoard runs in `folders` (in fit order), as
    {tag: [(step, value)]} on the latest trajectory, and a note for each folder that could not be read."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw: dict[str, list[tuple[int, float]]] = {}
    missing = []
    for folder in folders:
        if not any(folder.glob("events.out.tfevents.*")):
            missing.append(f"the fit's TensorBoard folder {folder} is gone or holds no event files")
            continue
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: every point, no reservoir sampling
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag in (LOSS, WER_AVG) or tag.startswith(WER_PREFIX):
                raw.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: latest_trajectory(points) for tag, points in raw.items()}, missing


def _fraction(value: float | None) -> float | None:
    """A value for JSON: None (null) where it is not finite."""
    return None if value is None or not math.isfinite(value) else float(value)


def curve(scalars: dict[str, list[tuple[int, float]]], final: dict | None, max_step: int | None = None) -> dict:
    """learning_curve.json's numbers (less its notes) from the scalars, up to `max_step` when given."""
    def series(tag: str) -> dict[str, list]:
        points = [(s, v) for s, v in scalars.get(tag, []) if max_step is None or s <= max_step]
        return {"steps": [s for s, _ in points], "values": [_fraction(v) for _, v in points]}

    loss = series(LOSS)
    loss.update(smoothed=smooth(loss["values"]), smoothing=SMOOTHING)
    names = sorted(t.removeprefix(WER_PREFIX) for t in scalars if t.startswith(WER_PREFIX))
    wer = {name: series(WER_PREFIX + name) for name in names}
    if WER_AVG in scalars:
        wer["avg"] = series(WER_AVG)
    return {"unit": "WER as a fraction of reference words, as in wer.json (the PNG shows percent)",
            "step": "TensorBoard's step: a loss at the 0-based index of its optimizer step, a validation at the "
                    "index of the step it followed; the evaluation (final) at its checkpoint's global_step - 1",
            "loss": loss, "wer": {k: v for k, v in wer.items() if v["steps"]}, "final": final}


def draw(data: dict, path: Path, title: str) -> Path:
    """Two panels sharing the step axis: loss (raw + smoothed) above, WER (%) per benchmark and avg below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    nan = lambda values: [math.nan if v is None else v for v in values]  # noqa: E731  (null: not finite)
    loss = data["loss"]
    if loss["steps"]:
        top.plot(loss["steps"], nan(loss["values"]), color="tab:blue", alpha=0.3, linewidth=1, label="train/loss")
        top.plot(loss["steps"], nan(loss["smoothed"]), color="tab:blue", linewidth=2,
                 label=f"smoothed (EMA {loss['smoothing']})")
        top.legend(loc="upper right", fontsize=8)
    else:
        top.text(0.5, 0.5, "no train/loss logged", ha="center", va="center", transform=top.transAxes)
    top.set_ylabel("training loss")
    top.grid(alpha=0.3)

    final = data["final"] or {}
    names = sorted(set(data["wer"]) | set(final.get("wer", {})), key=lambda n: (n == "avg", n))
    colors = {name: f"C{i % 10}" for i, name in enumerate(n for n in names if n != "avg")}
    colors["avg"] = "black"
    pct = lambda values: [100 * v for v in nan(values)]  # noqa: E731
    for name in names:
        style = {"color": colors[name], "linewidth": 2.5 if name == "avg" else 1.5}
        if name in data["wer"]:
            series = data["wer"][name]
            bottom.plot(series["steps"], pct(series["values"]), marker="o", markersize=4,
                        linestyle="--" if name == "avg" else "-", label=name, **style)
        if final.get("wer", {}).get(name) is not None:
            bottom.plot([final["step"]], pct([final["wer"][name]]), marker="*", markersize=14, linestyle="none",
                        markeredgecolor="black", color=colors[name],
                        label=None if name in data["wer"] else name)
    if final:
        bottom.plot([], [], marker="*", markersize=12, linestyle="none", color="grey", markeredgecolor="black",
                    label=f"{final['command']} {final['checkpoint']}")  # legend entry for the stars
    if names:
        bottom.legend(loc="upper right", fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no validation WER logged", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel("WER (%)")
    bottom.set_xlabel("optimizer step")
    bottom.grid(alpha=0.3)
    top.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class LearningCurve(L.Callback):
    """Write `learning_curve.png` and `learning_curve.json` beside wer.json when fit, validate or test ends.

    Args:
        folder: the report folder (`model.report_dir`; null: the logger's folder).
    """

    def __init__(self, folder: str | None = None) -> None:
        self.folder = folder
        self.runs: list[str] = []  # TensorBoard folders of the fit, one per segment (resumes), oldest first
        self._ckpt_step: int | None = None  # the loaded checkpoint's global step
        self._from_checkpoint = False  # the checkpoint named its fit's folders

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.runs, self._ckpt_step, self._from_checkpoint = [], None, False  # a checkpoint load refills them

    def state_dict(self) -> dict:
        return {"runs": list(self.runs)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.runs = list(state_dict.get("runs", []))
        self._from_checkpoint = True

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._ckpt_step = int(checkpoint.get("global_step", 0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = _tensorboard(trainer)
        if not trainer.is_global_zero or logger is None:  # rank 0 writes the events and the checkpoints
            return
        if (run := str(Path(logger.log_dir).resolve())) not in self.runs:
            self.runs.append(run)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not self.runs:  # nothing to draw: no files, rather than an empty figure in the root folder
            log.info("learning curve: not drawn: the fit has no TensorBoardLogger, whose event files are its source")
            return
        self._write(trainer, None, None, [])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._evaluation_end(trainer, pl_module, "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_end(trainer, pl_module, "test")

    def _evaluation_end(self, trainer: L.Trainer, pl_module: L.LightningModule, command: str) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        wer = {k.removeprefix(WER_PREFIX): _fraction(float(v)) for k, v in metrics.items() if k.startswith(WER_PREFIX)}
        if WER_AVG in metrics:
            wer["avg"] = _fraction(float(metrics[WER_AVG]))
        global_step = self._ckpt_step if self._ckpt_step is not None else pl_module.global_step
        step = max(global_step - 1, 0)  # where fit logs a validation of these weights (see the module docstring)
        checkpoint = Path(trainer.ckpt_path).name if trainer.ckpt_path else "no checkpoint"
        final = {"command": command, "checkpoint": checkpoint, "global_step": global_step, "step": step, "wer": wer}
        notes = []
        if not trainer.ckpt_path:
            notes.append("no checkpoint, so no fit history")
        elif not self._from_checkpoint:
            named = self._named_fit_run(trainer)
            self.runs = [named] if named else []
            notes.append(f"{checkpoint} names no fit run (written without LearningCurve)"
                         + (f"; read {named}, the fit run its evaluation's run name gives" if named else
                            " and the evaluation's run name gives none, so no fit history"))
        self._write(trainer, final, step if trainer.ckpt_path else None, notes)

    @staticmethod
    def _named_fit_run(trainer: L.Trainer) -> str | None:
        """The fit folder `cli.evaluation_version` names: `<fit version>-<command>-<ckpt stem>-<n>`."""
        logger = _tensorboard(trainer)
        version = logger.version if logger is not None else None
        match = re.fullmatch(r"(.+)-(validate|test)-.+-\d+", version) if isinstance(version, str) else None
        folder = Path(logger.root_dir) / match[1] if match else None
        return str(folder.resolve()) if folder is not None and folder.is_dir() else None

    def _write(self, trainer: L.Trainer, final: dict | None, max_step: int | None, notes: list[str]) -> None:
        scalars, missing = read_scalars([Path(r) for r in self.runs])
        notes += missing
        data = curve(scalars, final, max_step)
        if self.runs and not missing and not data["loss"]["steps"]:
            notes.append(f"no {LOSS} scalars in {', '.join(self.runs)}")
        folder = report_dir(trainer, self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        data.update(runs=self.runs, missing=notes)
        (folder / JSON).write_text(json.dumps(data, indent=2, ensure_ascii=False))
        title = "Learning curve" + (f": {final['command']} {final['checkpoint']} (global step {final['global_step']})"
                                    if final else f": fit, {trainer.global_step} steps")
        draw(data, folder / PNG, title)
        validations = max((len(s["steps"]) for s in data["wer"].values()), default=0)
        log.info("learning curve: %d loss points, %d validations%s, written to %s%s", len(data["loss"]["steps"]),
                 validations, f" + the {final['command']} point at step {final['step']}" if final else "",
                 folder / PNG, "; missing: " + "; ".join(notes) if notes else "")
