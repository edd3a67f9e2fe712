"""callbacks.LearningCurve: a real fit validating every epoch, then `validate` on its checkpoint, in-process
through BorealisCLI on the tiny parts; the PNG and JSON must hold exactly what TensorBoard logged."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from borealis.callbacks.learning_curve import JSON, PNG, LearningCurve, latest_trajectory, smooth
from borealis.cli import BorealisCLI
from borealis.data import BorealisDataModule
from borealis.module import BorealisLightningModule
from borealis.testing import make_pool

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS, BATCHES = 2, 3  # validation after each epoch: TensorBoard steps 2 and 5 (the index of the step it followed)
BENCHMARKS = ("bench_a", "bench_b")


def _cli(subcommand: str, root: Path, tiny_parts, *args: str) -> None:
    enc, llm = tiny_parts
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": str(root / "runs"), "name": "tb", "version": "lc"}}
    BorealisCLI(BorealisLightningModule, BorealisDataModule, save_config_kwargs={"overwrite": True},
                auto_configure_optimizers=False, args=[
                    subcommand, "--model.encoder", str(enc), "--model.llm", str(llm),
                    "--model.lora", json.dumps({"r": 4, "alpha": 8, "dropout": 0.0}),
                    "--model.max_new_tokens", "2", "--model.whisper_baseline", "false",
                    "--trainer.accelerator", "cpu", "--trainer.logger", json.dumps(logger),
                    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                    "--data.train_pools", json.dumps([{"name": "a", "shards": str(root / "train")}]),
                    "--data.val_sets", json.dumps({b: str(root / b) for b in BENCHMARKS}),
                    "--data.batching", json.dumps({"batch_size": 2, "max_seconds_per_batch": None}),
                    "--data.batches_per_epoch", str(BATCHES), "--data.max_seconds", "2.0", "--data.num_workers", "0",
                    *args])


@pytest.fixture(scope="module")
def fit_run(tiny_parts, tmp_path_factory):
    """A 2-epoch fit validating every epoch (sanity check on): its root folder; the fit's TensorBoard run
    is runs/tb/lc, its checkpoint ckpt/last.ckpt."""
    root = tmp_path_factory.mktemp("learning_curve")
    make_pool(root / "train", "a", range(12), max_samples=6)
    make_pool(root / "bench_a", "v", range(100, 103), max_samples=4)  # held out from the training ids
    make_pool(root / "bench_b", "w", range(110, 112), max_samples=4)
    _cli("fit", root, tiny_parts, "--trainer.max_epochs", str(EPOCHS), "--trainer.check_val_every_n_epoch", "1",
         "--trainer.num_sanity_val_steps", "1", "--trainer.log_every_n_steps", "1",
         "--checkpoint.dirpath", str(root / "ckpt"))
    return root


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _points(series: dict) -> list[tuple[int, float]]:
    return list(zip(series["steps"], series["values"]))


def test_fit_logs_wer_every_epoch_and_draws_the_logged_curve(fit_run):
    fit = fit_run / "runs" / "tb" / "lc"
    logged = _scalars(fit)
    epoch_steps = [BATCHES * (e + 1) - 1 for e in range(EPOCHS)]  # [2, 5]: the sanity check logs nothing
    for name in BENCHMARKS:
        assert [s for s, _ in logged[f"val/wer/{name}"]] == epoch_steps, name
    assert [s for s, _ in logged["val/wer_avg"]] == epoch_steps
    assert [s for s, _ in logged["train/loss"]] == list(range(EPOCHS * BATCHES))

    png = (fit / PNG).read_bytes()  # beside the fit's wer.json (no model.report_dir: the logger's folder)
    assert (fit / "wer.json").is_file() and png[:8] == PNG_MAGIC and len(png) > 20_000
    data = json.loads((fit / JSON).read_text())
    assert _points(data["loss"]) == logged["train/loss"]
    assert len(data["loss"]["smoothed"]) == len(data["loss"]["values"])
    assert data["loss"]["smoothed"][0] == data["loss"]["values"][0]  # debiased: the first point is itself
    assert {name: _points(s) for name, s in data["wer"].items()} == {
        **{name: logged[f"val/wer/{name}"] for name in BENCHMARKS}, "avg": logged["val/wer_avg"]}
    assert data["final"] is None and data["runs"] == [str(fit.resolve())] and data["missing"] == []


def test_validate_adds_its_point_at_the_checkpoint_step(fit_run, tiny_parts, caplog):
    ckpt = fit_run / "ckpt" / "last.ckpt"
    with caplog.at_level(logging.INFO, logger="borealis.callbacks.learning_curve"):
        _cli("validate", fit_run, tiny_parts, "--ckpt_path", str(ckpt))
    run = fit_run / "runs" / "tb" / "lc-validate-last-1"
    report = json.loads((run / "wer.json").read_text())
    assert (run / PNG).read_bytes()[:8] == PNG_MAGIC
    data = json.loads((run / JSON).read_text())
    global_step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert global_step == EPOCHS * BATCHES
    final = data["final"]
    assert (final["command"], final["checkpoint"], final["global_step"]) == ("validate", "last.ckpt", global_step)
    assert final["step"] == global_step - 1  # where fit logged its validation of the same weights
    assert final["wer"] == {**{name: report["benchmarks"][name]["wer"] for name in BENCHMARKS}, "avg": report["avg"]}
    fit = json.loads((fit_run / "runs" / "tb" / "lc" / JSON).read_text())  # the history, read from the fit's events
    assert data["loss"] == fit["loss"] and data["wer"] == fit["wer"]
    assert {name: s["values"][-1] for name, s in data["wer"].items()} == pytest.approx(final["wer"])  # same weights
    assert f"+ the validate point at step {global_step - 1}" in caplog.text and "missing" not in caplog.text


@pytest.mark.parametrize("case", ["fit logs gone", "no LearningCurve state"])
def test_validate_without_the_fit_state_draws_what_exists(fit_run, tiny_parts, tmp_path, caplog, case):
    """A checkpoint whose fit folders are gone (copied elsewhere) still validates and draws its point, saying
    what is missing; one written without the callback's state falls back to the fit its run name gives."""
    ckpt = torch.load(fit_run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    if case == "fit logs gone":
        ckpt["callbacks"]["LearningCurve"]["runs"] = [str(tmp_path / "gone" / "tb" / "lc")]
    else:
        del ckpt["callbacks"]["LearningCurve"]
    name = "gone" if case == "fit logs gone" else "old"
    torch.save(ckpt, tmp_path / f"{name}.ckpt")
    with caplog.at_level(logging.INFO, logger="borealis.callbacks.learning_curve"):
        _cli("validate", fit_run, tiny_parts, "--ckpt_path", str(tmp_path / f"{name}.ckpt"))
    run = fit_run / "runs" / "tb" / f"lc-validate-{name}-1"
    assert (run / PNG).read_bytes()[:8] == PNG_MAGIC
    data = json.loads((run / JSON).read_text())
    assert data["final"]["step"] == EPOCHS * BATCHES - 1 and data["final"]["wer"]["avg"] is not None
    (line,) = [r.getMessage() for r in caplog.records if r.name == "borealis.callbacks.learning_curve"]
    if case == "fit logs gone":
        assert data["loss"]["steps"] == [] and data["wer"] == {}
        assert data["missing"] == [f"the fit's TensorBoard folder {tmp_path / 'gone' / 'tb' / 'lc'} is gone or "
                                   f"holds no event files"]
        assert "0 loss points, 0 validations" in line and "missing: the fit's TensorBoard folder" in line
    else:
        fit = fit_run / "runs" / "tb" / "lc"
        assert data["runs"] == [str(fit.resolve())]
        assert data["loss"] == json.loads((fit / JSON).read_text())["loss"]
        assert "old.ckpt names no fit run (written without LearningCurve); read" in line


def test_a_resumed_segment_replaces_the_steps_it_logs_again():
    # killed at step 4 after a checkpoint at step 2: the resumed segment logs steps 2.. again
    assert latest_trajectory([(0, 9.0), (1, 8.0), (2, 7.0), (3, 6.0), (4, 5.0), (2, 7.5), (3, 6.5), (5, 4.0)]) == [
        (0, 9.0), (1, 8.0), (2, 7.5), (3, 6.5), (5, 4.0)]


def test_smoothing_is_debiased_and_skips_non_finite_losses():
    assert smooth([4.0, None, 2.0], weight=0.5) == [4.0, None, pytest.approx((0.25 * 4 + 0.5 * 2) / 0.75)]


def test_a_fit_without_tensorboard_writes_nothing_and_says_so(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a logger-less trainer's report folder would be
    trainer = SimpleNamespace(is_global_zero=True, loggers=[], log_dir=None, default_root_dir=str(tmp_path))
    callback = LearningCurve()
    callback.on_train_start(trainer, None)
    with caplog.at_level(logging.INFO, logger="borealis.callbacks.learning_curve"):
        callback.on_fit_end(trainer, None)
    assert list(tmp_path.iterdir()) == []
    assert "not drawn: the fit has no TensorBoardLogger" in caplog.text
