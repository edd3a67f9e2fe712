"""`borealis ablate`: the grid's plan and jobs, the report from wer.json files, and two tiny
overlays trained, validated and reported end to end on the CPU."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from borealis.testing import make_pool

from borealis.ablate import main as ablate
from borealis.ablate.report import collect, markdown, seed_average, to_json, write
from borealis.ablate.run import find_overlays, job_lines, last_checkpoint, plan
from borealis.seed_results import SEED_AVG_WER

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BENCHES = ["librispeech_ru", "common_voice", "tone_books"]


def _wer_json(folder: Path, wers: dict[str, float], baseline: dict[str, float] | None = None) -> Path:
    """A wer.json as `borealis validate` writes it (metrics.write_report's layout)."""
    report = {"checkpoint": "last.ckpt", "avg": sum(wers.values()) / len(wers),
              "benchmarks": {b: {"wer": w, "errors": 1, "words": 10, "samples": 2} for b, w in wers.items()},
              "audio_seconds": 1.0, "seconds": 1.0, "rtfx": 1.0}
    if baseline:
        report["baselines"] = {"whisper": {"model": "openai/whisper-large-v3",
                                           "avg": sum(baseline.values()) / len(baseline),
                                           "benchmarks": {b: {"wer": w} for b, w in baseline.items()}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wer.json").write_text(json.dumps(report))
    return folder / "wer.json"


def _table(md: str) -> dict[str, dict[str, str]]:
    """The Markdown table's rows: run name -> {column: cell}."""
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(head, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}


def test_seed_figures_are_designs():
    assert SEED_AVG_WER["ru_only"] == 19.32 and SEED_AVG_WER["ru_text_10pct"] == 19.17
    assert seed_average("ru_only") == pytest.approx(0.1932)
    assert seed_average("it_fresh") == pytest.approx(0.6818)  # "IT_fresh (no pretrain)"
    assert seed_average("openai/whisper-large-v3") == pytest.approx(0.1103)
    assert seed_average("no_augment") is None


def test_seed_column_holds_designs_figures_for_every_seed_row(tmp_path):
    """DESIGN.md's seed table (and its IT_fresh and Whisper figures) in the report's seed column."""
    design = {"ru_only": "19.32", "en_only": "20.88", "mixed_large": "22.11", "ru_text_10pct": "19.17",
              "ru_text_25pct": "24.02", "it_fresh": "68.18"}
    entries = [(name, _wer_json(tmp_path / name, {"b": 0.5}, baseline={"b": 0.1})) for name in design]
    grid = collect(entries)
    rows = _table(markdown(grid))
    assert {name: rows[name]["seed Avg"] for name in design} == design
    assert rows["Whisper openai/whisper-large-v3"]["seed Avg"] == "11.03"
    assert [r.seed_avg for r in grid.runs] == pytest.approx([float(v) / 100 for v in design.values()])


def test_report_from_synthetic_wer_json(tmp_path):
    ru = _wer_json(tmp_path / "runs" / "ru_only" / "report", dict(zip(BENCHES, [0.10, 0.20, 0.30])),
                   baseline=dict(zip(BENCHES, [0.05, 0.15, 0.25])))
    other = _wer_json(tmp_path / "runs" / "mine" / "report", dict(zip(BENCHES, [0.40, 0.50, float("nan")])))
    empty = tmp_path / "runs" / "en_only" / "report"
    empty.mkdir(parents=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "wer.json").write_text("{not json")
    grid = collect([("ru_only", ru.parent), ("mine", other), ("en_only", empty), ("broken", broken)])

    assert [r.name for r in grid.runs] == ["ru_only", "mine"]
    assert [r.name for r in grid.baselines] == ["Whisper openai/whisper-large-v3"]
    assert grid.benchmarks == BENCHES
    assert {s["name"]: s["reason"].split(" ")[0] for s in grid.skipped} == {"en_only": "no", "broken": "unreadable"}

    rows = _table(markdown(grid))
    assert rows["ru_only"]["common_voice"] == "20.00" and rows["ru_only"]["Avg"] == "20.00"
    assert rows["ru_only"]["seed Avg"] == "19.32" and rows["ru_only"]["Δ vs seed"] == "+0.68"
    assert rows["mine"]["tone_books"] == "-" and rows["mine"]["seed Avg"] == "-"
    assert rows["Whisper openai/whisper-large-v3"]["seed Avg"] == "11.03"
    assert "en_only" not in rows and "en_only: no wer.json" in markdown(grid)

    data = to_json(grid)
    assert data["runs"][0]["wer"] == dict(zip(BENCHES, [0.10, 0.20, 0.30]))
    assert data["runs"][1]["wer"]["tone_books"] is None  # NaN is not JSON
    assert data["runs"][0]["seed_avg"] == pytest.approx(0.1932)
    assert data["baselines"][0]["model"] == "openai/whisper-large-v3"

    paths = write(grid, tmp_path / "out")
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC and paths["png"].stat().st_size > 5000
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(data))


def test_report_command_names_runs_and_skips_missing(tmp_path, capsys):
    _wer_json(tmp_path / "runs" / "ru_only" / "report", dict(zip(BENCHES, [0.1, 0.2, 0.3])))
    alt = _wer_json(tmp_path / "elsewhere", dict(zip(BENCHES, [0.3, 0.2, 0.1])))
    assert ablate(["report", "--runs", str(tmp_path / "runs" / "ru_only" / "report"), f"alt={alt}",
                   str(tmp_path / "runs" / "missing"), "--out", str(tmp_path / "out")]) == 0
    rows = _table((tmp_path / "out" / "ablation.md").read_text())
    assert list(rows) == ["ru_only", "alt"]
    assert "missing: no wer.json" in (tmp_path / "out" / "ablation.md").read_text()
    assert ablate(["report", "--runs", str(tmp_path / "runs" / "missing"), "--out", str(tmp_path / "o2")]) == 1
    assert "no run has a readable wer.json" in capsys.readouterr().err


def _overlays(tmp_path: Path) -> Path:
    folder = tmp_path / "ablations"
    folder.mkdir()
    (folder / "ru_only.yaml").write_text("data:\n  text_ratio: 0.0\ntrainer:\n  default_root_dir: out/ru\n")
    (folder / "lr_high.yaml").write_text("model:\n  learning_rate: 1.0e-2\n")  # no folder: ROOT/lr_high
    return folder


def test_plan_folders_and_clashes(tmp_path):
    folder = _overlays(tmp_path)
    runs = plan(find_overlays([folder]), root="grid")
    assert [(r.name, str(r.checkpoints), str(r.report)) for r in runs] == [
        ("lr_high", "grid/lr_high/checkpoints", "grid/lr_high/report"),
        ("ru_only", "out/ru/checkpoints", "out/ru/report")]
    assert "--model.report_dir" in runs[0].location_args()

    with pytest.raises(ValueError, match="would share checkpoint.dirpath x"):
        plan(find_overlays([folder]), extra=["--checkpoint.dirpath=x"])
    base = tmp_path / "base.yaml"  # a top-k ModelCheckpoint with a fixed folder, as it_fresh.yaml has
    base.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "borealis.checkpointing.Checkpoint", "init_args": {"dirpath": "runs/base/checkpoints"}}]}}))
    with pytest.raises(ValueError, match="ru_only: trainer.callbacks.0., inherited from the base, writes "
                                         "checkpoints to runs/base/checkpoints"):
        plan(find_overlays([folder]), base=[base])
    same = {"trainer": {"callbacks": [{"class_path": "x.Checkpoint", "init_args": {"dirpath": "topk"}}]}}
    for name in ("lr_high", "ru_only"):  # each overlay names its callbacks, but both the same folder
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(same))
    with pytest.raises(ValueError, match=r"lr_high \(trainer.callbacks\[0\]\), ru_only .* same dirpath topk"):
        plan(find_overlays([folder]), base=[base])
    assert len(plan(find_overlays([folder]), extra=["--trainer.callbacks", "[]"], base=[base])) == 2
    with pytest.raises(ValueError, match=r"--only nope: no such overlay \(choose from lr_high, ru_only\)"):
        find_overlays([folder], only=["nope"])
    with pytest.raises(ValueError, match="no such file or folder"):
        find_overlays([tmp_path / "absent"])


