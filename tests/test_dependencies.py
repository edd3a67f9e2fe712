"""Every declared runtime dependency imports and does its job once, and the package imports
nothing it does not declare.

A dependency that installs but does not load (a torchaudio built against another torch fails
with `undefined symbol` at import) is caught here, not by a user's first run. Each
exercise is the smallest real use of the library; the list must name every entry of
`pyproject.toml`'s `dependencies`, so a new dependency comes with its check.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import io
import re
import sys
import tarfile
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> dict[str, str]:
    """Declared runtime requirements: normalised distribution name -> requirement string."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_norm(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]): d for d in deps}


def _extras() -> set[str]:
    """Distributions of the optional extras (`dev` aside): normalised names, e.g. `liger-kernel`."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {_norm(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]) for name, deps in extras.items() if name != "dev"
            for d in deps}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _torch():
    import torch

    assert torch.ones(2, 2).sum().item() == 4


def _torchaudio():
    import torch
    import torchaudio

    y = torchaudio.functional.resample(torch.randn(16000), 16000, 8000)
    assert y.shape == (8000,)


def _lightning():
    import lightning as L

    assert L.seed_everything(3) == 3


def _lightning_utilities():
    from lightning_utilities.core.apply_func import apply_to_collection

    assert apply_to_collection({"a": [1, 2]}, int, lambda x: x * 2) == {"a": [2, 4]}


def _transformers():
    from transformers import WhisperFeatureExtractor

    feats = WhisperFeatureExtractor(feature_size=80)(np.zeros(1600, np.float32), sampling_rate=16000,
                                                     return_tensors="np")["input_features"]
    assert feats.shape == (1, 80, 3000)


def _peft():
    import torch
    from peft import LoraConfig, get_peft_model

    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model = get_peft_model(net, LoraConfig(r=2, target_modules=["0"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def _audiomentations():
    import audiomentations as am

    x = np.full(1600, 0.1, np.float32)
    y = am.Gain(min_gain_db=6.0, max_gain_db=6.0, p=1.0)(samples=x, sample_rate=16000)
    assert np.allclose(y, x * 10 ** (6 / 20), rtol=1e-5)


def _webdataset():
    import webdataset as wds

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("a.txt", b"hi"), ("a.json", b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    import tempfile

    path = Path(tempfile.mkdtemp()) / "s.tar"
    path.write_bytes(buf.getvalue())
    (sample,) = list(wds.WebDataset(str(path), shardshuffle=False))
    assert sample["__key__"] == "a" and sample["txt"] == b"hi"


def _jiwer():
    import jiwer

    assert jiwer.wer("a b c d", "a b x d") == 0.25


def _tensorboard(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path) as writer:
        writer.add_scalar("x", 1.0, 0)
    assert list(tmp_path.glob("events.out.tfevents.*"))


def _jsonargparse():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--n", type=int)
    assert parser.parse_args(["--n", "3"]).n == 3


def _soundfile():
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(160, np.float32), 16000, format="FLAC")
    assert sf.info(io.BytesIO(buf.getvalue())).frames == 160


def _soxr():
    import soxr

    assert len(soxr.resample(np.zeros(16000, np.float32), 16000, 8000)) == 8000


def _scipy():
    from scipy.signal import oaconvolve

    assert np.allclose(oaconvolve(np.array([1.0, 2.0]), np.array([1.0])), [1.0, 2.0])


def _numpy():
    assert np.random.default_rng(0).integers(10) == np.random.default_rng(0).integers(10)


def _pyyaml():
    import yaml

    assert yaml.safe_load("a: [1, 2]") == {"a": [1, 2]}


def _safetensors(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    save_file({"w": torch.arange(3.0)}, tmp_path / "w.safetensors")
    assert load_file(tmp_path / "w.safetensors")["w"].tolist() == [0.0, 1.0, 2.0]


def _huggingface_hub(tmp_path):
    import torch
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict({"w": torch.zeros(2)}, tmp_path)
    assert list(tmp_path.glob("*.safetensors"))


def _tokenizers():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert tok.encode("a b c").ids == [0, 1, 2]


def _tqdm():
    from tqdm import tqdm

    assert sum(tqdm(range(4), disable=True)) == 6


def _matplotlib(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    FigureCanvasAgg(fig)
    fig.subplots().imshow(np.eye(3))
    fig.savefig(tmp_path / "x.png")
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fsspec(tmp_path):
    import fsspec

    (tmp_path / "a.bin").write_bytes(b"abc")
    with fsspec.open(f"file://{tmp_path}/a.bin", "rb") as f:
        assert f.read() == b"abc"


def _aiohttp():
    import aiohttp

    assert aiohttp.ClientTimeout(sock_read=2.0).sock_read == 2.0


def _braceexpand():
    from braceexpand import braceexpand

    assert list(braceexpand("s-{0..2}.tar")) == ["s-0.tar", "s-1.tar", "s-2.tar"]


EXERCISES = {
    "torch": _torch, "torchaudio": _torchaudio, "lightning": _lightning,
    "lightning-utilities": _lightning_utilities, "transformers": _transformers, "peft": _peft,
    "audiomentations": _audiomentations, "webdataset": _webdataset, "jiwer": _jiwer,
    "tensorboard": _tensorboard, "jsonargparse": _jsonargparse, "soundfile": _soundfile, "soxr": _soxr,
    "scipy": _scipy, "numpy": _numpy, "pyyaml": _pyyaml, "safetensors": _safetensors,
    "huggingface-hub": _huggingface_hub, "tokenizers": _tokenizers, "tqdm": _tqdm, "matplotlib": _matplotlib,
    "fsspec": _fsspec, "aiohttp": _aiohttp, "braceexpand": _braceexpand,
}


def test_every_declared_dependency_has_an_exercise():
    assert set(_declared()) == set(EXERCISES)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_declared_dependency_imports_and_works(name, tmp_path):
    exercise = EXERCISES[name]
    exercise(tmp_path) if exercise.__code__.co_argcount else exercise()


def test_installed_versions_satisfy_the_pins():
    """`torch==2.11.0` with `torchaudio==2.11.0`: the pair whose binaries load together."""
    declared = _declared()
    for name in ("torch", "torchaudio"):
        pinned = declared[name].split("==")[1]
        assert md.version(name).split("+")[0] == pinned, (name, md.version(name), declared[name])


def test_the_package_imports_only_what_it_declares():
    """Third-party imports anywhere in borealis/ (lazy ones too) are declared dependencies or
    named optional extras."""
    optional = _extras()  # e.g. datasets (`hf`), liger-kernel (`gpu`); s3fs/gcsfs load through fsspec by protocol
    assert {"datasets", "liger-kernel"} <= optional, optional  # the lazy imports of shards/hf and loss.py
    owners = md.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    undeclared = set()
    for path in (ROOT / "borealis").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                if top in stdlib or top in {"borealis", "__future__"} or _norm(top) in optional:
                    continue
                dists = {_norm(d) for d in owners.get(top, [top])}
                if not dists & set(_declared()):
                    undeclared.add(f"{top} ({path.relative_to(ROOT)})")
    assert not undeclared, sorted(undeclared)
