"""tools/bench_augment.py: a tiny run accounts for every audio-second, times every effect of the
harsh stage on both sides, and prints the ratio it stores; harsh_stage() mirrors configs/it_fresh.yaml."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from borealis.shards import SAMPLE_RATE, ShardWriter, read_index

REPO = Path(__file__).resolve().parents[1]

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_augment.py"  # a script, not a package: loaded by path
_spec = importlib.util.spec_from_file_location("bench_augment", TOOL)
ba = sys.modules["bench_augment"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ba)


def _finite_positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def test_tiny_run_accounts_for_every_audio_second(tmp_path, capsys):
    lengths = [8000 + 1234 * i for i in range(6)]  # 0.5-0.9 s, whole samples, all different
    with ShardWriter(tmp_path / "speech", max_samples=4) as w:  # 2 shards: decoding crosses a shard boundary
        for i, n in enumerate(lengths):
            w.write(f"clip-{i}", {"task": "asr", "text": ""}, ba.speech_like(np.random.default_rng(i), n))
            if i == 1:  # a text-only sample: skipped, not counted
                w.write("chat-0", {"task": "chat", "messages": [{"role": "user", "content": "hi"}]})
    out = tmp_path / "result.json"
    repeat = 2
    assert ba.main(["--pool", str(tmp_path / "speech"), "--clips", "6", "--repeat", str(repeat), "--seed", "3",
                    "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())

    samples = sum(lengths) * repeat
    assert r["clips"] == 6 and r["repeat"] == repeat and r["clip_samples"] == sum(lengths)
    assert r["audio_samples"] == samples and r["audio_seconds"] == pytest.approx(samples / SAMPLE_RATE, rel=1e-12)
    timings = [r["decode"], r["stage_ours"], r["stage_baseline"]]
    timings += [row[side] for row in r["effects"] for side in ("ours", "baseline")]
    timings += [part["ours"] for row in r["effects"] for part in row.get("parts", [])]  # Codec: mp3, opus
    for t in timings:  # every measurement saw exactly the clips x repeat, and nothing else
        assert t["audio_samples"] == samples
        assert _finite_positive(t["x_realtime"]) and _finite_positive(t["ms_per_audio_s"])

    expected = [type(e).__name__ for e in ba.harsh_stage("noise", "ir").effects]
    assert [row["effect"] for row in r["effects"]] == expected and len(expected) == 11
    for row in r["effects"]:
        assert row["baseline"]["transform"] != "-"  # every harsh effect has an audiomentations counterpart
        assert re.search(rf"^\| {row['effect']} \| {row['p']:g} \|", printed, re.M)  # and a table row
        assert 0 <= row["applied"] <= 6 * repeat
    assert [p["codec"] for p in r["effects"][expected.index("Codec")]["parts"]] == ["mp3", "opus"]

    ours, base = r["stage_ours"]["x_realtime"], r["stage_baseline"]["x_realtime"]
    assert r["ratio"] == pytest.approx(ours / base, rel=1e-12)
    shown = float(re.search(r"ratio ours/baseline: ([0-9.]+)x", printed).group(1))
    assert shown == pytest.approx(ours / base, abs=0.005)
    summary = printed.strip().splitlines()[-1]
    assert summary.startswith("bench_augment harsh:") and f"ratio {r['ratio']:.2f}x" in summary
    assert r["target_met"] == (ours >= 100.0) and ("met" if r["target_met"] else "MISSED") in summary


def test_harsh_stage_mirrors_it_fresh_config():
    from_config = ba.load_stage(REPO / "configs" / "it_fresh.yaml", "harsh", noise_pool="N", ir_pool="I")
    built = ba.harsh_stage("N", "I")
    assert repr(from_config) == repr(built)  # names, order, p, ranges and pools of every effect
    assert vars(from_config.spec_augment) == vars(built.spec_augment)


def test_load_stage_names_the_stages_on_a_miss():
    with pytest.raises(ValueError, match=r"no stage named 'brutal'.*'clean', 'mild', 'harsh'"):
        ba.load_stage(REPO / "configs" / "it_fresh.yaml", "brutal")


def test_synthetic_pools_are_deterministic(tmp_path):
    a = ba.synthesise_speech(tmp_path / "a", 3, (0.5, 0.6), seed=1)
    b = ba.synthesise_speech(tmp_path / "b", 3, (0.5, 0.6), seed=1)
    ia, ib = read_index(a), read_index(b)
    assert [s["sha256"] for s in ia["shards"]] == [s["sha256"] for s in ib["shards"]]
    assert ia["num_samples"] == 3 and 1.5 <= ia["duration"] <= 1.8