def test_print_jobs_one_command_per_overlay(tmp_path, capsys):
    folder = _overlays(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text("seed_everything: 0\n")
    assert ablate(["run", "--base", str(base), "--overlays", str(folder), "--print-jobs", "--",
                   "--trainer.max_epochs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ["lr_high", "ru_only"]):
        argv = shlex.split(line)
        assert argv[:3] == ["borealis", "ablate", "run"] and str(folder / f"{name}.yaml") in argv
        assert "--no-report" in argv and argv[-3:] == ["--", "--trainer.max_epochs", "1"]
    assert not (tmp_path / "runs").exists()  # nothing ran
    alone = job_lines([base], plan(find_overlays([folder], ["ru_only"])))
    assert alone == [lines[1].replace(" -- --trainer.max_epochs 1", "")]
    assert ablate(["run", "--base", str(tmp_path / "nope.yaml"), "--overlays", str(folder), "--print-jobs"]) == 2


def test_last_checkpoint_must_be_new(tmp_path):
    with pytest.raises(FileNotFoundError, match="wrote no checkpoint"):
        last_checkpoint(tmp_path, 0.0)
    (tmp_path / "epoch=0-step=1.ckpt").write_bytes(b"x")
    assert last_checkpoint(tmp_path, 0.0).name == "epoch=0-step=1.ckpt"
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert last_checkpoint(tmp_path, 0.0).name == "last.ckpt"
    with pytest.raises(FileNotFoundError, match="older than this run"):
        last_checkpoint(tmp_path, (tmp_path / "last.ckpt").stat().st_mtime + 60)


@pytest.mark.slow
def test_two_tiny_overlays_end_to_end(tmp_path, tiny_parts):
    enc, llm = tiny_parts
    make_pool(tmp_path / "train", "a", range(24), max_samples=8)
    make_pool(tmp_path / "bench_a", "v", range(100, 104), max_samples=4)  # held out from the training ids
    make_pool(tmp_path / "bench_b", "w", range(110, 113), max_samples=4)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_epochs": 1,
                    "num_sanity_val_steps": 0, "check_val_every_n_epoch": 100, "log_every_n_steps": 1,
                    "logger": False, "enable_progress_bar": False},
        "checkpoint": {"save_last": True},
        "model": {"encoder": str(enc), "llm": str(llm), "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  "max_new_tokens": 4},
        "data": {"train_pools": [{"name": "a", "shards": str(tmp_path / "train")}],
                 "val_sets": {"bench_a": str(tmp_path / "bench_a"), "bench_b": str(tmp_path / "bench_b")},
                 "batching": {"batch_size": 4, "max_seconds_per_batch": None}, "batches_per_epoch": 2,
                 "max_seconds": 2.0, "num_workers": 0}}))
    folder = _overlays(tmp_path)
    (folder / "broken.yaml").write_text("model:\n  learning_rte: 0.1\n")  # a typo: fit refuses it, the grid goes on
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "borealis.commands", "ablate", "run", "--base", str(base),
                           "--overlays", str(folder), "--root", "grid", "--out", "table"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 1, proc.stderr[-4000:]  # broken failed; the other two ran
    assert "broken: FAILED" in proc.stderr and "lr_high: done" in proc.stderr and "ru_only: done" in proc.stderr

    out = tmp_path / "table"
    png = (out / "ablation.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 5000
    data = json.loads((out / "ablation.json").read_text())
    wer_files = {"ru_only": tmp_path / "out/ru/report/wer.json", "lr_high": tmp_path / "grid/lr_high/report/wer.json"}
    assert sorted(r["name"] for r in data["runs"]) == sorted(wer_files)
    for row in data["runs"]:
        report = json.loads(wer_files[row["name"]].read_text())
        assert set(row["wer"]) == {"bench_a", "bench_b"}
        for bench, wer in row["wer"].items():
            want = report["benchmarks"][bench]["wer"]
            assert wer == want or (wer is None and math.isnan(want))
    assert [s["name"] for s in data["skipped"]] == ["broken"]
    assert (tmp_path / "grid/broken/ablate-fit.log").read_text().count("learning_rte") >= 1

    rows = _table((out / "ablation.md").read_text())
    assert rows["ru_only"]["seed Avg"] == f"{SEED_AVG_WER['ru_only']:.2f}" == "19.32"
    assert rows["lr_high"]["seed Avg"] == "-"
    assert "broken: run failed: fit exited" in (out / "ablation.md").read_text()


FAKE_BOREALIS = '''import sys
from pathlib import Path

args = sys.argv[3:]  # after `-m borealis.commands`
stage, value = args[0], lambda key: args[args.index(key) + 1]
name = Path(args[args.index("--config", 3) + 1]).stem  # the overlay: the second --config
print(f"fake {stage} {name}")
if name == "fails":
    sys.exit(1)
if stage == "fit" and name != "no_ckpt":
    Path(value("--checkpoint.dirpath")).mkdir(parents=True, exist_ok=True)
    (Path(value("--checkpoint.dirpath")) / "last.ckpt").write_text("x")
if stage == "validate":
    assert value("--ckpt_path").endswith("last.ckpt")
    Path(value("--model.report_dir")).mkdir(parents=True, exist_ok=True)
    (Path(value("--model.report_dir")) / "wer.json").write_text('{"benchmarks": {"b": {"wer": 0.5}}, "avg": 0.5}')
'''


def test_a_failed_run_does_not_stop_the_grid(tmp_path, monkeypatch):
    """fit and validate through a stand-in for `python -m borealis.commands`: each outcome, each log."""
    from borealis.ablate.run import run_grid

    fake = tmp_path / "fake_python"  # called as `fake_python -m borealis.commands fit|validate ...`
    fake.write_text(f"#!{sys.executable}\n{FAKE_BOREALIS}")
    fake.chmod(0o755)
    folder = tmp_path / "ablations"
    folder.mkdir()
    for name in ("a_ok", "fails", "no_ckpt", "z_kept"):
        (folder / f"{name}.yaml").write_text("{}\n")
    base = tmp_path / "base.yaml"
    base.write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    runs = plan(find_overlays([folder]), root="grid")
    _wer_json(runs[3].report, {"b": 0.25})  # z_kept: done before, kept by skip_existing

    outcomes = run_grid(runs, [base], ["--x", "1"], skip_existing=True, python=str(fake))
    assert [(o.name, o.ok) for o in outcomes] == [("a_ok", True), ("fails", False), ("no_ckpt", False),
                                                  ("z_kept", True)]
    assert "fit exited 1" in outcomes[1].detail and "wrote no checkpoint" in outcomes[2].detail
    assert "--skip-existing" in outcomes[3].detail
    assert (tmp_path / "grid/a_ok/report/wer.json").is_file()
    assert "fake validate a_ok" in (tmp_path / "grid/a_ok/ablate-validate.log").read_text()
    assert (tmp_path / "grid/a_ok/ablate-fit.log").read_text().startswith(f"$ {fake} -m borealis.commands fit")
    assert not (tmp_path / "grid/fails/ablate-validate.log").exists()


def test_help_documents_the_grid(capsys):
    from borealis.commands import main as borealis

    assert borealis(["--help"]) == 0 and "\n  ablate " in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        borealis(["ablate", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert all(word in out for word in ("--print-jobs", "sbatch --array", "SLURM_ARRAY_TASK_ID", "ablation.png"))
