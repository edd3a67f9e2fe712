"""`borealis ablate report`: every run's `wer.json` in one seed-shaped table, as Markdown, JSON and a heatmap.

What: rows are runs (named after their overlays), columns are the benchmarks plus the
average, as in the seed's write-up; beside each run whose name is one of the seed's rows sits
the seed's published average (`borealis.seed_results`) and the difference. The Whisper
baseline that `borealis validate` scores (`baselines.whisper` in wer.json) is a row of its own.
A run without a readable wer.json is named in the notes and left out, never a crash.
Why: the seed's finding ("always start from a pretrain", 10% text helps, 25% hurts) is a
comparison across runs; this puts our figures and the seed's side by side.
Cost: reading a few small JSON files and drawing one PNG (matplotlib, Agg; ~1 s).

Units: ablation.json keeps WER as wer.json does, a fraction of reference words (0.1932); the
Markdown table and the heatmap show percent (19.32), as the seed's table does. The seed
published averages only, so its per-benchmark cells are never filled in.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from borealis.seed_results import SEED_AVG_WER

MARKDOWN, JSON, PNG = "ablation.md", "ablation.json", "ablation.png"


@dataclass
class Row:
    """One row of the table: a run, or a baseline taken from a run's wer.json."""

    name: str
    wer: dict[str, float]  # benchmark -> WER (fraction); NaN where the benchmark had no words
    avg: float
    source: Path  # the wer.json it comes from
    seed_avg: float | None = None  # the seed's published average (fraction), when the seed has this row
    checkpoint: str | None = None  # runs: the checkpoint wer.json names
    model: str | None = None  # baselines: the model that was scored


@dataclass
class Grid:
    """Everything the report shows: benchmark columns, run rows, baseline rows and the notes."""

    benchmarks: list[str] = field(default_factory=list)
    runs: list[Row] = field(default_factory=list)
    baselines: list[Row] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {name, path, reason}

    @property
    def rows(self) -> list[Row]:
        return [*self.runs, *self.baselines]


def _key(name: str) -> str:
    """A name as the seed's table keys it: `IT_fresh (no pretrain)` -> `it_fresh`, `whisper-large-v3` ->
    `whisper_large_v3`."""
    return re.sub(r"\W+", "_", name.split(" (")[0]).strip("_").lower()


_SEED = {_key(name): wer / 100 for name, wer in SEED_AVG_WER.items()}


def seed_average(name: str) -> float | None:
    """The seed's published average WER (fraction) for a run or model name, or None.

    Run names match the seed's row names (`ru_only`, `it_fresh`); a model id matches by its
    last path part (`openai/whisper-large-v3` -> `whisper_large_v3`)."""
    return _SEED.get(_key(name)) or _SEED.get(_key(name.rstrip("/").rsplit("/", 1)[-1]))


def wer_json_path(path: str | Path) -> Path:
    """`path` itself when it is a file, else `path/wer.json`."""
    path = Path(path)
    return path if path.is_file() else path / "wer.json"


def _read(path: Path) -> dict:
    """A wer.json as written by `borealis validate`; ValueError says what is wrong with it."""
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err})") from None
    benchmarks = report.get("benchmarks") if isinstance(report, dict) else None
    if not isinstance(benchmarks, dict) or not benchmarks:
        raise ValueError("no `benchmarks` (is it a `borealis validate` wer.json?)")
    bad = [name for name, v in benchmarks.items()
           if not isinstance(v, dict) or not isinstance(v.get("wer"), (int, float))]
    if bad:
        raise ValueError(f"benchmarks without a numeric `wer`: {', '.join(bad)}")
    return report


def _wer(benchmarks: Mapping[str, dict]) -> dict[str, float]:
    return {name: float(v["wer"]) for name, v in benchmarks.items()}


