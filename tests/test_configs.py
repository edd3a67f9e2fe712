"""The shipped configs as the seed ran its experiment: a stage-1 pretrain, the seed's overlays on
it_fresh.yaml each starting from a pretrain (`model.init_from`), their quoted WER equal to the seed's
table (`borealis.seed_results`), and no training pool that is a benchmark's pool or source.

Parsing every YAML on its own is tests/test_cli.py's job; here the overlays are parsed on top of
it_fresh.yaml, and the pools are read from the YAML files as the CLI merges them (a later file's
`data.train_pools` replaces the earlier list).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import pytest
import yaml

from borealis.cli import BorealisCLI
from borealis.data import BorealisDataModule
from borealis.module import BorealisLightningModule
from borealis.seed_results import SEED_AVG_WER, SEED_PRETRAIN

CONFIG_DIR = Path(__file__).parents[1] / "configs"
IT_FRESH = CONFIG_DIR / "it_fresh.yaml"
PRETRAIN = CONFIG_DIR / "pretrain.yaml"
DEMO = CONFIG_DIR / "demo.yaml"  # the CPU demo: an overlay on it_fresh.yaml with the demo corpus's 5 benchmarks
# configs/ablations/ holds the seed's grid only (what `borealis ablate run` runs); overlays that
# modify a run without being a seed row live in configs/variants/.
OVERLAYS = sorted((CONFIG_DIR / "ablations").glob("*.yaml"))
SEED_ROWS = {"ru_only", "en_only", "mixed_large", "ru_text_10pct", "ru_text_25pct"}
WER_COMMENT = re.compile(r"^# Seed avg WER: (\d+\.\d+)", re.MULTILINE)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _merged_data(*paths: Path) -> dict:
    """`data:` of several configs merged as LightningCLI merges them, key by key (lists replaced)."""
    data: dict = {}
    for path in paths:
        data.update(_load(path).get("data") or {})
    return data


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def benchmark_clashes(data: dict) -> list[str]:
    """Every training pool (and the text pool) that is, contains or lies in a benchmark's shards folder,
    or is named like a benchmark or its source folder (`tone_books`, `common_voice_ru`, ...)."""
    benches = {name: posixpath.normpath(path) for name, path in (data.get("val_sets") or {}).items()}
    bench_names = {_norm(n) for n in benches} | {_norm(posixpath.basename(p)) for p in benches.values()}
    bench_roots = {posixpath.dirname(p) for p in benches.values()}  # shards/bench
    train = [(p["name"], p["shards"]) for p in data.get("train_pools") or []]
    if data.get("text_pool"):
        train.append((posixpath.basename(data["text_pool"]), data["text_pool"]))
    clashes = []
    for name, shards in train:
        path = posixpath.normpath(shards)
        for bench in [*benches.values(), *bench_roots]:
            if path == bench or path.startswith(bench + "/") or bench.startswith(path + "/"):
                clashes.append(f"{name}: shards {shards} vs benchmark folder {bench}")
        for word in (name, posixpath.basename(path)):
            if _norm(word) in bench_names:
                clashes.append(f"{name}: {word!r} names a benchmark or its source")
    return clashes


def test_the_overlays_are_the_seeds_table_plus_unfreeze_encoder():
    assert {p.stem for p in OVERLAYS} == SEED_ROWS | {"unfreeze_encoder"}
    assert SEED_ROWS <= set(SEED_AVG_WER)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_every_overlay_parses_on_it_fresh_and_starts_from_the_pretrain(overlay, tiny_parts):
    enc, llm = tiny_parts  # hub ids need the network; parsing only builds the tokenizer and configs
    cli = BorealisCLI(BorealisLightningModule, BorealisDataModule, run=False,
                      args=["--config", str(IT_FRESH), "--config", str(overlay),
                            "--model.encoder", str(enc), "--model.llm", str(llm),
                            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                            "--trainer.logger", "false", "--trainer.precision", "32-true"],
                      save_config_callback=None, auto_configure_optimizers=False)
    assert cli.model.hparams.init_from == SEED_PRETRAIN  # the seed's released pretrain by default
    assert cli.model.model is None  # nothing loaded yet: init_from is read in configure_model
    assert cli.datamodule.val_sets == _load(IT_FRESH)["data"]["val_sets"]  # scored on the seed's benchmarks
    folder = f"runs/{overlay.stem}"  # each run in its own folder: no overlay overwrites another's checkpoints
    assert cli.trainer.default_root_dir == folder
    dirs = {Path(c.dirpath) for c in cli.trainer.checkpoint_callbacks}  # made absolute by ModelCheckpoint
    assert dirs == {Path(f"{folder}/checkpoints").resolve()}
    assert cli.model.hparams.freeze_encoder == (overlay.stem != "unfreeze_encoder")


@pytest.mark.parametrize("configs", [[IT_FRESH], [PRETRAIN], *([IT_FRESH, o] for o in OVERLAYS),
                                     [IT_FRESH, CONFIG_DIR / "variants" / "no_augment.yaml"],
                                     [IT_FRESH, DEMO], [IT_FRESH, DEMO, CONFIG_DIR / "variants" / "demo_no_augment.yaml"]],
                         ids=lambda c: "+".join(p.stem for p in c))
def test_no_config_trains_on_a_benchmark(configs):
    data = _merged_data(*configs)
    assert len(data["val_sets"]) == (5 if DEMO in configs else 6) and data["train_pools"]
    assert benchmark_clashes(data) == []


def test_the_benchmark_check_finds_a_benchmark_pool():
    data = _merged_data(IT_FRESH)
    planted = [{"name": "common_voice_ru", "shards": "shards/common_voice_ru"},  # a benchmark's source by name
               {"name": "books", "shards": "shards/bench/tone_books/"},  # a benchmark's own folder
               {"name": "all", "shards": "shards"}]  # a folder holding the benchmarks
    clashes = benchmark_clashes({**data, "train_pools": planted})
    assert {c.split(":")[0] for c in clashes} == {"common_voice_ru", "books", "all"}
    assert benchmark_clashes({**data, "train_pools": [{"name": "tonebooks_train", "shards": "shards/tonebooks_train"}]}) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_each_overlay_quotes_the_seeds_figure(overlay):
    quoted = [float(x) for x in WER_COMMENT.findall(overlay.read_text())]
    if overlay.stem in SEED_ROWS:
        assert quoted == [SEED_AVG_WER[overlay.stem]]
    else:
        assert quoted == []  # no published figure to quote
    for figure in re.findall(r"\b(\d{2}\.\d{2})\b", overlay.read_text()):  # any other figure is a seed row's
        assert float(figure) in SEED_AVG_WER.values(), figure


def test_it_fresh_is_the_no_pretrain_row_and_pretrain_fits_every_overlay():
    it_fresh, pretrain = _load(IT_FRESH), _load(PRETRAIN)
    assert f"{SEED_AVG_WER['it_fresh']:.2f}" in IT_FRESH.read_text().split("seed_everything")[0]
    assert it_fresh["model"]["init_from"] is None and pretrain["model"]["init_from"] is None
    # the same model, so stage 1's checkpoint holds exactly the trainable weights stage 2 expects
    assert pretrain["model"] == it_fresh["model"]
    assert pretrain["model"]["trim_audio_tokens"] is False  # 375 audio tokens per 30 s clip, as the seed's pretrain
    assert pretrain["data"]["text_ratio"] == 0.0 and not pretrain["data"]["text_pool"]  # plain ASR
    assert pretrain["data"]["val_sets"] == it_fresh["data"]["val_sets"]
    assert pretrain["checkpoint"]["dirpath"] == "runs/pretrain/checkpoints"  # README's stage-2 --model.init_from
    assert pretrain["checkpoint"]["save_last"] is True


def test_seed_results_match_design_md():
    """borealis.seed_results against DESIGN.md's table, where the shared notes sit beside the checkout."""
    design = Path(__file__).parents[2] / "shared" / "DESIGN.md"
    if not design.is_file():
        pytest.skip(f"{design} is not beside this checkout")
    rows = dict(re.findall(r"^\| (\w+)[^|]*\| (\d+\.\d+) \|$", design.read_text(), re.MULTILINE))
    assert {k: float(v) for k, v in rows.items()} == {k: SEED_AVG_WER[k] for k in SEED_ROWS}
    assert f"{SEED_AVG_WER['it_fresh']:.2f} average WER" in design.read_text()
