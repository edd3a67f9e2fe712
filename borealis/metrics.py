"""Text normalisation, WER, and the per-benchmark report.

WER is corpus-level per benchmark (total word errors / total reference words, as jiwer and
the seed compute it), after Whisper's basic normaliser (lower-case, punctuation and symbols
removed; diacritics kept, so Russian й stays й) plus ё -> е. Errors and word counts are
summed, not averaged, so they add up exactly across batches and ranks. `avg` is the
unweighted mean over benchmarks, the seed's "average WER over the 6 sets".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import jiwer
from transformers.models.whisper.english_normalizer import BasicTextNormalizer

_basic = BasicTextNormalizer(remove_diacritics=False, split_letters=False)


def normalize_text(text: str, language: str | None = None) -> str:
    """Lower-case, strip punctuation and symbols, fold ё into е, collapse spaces."""
    text = _basic(text).replace("ё", "е")
    return " ".join(text.split())


def word_errors(references: Sequence[str], hypotheses: Sequence[str],
                languages: Sequence[str | None] | None = None) -> tuple[list[int], list[int]]:
    """Per-sample (word errors, reference words) after normalisation.

    An empty reference scores every hypothesis word as an insertion.
    """
    languages = languages or [None] * len(references)
    errors, words = [], []
    for ref, hyp, lang in zip(references, hypotheses, languages, strict=True):
        ref, hyp = normalize_text(ref, lang), normalize_text(hyp, lang)
        if not ref:
            errors.append(len(hyp.split()))
            words.append(0)
            continue
        out = jiwer.process_words(ref, hyp)
        errors.append(out.substitutions + out.deletions + out.insertions)
        words.append(len(ref.split()))
    return errors, words


def wer_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """A table shaped like the seed's: rows = checkpoints, columns = benchmarks + Avg (WER %)."""
    benchmarks = sorted({b for row in results.values() for b in row if b != "avg"})
    head = ["checkpoint", *benchmarks, "Avg"]
    rows = [[name, *(_pct(r.get(b)) for b in benchmarks), _pct(r.get("avg"))] for name, r in results.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: " | ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                    for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), "-+-".join("-" * w for w in widths), *map(line, rows)])


def average_wer(per_benchmark: Mapping[str, float]) -> float:
    values = [v for k, v in per_benchmark.items() if k != "avg" and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def rtfx(audio_seconds: float, seconds: float) -> float:
    """Real-time factor as a speed: seconds of audio transcribed per wall-clock second."""
    return audio_seconds / seconds if seconds > 0 else float("nan")


def write_report(path: str | Path, checkpoint: str, per_benchmark: Mapping[str, dict],
                 overall: Mapping[str, float] | None = None, baselines: Mapping[str, dict] | None = None) -> dict:
    """Write the WER JSON: per benchmark {wer, errors, words, samples, ...} plus avg, and the
    `overall` figures (validation writes audio_seconds, seconds, rtfx) at the top level.

    `baselines` (when given) goes under "baselines": per baseline name, e.g. "whisper",
    {"model", "benchmarks": {name: {wer, errors, words, samples, seconds, rtfx}}, "avg"},
    scored on the same rows with the same normaliser.
    """
    report = {"checkpoint": checkpoint, "benchmarks": dict(per_benchmark),
              "avg": average_wer({k: v["wer"] for k, v in per_benchmark.items()}), **(overall or {})}
    if baselines:
        report["baselines"] = dict(baselines)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def report_dir(trainer, configured: str | None) -> Path:
    """Where reports (wer.json, predictions) go: `configured` (model.report_dir), else the
    logger's folder, else the trainer's root folder."""
    if configured:
        return Path(configured)
    return Path(trainer.log_dir or trainer.default_root_dir)
