"""`borealis shards inspect` and the pool verifier (borealis/shards/verify.py): the listing's figures (from index.json and the .json members only),
`--verify` naming every kind of damage (altered bytes, truncation, an undecodable FLAC behind a
rewritten sha256, missing shards or index, duplicate keys), `--play`, and clear path errors."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from borealis.testing import tone, tone_id
from borealis.ingest import build_pool
from borealis.shards import ShardWriter, find_pools, index_samples, inspect_pool, list_shards, read_index, read_sample
from borealis.shards.cli import main as shards_main

# Pool "speech": (seconds, language) per tone sample `speech-<i>`, 3 samples per shard, plus one
# text-only chat. Durations sit on and beside the bin edges: [0, 1) -> "0-1", 1.0 -> "1-2", ...
SPEECH = [(0.5, "en"), (1.0, "ru"), (1.5, None), (2.0, "en"), (3.0, "ru"), (0.25, None), (30.5, "en")]
SPEECH_HISTOGRAM = {"0-1": 2, "1-2": 2, "2-5": 2, "5-10": 0, "10-20": 0, "20-30": 0, ">30": 1}
NOISE = [0.75, 6.0]  # pool "noise": {"kind": "noise"} clips, no task, no language
CHATS = [  # pool "chats": built by ingest.build_pool (so it has build_report.json); the last line is rejected
    json.dumps({"key": "c0", "language": "ru", "messages": [{"role": "user", "content": "привет"},
                                                             {"role": "assistant", "content": "привет!"}]}),
    json.dumps({"key": "c1", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}),
    "{not json",
]


def build_speech(out: Path) -> Path:
    with ShardWriter(out, max_samples=3) as w:
        for i, (seconds, language) in enumerate(SPEECH):
            meta = {"text": f"tone {i}", "task": "asr", **({"language": language} if language else {})}
            w.write(f"speech-{i}", meta, tone(i, seconds))
        chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        w.write("speech-chat", {"task": "chat", "language": "en", "messages": chat})
    return out


@pytest.fixture()
def root(tmp_path) -> Path:
    """corpus/speech (3 shards), corpus/aug/noise (2 shards), corpus/chats (build_report.json)."""
    corpus = tmp_path / "corpus"
    build_speech(corpus / "speech")
    with ShardWriter(corpus / "aug" / "noise", max_samples=1) as w:
        for i, seconds in enumerate(NOISE):
            w.write(f"noise-{i}", {"kind": "noise", "source": "synthetic"}, tone(20 + i, seconds))
    build_pool(CHATS, corpus / "chats", kind="text", progress=False)
    (corpus / "notes.txt").write_text("not a pool")
    return corpus


def run(capsys, *argv) -> tuple[int, str, str]:
    code = shards_main(["inspect", *map(str, argv), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def rewrite_tar(path: Path, edit) -> None:
    """Rewrite a shard member by member (`edit(name, data) -> (name, data)`) and make index.json
    agree with the new bytes, so only a member-level check can notice."""
    members = []
    with tarfile.open(path) as tf:
        for m in tf:
            members.append((m, tf.extractfile(m).read()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m, data in members:
            m.name, data = edit(m.name, data)
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    index_path = path.parent / "index.json"
    index = json.loads(index_path.read_text())
    entry = next(s for s in index["shards"] if s["name"] == path.name)
    entry["bytes"], entry["sha256"] = len(buf.getvalue()), hashlib.sha256(buf.getvalue()).hexdigest()
    index_path.write_text(json.dumps(index))


# ----------------------------------------------------------------------------- listing
def test_finds_pools_below_a_folder_and_by_glob(root):
    expected = [root / "aug" / "noise", root / "chats", root / "speech"]
    assert find_pools(root) == expected
    assert find_pools(root / "speech") == [root / "speech"]  # a pool folder is itself
    assert find_pools(f"{root}/*") == expected                # aug/ is searched below
    assert find_pools(f"{root}/speech/shard-*.tar") == [root / "speech"]


def test_listing_figures(root, tmp_path, capsys, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("the listing must not decode audio")

    monkeypatch.setattr("soundfile.read", no_decoding)
    code, out, err = run(capsys, root, "--json", tmp_path / "stats.json")
    assert code == 0, out + err
    doc = json.loads((tmp_path / "stats.json").read_text())
    assert doc["duration_bins"] == list(SPEECH_HISTOGRAM)
    pools = {Path(p["pool"]).name: p for p in doc["pools"]}
    assert list(pools) == ["noise", "chats", "speech"]

    speech = pools["speech"]
    seconds = sum(s for s, _ in SPEECH)
    assert (speech["shards"], speech["samples"], speech["text_only"]) == (3, 8, 1)
    assert speech["duration"] == pytest.approx(seconds) and speech["hours"] == pytest.approx(seconds / 3600)
    assert speech["tasks"] == {"asr": 7, "chat": 1}
    assert speech["languages"] == {"en": 4, "none": 2, "ru": 2}  # the chat is "en"; by count, then name
    assert speech["histogram"] == SPEECH_HISTOGRAM
    by_bin = {b: 0 for b in SPEECH_HISTOGRAM}  # the same, from the edges written out
    for s, _ in SPEECH:
        by_bin["0-1" if s < 1 else "1-2" if s < 2 else "2-5" if s < 5 else "20-30" if s < 30 else ">30"] += 1
    assert by_bin == SPEECH_HISTOGRAM
    assert speech["max_duration"] == 30.5 and speech["mean_duration"] == pytest.approx(seconds / 7, abs=1e-3)
    assert speech["build_report"] is None and speech["problems"] == []

    noise = pools["noise"]
    assert (noise["samples"], noise["tasks"], noise["languages"]) == (2, {"unknown": 2}, {"none": 2})
    assert noise["histogram"]["0-1"] == 1 and noise["histogram"]["5-10"] == 1
    chats = pools["chats"]
    assert (chats["samples"], chats["duration"], chats["text_only"]) == (2, 0.0, 2)
    assert chats["languages"] == {"none": 1, "ru": 1}
    assert chats["build_report"] == {"read": 3, "written": 2, "num_rejected": 1, "rejected": {"bad_json": 1}}

    total = doc["totals"]
    assert (total["pools"], total["shards"], total["samples"]) == (3, 6, 12)
    assert total["duration"] == pytest.approx(seconds + sum(NOISE))
    assert total["histogram"]["0-1"] == 3 and total["tasks"] == {"asr": 7, "chat": 3, "unknown": 2}
    assert total["problems"] == 0

    assert f"{root / 'speech'}: 3 shard(s), 8 samples, {seconds / 3600:.3f} h of audio" in out
    assert "languages  en 4 (50%), none 2 (25%), ru 2 (25%)" in out
    assert "build      read 3, written 2, rejected 1 (bad_json 1)" in out
    assert "  >30 s       1  14.3%  ####" in out  # 1 of 7 clips with audio
    assert "text-only  1 samples without audio" in out
    assert "total: 3 pool(s), 6 shard(s), 12 samples" in out


# ----------------------------------------------------------------------------- verify
def test_verify_passes_on_good_pools(root, capsys):
    code, out, err = run(capsys, root, "--verify")
    assert code == 0, out + err
    assert out.count("verify     OK") == 3 and "verify: all 3 pool(s) OK" in out
    script = subprocess.run([sys.executable, "-m", "borealis.commands", "shards", "inspect", str(root / "speech"),
                             "--verify", "--no-progress"], capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "verify     OK" in script.stdout, script.stderr  # runs as a command too
    stats = inspect_pool(root / "speech", verify=True)
    assert stats["verified"] and stats["problems"] == [] and stats["samples"] == 8


def test_verify_names_a_shard_with_altered_bytes(root, capsys):
    shard = root / "speech" / "shard-000001.tar"
    ref = index_samples([shard])[1]
    offset, size = ref.members["flac"]
    data = bytearray(shard.read_bytes())
    data[offset + size // 2] ^= 0xFF  # one flipped bit pattern inside a FLAC frame; same length
    shard.write_bytes(bytes(data))
    assert run(capsys, root)[0] == 0  # the listing reads only the .json members
    code, out, _ = run(capsys, root, "--verify")
    assert code == 1
    assert f"pool {root / 'speech'}: shard shard-000001.tar: sha256 " in out and "(bytes altered)" in out
    assert "verify: " in out and "problem(s) in 1 of 3 pool(s)" in out


def test_verify_names_the_sample_where_a_shard_is_truncated(root, capsys):
    shard = root / "speech" / "shard-000000.tar"
    last = index_samples([shard])[-1]
    offset, size = last.members["flac"]
    full = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(offset + size // 2)
    code, out, _ = run(capsys, root / "speech", "--verify")
    assert code == 1
    assert f"shard shard-000000.tar: {offset + size // 2} bytes, index.json says {full} (truncated?)" in out
    assert f"shard shard-000000.tar: sample {last.key!r}: cannot index the tar" in out
    assert "Traceback" not in out


def test_verify_decodes_every_flac(root, capsys):
    """A corrupt FLAC member behind a rewritten sha256: only decoding catches it."""
    pool = root / "speech"

    def corrupt(name: str, data: bytes) -> tuple[str, bytes]:
        if name == "speech-4.flac":
            mid = len(data) // 2
            data = data[:mid] + bytes(200) + data[mid + 200:]
        return name, data

    shard = pool / "shard-000001.tar"  # speech-3, speech-4, speech-5
    rewrite_tar(shard, corrupt)
    assert run(capsys, pool)[0] == 0  # sha256 agrees and the .json members are intact
    code, out, _ = run(capsys, pool, "--verify")
    assert code == 1
    assert f"pool {pool}: shard shard-000001.tar: sample 'speech-4': undecodable .flac audio" in out
    assert "sha256" not in out.split("PROBLEM", 1)[1]  # the hash matches: decoding found it
    problems = inspect_pool(pool, verify=True)["problems"]
    assert [(p.shard, p.key) for p in problems] == [("shard-000001.tar", "speech-4")]


def test_verify_gathers_missing_shards_index_and_duplicate_keys(root, capsys):
    (root / "speech" / "shard-000002.tar").rename(root / "speech" / "shard-000009.tar")
    (root / "aug" / "noise" / "index.json").unlink()
    rewrite_tar(root / "chats" / "shard-000000.tar", lambda name, data: (name.replace("c1.", "c0."), data))
    code, out, _ = run(capsys, root, "--verify")
    assert code == 1
    assert f"pool {root / 'speech'}: shard shard-000002.tar: missing (listed in index.json)" in out
    assert f"pool {root / 'speech'}: shard shard-000009.tar: not listed in index.json" in out
    assert f"pool {root / 'aug' / 'noise'}: no shard index at" in out
    assert "shard shard-000000.tar: sample 'c0': cannot index the tar: duplicate member 'c0.json'" in out
    assert "problem(s) in 3 of 3 pool(s)" in out
    # without an index the shards on disk are still decoded and counted
    noise = inspect_pool(root / "aug" / "noise", verify=True)
    assert (noise["samples"], noise["shards"], len(noise["problems"])) == (2, 2, 1)


def test_verify_finds_keys_repeated_across_shards_and_count_mismatches(root, capsys):
    pool = root / "speech"
    rewrite_tar(pool / "shard-000001.tar", lambda name, data: (name.replace("speech-3.", "speech-0."), data))
    index = read_index(pool)
    index["shards"][2]["num_samples"] += 1
    index["num_samples"] += 1
    (pool / "index.json").write_text(json.dumps(index))
    code, out, _ = run(capsys, pool, "--verify")
    assert code == 1
    assert "shard shard-000001.tar: sample 'speech-0': key also in shard-000000.tar" in out
    assert "shard shard-000002.tar: holds 2 samples, index.json says 3" in out
    assert "holds 8 samples, index.json says 9" in out


# ----------------------------------------------------------------------------- play
def test_play_writes_the_stored_audio(root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.wav"
    code, stdout, _ = run(capsys, root, "--play", "speech-4", "--out", out)
    assert code == 0 and f"wrote {out}" in stdout and '"text": "tone 4"' in stdout
    audio, rate = sf.read(out, dtype="float32")
    stored = read_sample(next(r for r in index_samples(list_shards(root / "speech")) if r.key == "speech-4"))["audio"]
    assert rate == 16000 and audio.shape == stored.shape == (3 * 16000,)
    assert np.max(np.abs(audio - stored)) <= 1 / 32768
    assert np.max(np.abs(audio - tone(4, 3.0))) <= 1 / 32768 and tone_id(audio) == 4

    monkeypatch.chdir(tmp_path)
    assert run(capsys, root / "aug", "--play", "noise-1")[0] == 0
    assert tone_id(sf.read(tmp_path / "noise-1.wav")[0]) == 21  # default: KEY.wav here


def test_play_fails_cleanly(root, tmp_path, capsys):
    code, _, err = run(capsys, root, "--play", "nope", "--out", tmp_path / "n.wav")
    assert code == 2 and "no sample 'nope' in 3 pool(s)" in err and not (tmp_path / "n.wav").exists()
    code, out, err = run(capsys, root, "--play", "speech-chat", "--out", tmp_path / "c.wav")
    assert code == 2 and "text-only" in err and '"task": "chat"' in out and not (tmp_path / "c.wav").exists()


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("argv, message", [
    (["{root}/missing"], "does not exist"),
    (["{root}/aug/../notes.txt"], "no shard pools in"),
    (["{root}/zz*"], "matches nothing"),
    (["{root}/speech", "--out", "x.wav"], "--out needs --play"),
    (["{root}/speech", "--play", "k", "--verify"], "--play writes one sample"),
])
def test_bad_paths_and_options(root, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        shards_main(["inspect", *(a.format(root=root) for a in argv)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err
    if "{root}" in argv[0] and "--" not in " ".join(argv):
        assert argv[0].format(root=root) in err  # the message names the path
