"""Long-audio check: a ~95 s recording of concatenated benchmark utterances vs the same pieces one by one.

What:
    python tools/eval_long_audio.py --config configs/demo.yaml --ckpt_path demo/runs/checkpoints/last.ckpt
    python tools/eval_long_audio.py ... -- --data.predict.min_pause null   # fill windows instead
    python tools/eval_long_audio.py ... --pool demo/shards/bench/demo_en --seconds 95 --json out.json

Takes utterances of a benchmark pool in order until they make `--seconds` of audio, writes
each as its own wav and all of them, joined by pauses of 0.3-0.8 s, as one long wav; then runs
`borealis predict --data.predict.files` twice through the real CLI, once on the long file
(cut into encoder-sized windows at pauses, overlapping where it must cut speech, text merged)
and once on the pieces, and prints both WERs (jiwer, after the project's normalisation) and
their ratio. The long-audio claim holds when long WER <= 1.2 x the pieces' WER.

Why: the reference model card says audio over ~30 s must be chunked by the caller; Borealis
chunks itself, and this measures what the chunking costs in accuracy on a trained model.

Cost: two `borealis predict` runs (model load + generation on ~95 s of audio each: ~30 s on
2 CPU cores for the demo model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf


from borealis.metrics import word_errors
from borealis.shards import SAMPLE_RATE, iter_shard, list_shards


def build_recording(pool: str, seconds: float, seed: int) -> tuple[list[dict], np.ndarray]:
    """Utterances of `pool` in order until `seconds`, and their concatenation with pauses."""
    rng = np.random.default_rng(seed)
    pieces, parts, total = [], [], 0.0
    for shard in list_shards(pool):
        for s in iter_shard(shard):
            if s["audio"] is None or not s["meta"].get("text"):
                continue
            pause = np.zeros(round(rng.uniform(0.3, 0.8) * SAMPLE_RATE), np.float32)
            pieces.append({"key": s["key"], "text": s["meta"]["text"], "language": s["meta"].get("language"),
                           "audio": s["audio"]})
            parts += [s["audio"], pause]
            total += (s["audio"].size + pause.size) / SAMPLE_RATE
            if total >= seconds:
                return pieces, np.concatenate(parts)
    raise ValueError(f"{pool} holds only {total:.1f} s of transcribed audio, less than --seconds {seconds}")


def predict(config: Sequence[str], ckpt: str, files: list[str], out: Path, extra: Sequence[str] = ()) -> list[dict]:
    """`borealis predict` on `files` (+ `extra` options); returns its rows in input order."""
    cmd = [sys.executable, "-m", "borealis.cli", "predict", *[a for c in config for a in ("--config", c)],
           "--ckpt_path", ckpt, "--data.predict.sets", "{}", "--data.predict.files", json.dumps(files),
           "--model.report_dir", str(out), *extra]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"borealis predict failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "predictions.rank0.jsonl").read_text().splitlines()]
    by_file = {r["file"]: r for r in rows}
    return [by_file[f] for f in files]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", action="append", required=True, help="training config(s), as for borealis predict")
    p.add_argument("--ckpt_path", required=True, help="the checkpoint to evaluate")
    p.add_argument("--pool", default="demo/shards/bench/demo_en", help="benchmark pool the utterances come from")
    p.add_argument("--seconds", type=float, default=95.0, help="length of the long recording")
    p.add_argument("--seed", type=int, default=0, help="seeds the pauses")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("extra", nargs="*", help="more `borealis predict` options, after `--` (e.g. -- "
                                            "--data.predict.min_pause 0.25)")
    args = p.parse_args(argv)

    pieces, long_audio = build_recording(args.pool, args.seconds, args.seed)
    with tempfile.TemporaryDirectory(prefix="long_audio_") as tmp:
        tmp = Path(tmp)
        (tmp / "pieces").mkdir()
        files = []
        for i, piece in enumerate(pieces):
            files.append(str(tmp / "pieces" / f"{i:03d}_{piece['key']}.wav"))
            sf.write(files[-1], piece["audio"], SAMPLE_RATE)
        sf.write(tmp / "long.wav", long_audio, SAMPLE_RATE)
        one_by_one = predict(args.config, args.ckpt_path, files, tmp / "out_pieces", args.extra)
        (long_row,) = predict(args.config, args.ckpt_path, [str(tmp / "long.wav")], tmp / "out_long", args.extra)
    language = pieces[0]["language"]
    errors, words = word_errors([x["text"] for x in pieces], [r.get("prediction", "") for r in one_by_one],
                                [x["language"] for x in pieces])
    pieces_wer = sum(errors) / sum(words)
    reference = " ".join(x["text"] for x in pieces)
    (long_errors,), (long_words,) = word_errors([reference], [long_row.get("prediction", "")], [language])
    long_wer = long_errors / long_words
    ratio = long_wer / pieces_wer if pieces_wer else float("inf") if long_wer else 1.0
    result = {"pool": args.pool, "utterances": len(pieces), "seconds": round(long_audio.size / SAMPLE_RATE, 2),
              "windows": len(long_row.get("windows", [])), "pieces_wer": round(100 * pieces_wer, 2),
              "long_wer": round(100 * long_wer, 2), "ratio": round(ratio, 3)}
    print(f"{result['utterances']} utterances, {result['seconds']} s, {result['windows']} windows: "
          f"WER one by one {result['pieces_wer']:.2f}%, long recording {result['long_wer']:.2f}% "
          f"({result['ratio']:.2f}x; the target is <= 1.2x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
