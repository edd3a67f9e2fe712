"""borealis/settings.py: config values compared by what they mean (`plain`), and the sections of
stacked YAML configs merged as LightningCLI merges `--config a --config b` (`merged_section`)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from jsonargparse import Namespace

from borealis.settings import merged_section, plain


@dataclass
class Lora:
    r: int = 8
    alpha: int = 16


def test_plain_maps_every_spelling_of_a_value_to_the_same_data():
    as_yaml = {"lora": {"r": 8, "alpha": 16}, "layers": [1, 2]}
    as_class_path = {"lora": {"class_path": "borealis.modeling.LoraSettings", "init_args": {"r": 8, "alpha": 16}},
                     "layers": (1, 2)}
    as_namespace = Namespace(lora=Namespace(r=8, alpha=16), layers=[1, 2], __path__="configs/x.yaml")
    as_dataclass = {"lora": Lora(), "layers": [1, 2]}
    assert plain(as_yaml) == plain(as_class_path) == plain(as_namespace) == plain(as_dataclass) == as_yaml
    assert plain({"class_path": "x.Y"}) == {}  # no init_args: no options
    assert plain(3) == 3 and plain(None) is None and plain("s") == "s"


def test_merged_section_later_files_win_key_by_key(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  encoder: a\n  lora: {r: 8, alpha: 16}\n  dtype: bf16\ndata:\n  x: 1\n")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  class_path: borealis.module.BorealisLightningModule\n"
                       "  init_args:\n    lora: {r: 4}\n    dtype: fp32\n")
    assert merged_section([base, overlay], "model") == {"encoder": "a", "lora": {"r": 4, "alpha": 16}, "dtype": "fp32"}
    assert merged_section([base], "data") == {"x": 1}
    assert merged_section([overlay], "data") == {}  # a file without the section adds nothing


def test_merged_section_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        merged_section([tmp_path / "missing.yaml"], "model")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2]\n")
    with pytest.raises(ValueError, match=r"bad.yaml: `model:` must be a mapping, got list"):
        merged_section([bad], "model")
