"""Config values as plain data, and the sections of stacked YAML configs.

LightningCLI holds a dataclass or class default as `class_path` + `init_args` (or a
jsonargparse `Namespace`), a YAML may spell the same value as a plain mapping, and a
checkpoint stores it as a dict. `plain` maps all of these to the same plain dicts and lists,
so the CLI (which options differ from a checkpoint's) and export (the `model:` section of
the YAMLs a run was trained with) compare and merge values by what they mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import yaml
from jsonargparse import Namespace


def plain(value):
    """`value` as plain dicts, lists and scalars: `Namespace` and dataclasses become dicts, a
    `{class_path, init_args}` mapping becomes its `init_args`, and jsonargparse's `__path__`
    style keys are dropped."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        if "class_path" in value:
            value = value.get("init_args") or {}
        return {k: plain(v) for k, v in value.items() if not k.startswith("__")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def merged_section(configs: Sequence[str | Path], section: str) -> dict:
    """The `section:` mappings of stacked YAMLs, merged as `--config a --config b` merges them
    in LightningCLI: later files win, and a nested mapping is updated key by key.

    Raises:
        FileNotFoundError: a config file is missing.
        ValueError: a file's section is not a mapping.
    """
    merged: dict = {}
    for config in map(Path, configs):
        if not config.is_file():
            raise FileNotFoundError(f"config {config} not found")
        value = (yaml.safe_load(config.read_text()) or {}).get(section) or {}
        if not isinstance(value, dict):
            raise ValueError(f"{config}: `{section}:` must be a mapping, got {type(value).__name__}")
        if "class_path" in value:
            value = dict(value.get("init_args") or {})
        for key, item in value.items():
            old = merged.get(key)
            merged[key] = {**old, **item} if isinstance(old, dict) and isinstance(item, dict) else item
    return merged
