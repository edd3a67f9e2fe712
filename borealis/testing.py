"""Test utilities: tiny Whisper/Qwen3 configs, a tiny tokenizer, traceable audio, tone pools, the CLI.

The test suite and anyone writing tests against Borealis use these: tiny, deterministic
parts built in code (configs and tokenizer from `borealis.demo.models`, the builders of the
CPU demo's base models, at the smallest sizes that keep every code path real), audio whose
frequency encodes a sample id (`tone`, `tone_id`), shard pools of such audio (`make_pool`),
and `borealis` run in a process of its own (`run_cli`). Nothing is downloaded.
"""

from __future__ import annotations

import os

TINY_TEXT = [
    "zero one two three four five six seven eight nine",
    "ноль один два три четыре пять шесть семь восемь девять",
    "Transcribe the audio. Расшифруй аудио. You are a helpful voice assistant.",
    "turn on the light open the door what is the first word how many words",
]


def build_tokenizer(texts=TINY_TEXT):
    """A GPT-2-style byte-level BPE tokenizer with Qwen's ChatML special tokens (vocab ~300)."""
    from borealis.demo.models import train_tokenizer

    return train_tokenizer(list(texts) * 4, vocab_size=320, qwen3=False)  # 4 passes over TINY_TEXT, as trained


