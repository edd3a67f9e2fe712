"""tools/bench_shards.py: a tiny run shards the same corpus with 1 and 2 workers, byte-identically."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_shards.py"  # a script, not a package: loaded by path
_spec = importlib.util.spec_from_file_location("bench_shards", TOOL)
bench = sys.modules["bench_shards"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_bench_shards_tiny_run(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--files", "4", "--seconds", "1", "2", "--workers", "1", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["identical"] and [r["workers"] for r in rows] == [1, 2]
    assert all(r["written"] == 4 and r["rejected"] == 0 for r in rows)
    assert 4 / 3600 <= rows[0]["audio_hours"] <= 8 / 3600  # 4 clips of 1-2 s
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0
    assert "h of audio per minute with --workers" in capsys.readouterr().out
