"""tools/probe_adapter.py on the tiny parts: every head trains the adapter on cached encoder states,
scores each benchmark, and leaves the frozen bases untouched; bad options and pools fail by name."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from borealis.testing import make_pool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import probe_adapter  # noqa: E402


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    make_pool(root / "asr", "asr", range(16), max_samples=8)
    make_pool(root / "bench_a", "a", range(100, 104))
    make_pool(root / "chat", "chat", range(4), text_only=True)
    return root


@pytest.mark.parametrize("head", probe_adapter.HEADS)
def test_each_head_learns_and_scores_every_benchmark(head, tiny_parts, pools, tmp_path, monkeypatch):
    enc, llm = tiny_parts
    frozen: dict[str, torch.Tensor] = {}
    built = []
    from borealis.modeling import BorealisForConditionalGeneration
    original = BorealisForConditionalGeneration.from_parts

    def spy(*args, **kwargs):  # keep the built model to compare its frozen weights afterwards
        model = original(*args, **kwargs)
        frozen.update({k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad})
        built.append(model)
        return model

    monkeypatch.setattr(BorealisForConditionalGeneration, "from_parts", staticmethod(spy))
    steps = 24
    out = tmp_path / "probe.json"
    result = probe_adapter.main(["--encoder", str(enc), "--llm", str(llm), "--train", str(pools / "asr"),
                                 "--bench", str(pools / "bench_a"), "--head", head,
                                 "--steps", str(steps), "--batch", "8", "--lr", "1e-3", "--warmup", "1",
                                 "--log-every", "8", "--eval-every", "12", "--lora-r", "4",
                                 "--max-new-tokens", "4", "--json", str(out)])
    assert result["train_clips"] == 16
    assert [p["step"] for p in result["loss"]] == [8, 16, 24]
    assert all(math.isfinite(p["loss"]) for p in result["loss"])
    assert result["loss"][-1]["loss"] < result["loss"][0]["loss"]  # it learns
    assert [e["step"] for e in result["evaluations"]] == [12, 24]
    for evaluation in result["evaluations"]:
        assert set(evaluation["wer"]) == {"bench_a", "avg"} and evaluation["wer"]["bench_a"] >= 0
    assert json.loads(out.read_text())["evaluations"] == result["evaluations"]

    model, = built
    params = dict(model.named_parameters())
    for name, before in frozen.items():
        assert torch.equal(params[name], before), name  # the bases stay frozen
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert any(n.startswith("adapter.") for n in trainable)
    assert any("lora_" in n for n in trainable) == (head == "lm")


def test_bad_options_name_the_option(capsys):
    with pytest.raises(SystemExit):
        probe_adapter.main(["--steps", "0", "--lr", "-1"])
    err = capsys.readouterr().err
    assert "--steps must be >= 1, got 0" in err and "--lr must be > 0, got -1.0" in err


def test_a_pool_without_transcribed_clips_is_named(tiny_parts, pools):
    enc, llm = tiny_parts
    with pytest.raises(ValueError, match=f"{pools / 'chat'}: no transcribed clips"):
        probe_adapter.main(["--encoder", str(enc), "--llm", str(llm), "--train", str(pools / "chat"),
                            "--bench", str(pools / "bench_a"), "--steps", "1"])
