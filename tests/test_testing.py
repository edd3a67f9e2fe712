"""Test utilities (borealis/testing.py): the traceable tones decode back to their ids, tone pools
hold what they were given, a failing `borealis` run is reported with its stderr, and a run forked
from the CLI server behaves as one in a new interpreter."""

from __future__ import annotations

from pathlib import Path

import pytest

from borealis.shards import iter_shard, list_shards, read_index
from borealis.testing import make_pool, run_cli, tone, tone_id

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("sample_id", [0, 7, 42, 199])
def test_tone_id_inverts_tone(sample_id):
    assert tone_id(tone(sample_id, 0.25)) == sample_id


def test_make_pool_writes_every_id_with_its_spelled_transcript(tmp_path):
    make_pool(tmp_path / "p", "p", [3, 14, 15], max_samples=2)
    samples = [s for shard in list_shards(tmp_path / "p") for s in iter_shard(shard)]
    assert [s["key"] for s in samples] == ["p-3", "p-14", "p-15"]
    assert [s["meta"]["text"] for s in samples] == ["three", "one four", "one five"]
    assert [tone_id(s["audio"]) for s in samples] == [3, 14, 15]
    assert read_index(tmp_path / "p")["num_samples"] == 3


def test_run_cli_raises_with_the_commands_stderr(tmp_path):
    with pytest.raises(AssertionError, match="exited 2"):
        run_cli("fit", "--no-such-option", "1", cwd=tmp_path, timeout=120)


def test_a_forked_run_sees_what_a_new_interpreter_sees(tmp_path):
    """`run_cli` forks from a server that imported the CLI; the command must not tell: same
    merged config (relative paths read from its own folder), same exit status and messages."""
    (tmp_path / "mine.yaml").write_text("model:\n  learning_rate: 0.0123\n")
    args = ("fit", "--config", str(ROOT / "configs" / "it_fresh.yaml"), "--config", "mine.yaml", "--print_config")
    forked, fresh = run_cli(*args, cwd=tmp_path), run_cli(*args, cwd=tmp_path, interpreter=True)
    assert forked.stdout == fresh.stdout and "learning_rate: 0.0123" in forked.stdout
    errors = [str(pytest.raises(AssertionError, run_cli, "fit", "--config", "missing.yaml", cwd=tmp_path,
                                interpreter=interpreter).value) for interpreter in (False, True)]
    assert errors[0] == errors[1] and "missing.yaml" in errors[0]


def test_a_forked_run_imports_from_its_own_search_path(tmp_path):
    """The child searches what a new interpreter would (its folder, PYTHONPATH, site-packages),
    not the test process's path: tests/ is on the latter, so a test module's callback loads only
    when `pythonpath` names its folder."""
    args = ("fit", "--config", str(ROOT / "configs" / "it_fresh.yaml"),
            "--trainer.callbacks+=test_distributed.DumpRankWeights", "--trainer.callbacks.folder", "w", "--print_config")
    with pytest.raises(AssertionError, match="No module named 'test_distributed'"):
        run_cli(*args, cwd=tmp_path)
    assert "test_distributed.DumpRankWeights" in run_cli(*args, cwd=tmp_path, pythonpath=str(ROOT / "tests")).stdout
