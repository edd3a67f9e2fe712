"""A later config replaces it_fresh.yaml's packed `data.batching` whole and overrides its new model keys,
as `borealis fit --config configs/it_fresh.yaml --config configs/demo.yaml` does."""

from pathlib import Path

import pytest
import yaml

from borealis.cli import BorealisCLI
from borealis.data import BorealisDataModule
from borealis.data.batching import Batching
from borealis.module import BorealisLightningModule

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
IT_FRESH = CONFIG_DIR / "it_fresh.yaml"


def _parse(tiny_parts, *configs: Path, extra: tuple[str, ...] = ()) -> BorealisCLI:
    enc, llm = tiny_parts
    args = [x for c in configs for x in ("--config", str(c))]
    return BorealisCLI(BorealisLightningModule, BorealisDataModule, run=False,
                       args=[*args, "--model.encoder", str(enc), "--model.llm", str(llm), *extra,
                             "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
                             "--trainer.logger", "false"],
                       save_config_callback=None, auto_configure_optimizers=False)


def test_it_fresh_trains_packed_token_budgets(tiny_parts):
    cli = _parse(tiny_parts, IT_FRESH, extra=("--trainer.precision", "32-true"))
    assert cli.datamodule.batching == Batching(pack=True, max_tokens_per_row=4096, max_tokens_per_batch=8192)
    hp = cli.model.hparams
    assert (hp.loss_normalization, hp.loss_chunk_tokens, hp.activation_checkpointing) == ("step", 4096, 1)
    assert hp.lora["dropout"] == 0.0 and hp.learning_rate == 1e-5
    assert cli.trainer.accumulate_grad_batches == 1


def test_a_later_config_replaces_batching_whole_and_overrides_the_model_keys(tiny_parts, tmp_path):
    overlay = tmp_path / "cpu_overlay.yaml"  # what a CPU demo overlay on it_fresh sets
    overlay.write_text(yaml.safe_dump({
        "trainer": {"precision": "32-true", "accumulate_grad_batches": 1},
        "model": {"activation_checkpointing": 0, "loss_chunk_tokens": None, "label_logits_only": False,
                  "loss_normalization": "micro_batch"},
        "data": {"batching": {"batch_size": 16}}}))
    cli = _parse(tiny_parts, IT_FRESH, overlay)
    assert cli.datamodule.batching == Batching(batch_size=16)  # no packing key of it_fresh's left behind
    hp = cli.model.hparams
    assert (hp.activation_checkpointing, hp.loss_chunk_tokens, hp.label_logits_only) == (0, None, False)
    assert hp.loss_normalization == "micro_batch"
    flag = _parse(tiny_parts, IT_FRESH, overlay, extra=("--data.batching", '{"batch_size": 3, "bucket_size": 12}'))
    assert flag.datamodule.batching == Batching(batch_size=3, bucket_size=12)  # a flag replaces it whole too


def test_a_flag_sets_one_batching_key_with_its_type(tiny_parts):
    # A flag's value arrives as a string; it is read as the field's type, not compared as text.
    cli = _parse(tiny_parts, IT_FRESH, extra=("--trainer.precision", "32-true",
                                              "--data.batching.max_tokens_per_row", "2048"))
    assert cli.datamodule.batching == Batching(pack=True, max_tokens_per_row=2048, max_tokens_per_batch=8192)


def test_a_batching_value_of_the_wrong_type_names_the_key():
    default = Batching(batch_size=8)
    with pytest.raises(ValueError, match=r"(?s)data\.batching\.batch_size.*Expected a <class 'int'>.*Given value: eight"):
        Batching.of({"batch_size": "eight"}, "data.batching", default)
    with pytest.raises(ValueError, match=r"data\.batching: unknown key\(s\) \['bs'\]"):
        Batching.of({"bs": 8}, "data.batching", default)
    assert Batching.of({"batch_size": "12"}, "data.batching", default) == Batching(batch_size=12)