# what every `run_cli` process runs under: offline (no hub), and no GPU even where one is present
CLI_ENV = {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


def run_cli(*args: str, cwd, pythonpath: str | None = None, timeout: int = 600, interpreter: bool = False):
    """`python -m borealis.cli ARGS` in a process of its own, offline and on the CPU; asserts
    exit 0 (showing the end of stderr) and returns a `subprocess.CompletedProcess` (returncode,
    stdout, stderr). `pythonpath` is prepended to PYTHONPATH (e.g. tests/, for callbacks defined
    in a test module).

    The process is forked from a server that has imported `borealis.cli` and nothing else ran
    in (`multiprocessing`'s forkserver, one per test process): a fresh process with the
    command's own working folder, environment, `sys.argv` and `sys.path`, as `python -m`
    gives, without the ~7 s of imports that a new interpreter pays on every call.
    `interpreter=True` starts a new interpreter instead: needed where Lightning re-runs the
    command line to start more ranks (`strategy=ddp`, `fsdp` with `devices>1`). As with any
    non-fork `multiprocessing` start, a script that calls `run_cli` keeps its code under
    `if __name__ == "__main__":`."""
    import subprocess
    import sys

    env = {**os.environ, **CLI_ENV}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, os.environ.get("PYTHONPATH", "")])
    if interpreter:
        proc = subprocess.run([sys.executable, "-m", "borealis.cli", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
    else:
        proc = _forked_cli(list(args), str(cwd), env, timeout)
    if proc.returncode != 0:
        raise AssertionError(f"borealis {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def _cli_server():
    """The forkserver context whose server has `borealis.cli` imported; started on first use
    with `CLI_ENV` in its environment, as the imports read some of it (the hub's offline flag)."""
    import multiprocessing
    from multiprocessing import forkserver
    from unittest import mock

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["borealis.commands", "borealis.cli"])
    with mock.patch.dict(os.environ, CLI_ENV):  # only while the server starts
        forkserver.ensure_running()
    return context


def _forked_cli(args: list[str], cwd: str, env: dict, timeout: int):
    """`run_cli`'s default: the command in a child of `_cli_server`, its stdout and stderr
    caught in files; killed after `timeout` seconds."""
    import json
    import subprocess
    import sys
    import tempfile

    # the search path a new interpreter gets under `env` (PYTHONPATH, site-packages), not the test process's
    path = json.loads(subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                                     env=env, capture_output=True, text=True, check=True).stdout)
    context = _cli_server()
    with tempfile.TemporaryDirectory(prefix="borealis-cli-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        for name in (out, err):
            open(name, "w").close()  # read back even if the child dies before it opens them
        child = context.Process(target=_cli_child, args=(args, cwd, env, path, out, err), name="borealis")
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["borealis", *args], timeout)
        with open(out, encoding="utf-8", errors="replace") as f_out, open(err, encoding="utf-8", errors="replace") as f_err:
            proc = subprocess.CompletedProcess(["borealis", *args], child.exitcode, f_out.read(), f_err.read())
    if proc.returncode and not (proc.stdout or proc.stderr):
        proc.stderr = ("the forked process ended before the command started (its traceback is on this process's "
                       "stderr); a script that calls run_cli needs `if __name__ == \"__main__\":` around its code, "
                       "as multiprocessing's forkserver imports the script's main module in each child")
    return proc


def _cli_child(args: list[str], cwd: str, env: dict, path: list[str], out: str, err: str) -> None:
    """In the forked child: the state `python -m borealis.cli ARGS` starts with, then its entry point."""
    import sys

    import borealis.cli
    from borealis.commands import main

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = [os.getcwd(), *path]  # `-m` puts the working folder first
    sys.argv = [borealis.cli.__file__, *args]
    for fd, name in ((1, out), (2, err)):
        os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.exit(main())


def tiny_whisper_config(max_source_positions: int = 100):
    """The tests' Whisper: 100 positions = 200 mel frames = a 2 s window."""
    from borealis.demo.models import WhisperSize, whisper_config

    size = WhisperSize(
        dim=32, layers=2, heads=2,  # 2 layers, 2 heads: the smallest that keep every code path real
        ffn=64,  # 2 x d_model
        mel_bins=80,  # Whisper <= v2 mel bins (large-v3 uses 128)
        max_source_positions=max_source_positions)
    # the unused decoder's feed-forward width 64; init 0.02: Whisper's default
    return whisper_config(size, decoder_ffn=64, init_std=0.02)


def tiny_qwen3_config(vocab_size: int):
    """The tests' Qwen3, with `vocab_size` embedding rows (tied)."""
    from borealis.demo.models import Qwen3Size, qwen3_config

    size = Qwen3Size(
        dim=48, ffn=96,  # hidden size divisible by the 4 heads; MLP 2 x hidden
        layers=2,  # the smallest that keeps every code path real
        heads=4, kv_heads=2, head_dim=12,  # GQA like Qwen3-4B (32q/8kv)
        max_positions=512)  # a 2 s window's 25 audio slots (k=4) plus the prompt
    # init 0.3: large enough that frozen embeddings can express confident logits (LoRA-only runs)
    return qwen3_config(vocab_size, size, init_std=0.3)


def tone(sample_id: int, seconds: float, sr: int = 16000):
    """Traceable audio: a sine whose frequency encodes the sample id (200 Hz + 10 Hz * id)."""
    import numpy as np

    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * (200 + 10 * sample_id) * t)).astype(np.float32)


def tone_id(wave, sr: int = 16000) -> int:
    """Inverse of `tone`: the sample id from the spectral peak."""
    import numpy as np

    spectrum = np.abs(np.fft.rfft(wave))
    freq = np.argmax(spectrum) * sr / len(wave)
    return int(round((freq - 200) / 10))


def make_pool(out, name: str, ids, *, language: str = "en", text_only: bool = False, max_samples: int = 10,
              seconds=lambda i: 0.2 + 0.05 * (i % 5)):
    """A shard pool of tone samples `{name}-{id}` whose transcript spells the id."""
    from borealis.shards import ShardWriter

    with ShardWriter(out, max_samples=max_samples) as w:
        for i in ids:
            words = " ".join("zero one two three four five six seven eight nine".split()[int(c)] for c in str(i))
            if text_only:
                meta = {"task": "chat", "language": language, "source": name,
                        "messages": [{"role": "user", "content": f"spell {i}"}, {"role": "assistant", "content": words}]}
                w.write(f"{name}-{i}", meta)
            else:
                w.write(f"{name}-{i}", {"text": words, "language": language, "source": name, "task": "asr"},
                        tone(i, seconds(i)))
    return out