def _avg(report: Mapping, wer: Mapping[str, float]) -> float:
    """wer.json's `avg`, or the unweighted mean over its benchmarks (the seed's average) when absent."""
    if isinstance(report.get("avg"), (int, float)):
        return float(report["avg"])
    values = [v for v in wer.values() if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def collect(entries: Sequence[tuple[str, str | Path]], failed: Mapping[str, str] | None = None) -> Grid:
    """Read each (name, wer.json or its folder) into a Grid; `failed` runs (name -> why) are only noted.

    The first run that carries a baseline model gives that model's row (every run scores the
    same benchmarks with the same Whisper, so their baseline rows agree).
    """
    grid = Grid()
    for name, why in (failed or {}).items():
        grid.skipped.append({"name": name, "path": "", "reason": why})
    seen_models: set[str] = set()
    for name, where in entries:
        path = wer_json_path(where)
        if not path.is_file():
            grid.skipped.append({"name": name, "path": str(path),
                                 "reason": "no wer.json (`borealis validate` writes it)"})
            continue
        try:
            report = _read(path)
        except (OSError, ValueError) as err:
            grid.skipped.append({"name": name, "path": str(path), "reason": f"unreadable wer.json: {err}"})
            continue
        wer = _wer(report["benchmarks"])
        grid.runs.append(Row(name, wer, _avg(report, wer), path, seed_average(name),
                             checkpoint=report.get("checkpoint")))
        for label, baseline in (report.get("baselines") or {}).items():
            if not isinstance(baseline, dict) or not isinstance(baseline.get("benchmarks"), dict):
                continue
            model = str(baseline.get("model") or label)
            if model in seen_models:
                continue
            seen_models.add(model)
            bwer = _wer({k: v for k, v in baseline["benchmarks"].items() if isinstance(v, dict) and "wer" in v})
            title = f"Whisper {model}" if label == "whisper" else f"{label} {model}"
            grid.baselines.append(Row(title, bwer, _avg(baseline, bwer), path, seed_average(model), model=model))
    for row in grid.rows:
        grid.benchmarks += [b for b in row.wer if b not in grid.benchmarks]
    return grid


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _delta(row: Row) -> str:
    if row.seed_avg is None or math.isnan(row.avg):
        return "-"
    return f"{100 * (row.avg - row.seed_avg):+.2f}"


def markdown(grid: Grid) -> str:
    """The table as Markdown (WER in %), with the notes on seed figures and skipped runs."""
    head = ["run", *grid.benchmarks, "Avg", "seed Avg", "Δ vs seed"]
    lines = ["# Ablation grid: WER (%) per benchmark", "",
             "| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for row in grid.rows:
        cells = [row.name, *(_pct(row.wer.get(b)) for b in grid.benchmarks), _pct(row.avg), _pct(row.seed_avg),
                 _delta(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", ("WER after Whisper's basic normaliser, corpus-level per benchmark; Avg is the unweighted mean "
                   "over benchmarks. \"seed Avg\": the seed's published average over its 6 Russian benchmarks "
                   "(`borealis.seed_results`, DESIGN.md); the seed published no per-benchmark figures.")]
    if grid.skipped:
        lines += ["", "Not in the table:"]
        lines += [f"- {s['name']}: {s['reason']}" + (f" ({s['path']})" if s["path"] else "") for s in grid.skipped]
    lines += ["", "Sources:"]
    lines += [f"- {r.name}: {r.source}" + (f" (checkpoint {r.checkpoint})" if r.checkpoint else "") for r in grid.runs]
    return "\n".join(lines) + "\n"


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _row_json(row: Row) -> dict:
    out = {"name": row.name, "wer": {b: _finite(v) for b, v in row.wer.items()}, "avg": _finite(row.avg),
           "seed_avg": row.seed_avg, "source": str(row.source)}
    if row.checkpoint is not None:
        out["checkpoint"] = row.checkpoint
    if row.model is not None:
        out["model"] = row.model
    return out


def to_json(grid: Grid) -> dict:
    """ablation.json's content: WER as fractions (as in wer.json; null where undefined)."""
    return {"unit": "WER as a fraction of reference words, as in wer.json (x100 for the table's %)",
            "benchmarks": grid.benchmarks, "runs": [_row_json(r) for r in grid.runs],
            "baselines": [_row_json(r) for r in grid.baselines], "skipped": grid.skipped,
            "seed_avg": {name: wer / 100 for name, wer in SEED_AVG_WER.items()}, "heatmap": PNG}


def draw_heatmap(grid: Grid, path: str | Path) -> Path:
    """A WER (%) heatmap, runs x (benchmarks + Avg), every cell annotated; seed averages in the row labels."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = [*grid.benchmarks, "Avg"]
    data = np.array([[100 * row.wer.get(b, math.nan) for b in grid.benchmarks] + [100 * row.avg]
                     for row in grid.rows], dtype=float).reshape(len(grid.rows), len(columns))
    labels = [row.name + (f"\n(seed {100 * row.seed_avg:.2f})" if row.seed_avg is not None else "")
              for row in grid.rows]
    finite = data[np.isfinite(data)]
    width = 2.0 + 1.1 * len(columns) + 0.06 * max(map(len, labels), default=0)  # inches: cells + row labels
    fig = Figure(figsize=(width, 1.6 + 0.6 * len(labels)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="RdYlGn_r", aspect="auto", vmin=0,
                      vmax=max(float(finite.max()) if finite.size else 1.0, 1e-6))
    for (i, j), value in np.ndenumerate(data):
        if math.isnan(value):
            ax.text(j, i, "-", ha="center", va="center", color="black", fontsize=9)
            continue
        r, g, b, _ = image.cmap(image.norm(value))
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9,
                color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    ax.axvline(len(grid.benchmarks) - 0.5, color="black", linewidth=1.5)  # the average apart from the benchmarks
    ax.set_xticks(range(len(columns)), labels=columns, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_title("WER (%) per benchmark and run")
    fig.colorbar(image, ax=ax, label="WER (%)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def write(grid: Grid, out: str | Path) -> dict[str, Path]:
    """Write ablation.md, ablation.json and ablation.png into `out`; returns their paths.

    ValueError when no run could be read (there would be nothing to show).
    """
    if not grid.runs:
        notes = "; ".join(f"{s['name']}: {s['reason']}" for s in grid.skipped) or "no runs given"
        raise ValueError(f"no run has a readable wer.json ({notes})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / MARKDOWN, "json": out / JSON, "png": out / PNG}
    paths["markdown"].write_text(markdown(grid))
    paths["json"].write_text(json.dumps(to_json(grid), indent=2, ensure_ascii=False))
    draw_heatmap(grid, paths["png"])
    return paths
