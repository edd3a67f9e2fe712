import json
import math

from borealis.metrics import average_wer, normalize_text, rtfx, wer_table, word_errors, write_report


def test_normalisation_folds_case_punctuation_and_yo():
    assert normalize_text("Ёлка, ЗЕЛЁНАЯ!  Да?") == "елка зеленая да"
    assert normalize_text("Hello, World... (noise)") == "hello world"
    assert normalize_text("Мой йогурт") == "мой йогурт"  # й is a letter, not a diacritic


def test_word_errors_sum_like_jiwer():
    errors, words = word_errors(["one two three", "четыре пять", ""], ["one too three four", "Четыре, пять!", "x"])
    assert errors == [2, 0, 1]  # one substitution + one insertion; punctuation/case ignored; empty ref
    assert words == [3, 2, 0]


def test_table_and_report(tmp_path):
    per = {"demo_en": {"wer": 0.05, "errors": 5, "words": 100, "samples": 20},
           "demo_ru": {"wer": 0.15, "errors": 15, "words": 100, "samples": 20}}
    report = write_report(tmp_path / "wer.json", "last.ckpt", per)
    assert math.isclose(report["avg"], 0.10)
    assert json.loads((tmp_path / "wer.json").read_text())["benchmarks"]["demo_ru"]["errors"] == 15
    table = wer_table({"last.ckpt": {"demo_en": 0.05, "demo_ru": 0.15, "avg": 0.10}})
    assert table.splitlines()[0].split(" | ")[-1].strip() == "Avg"
    assert "10.00" in table.splitlines()[-1]
    assert math.isnan(average_wer({}))


def test_report_carries_the_speed(tmp_path):
    per = {"demo_en": {"wer": 0.1, "errors": 1, "words": 10, "samples": 2, "audio_seconds": 3.0, "seconds": 0.5,
                       "rtfx": rtfx(3.0, 0.5)}}
    report = write_report(tmp_path / "wer.json", "last.ckpt", per, {"audio_seconds": 3.0, "seconds": 0.6,
                                                                     "rtfx": rtfx(3.0, 0.6)})
    saved = json.loads((tmp_path / "wer.json").read_text())
    assert saved == report and saved["benchmarks"]["demo_en"]["rtfx"] == 6.0 and saved["rtfx"] == 5.0
    assert math.isnan(rtfx(3.0, 0.0))


def test_report_and_table_carry_a_baseline_row(tmp_path):
    per = {"demo_en": {"wer": 0.1, "errors": 1, "words": 10, "samples": 2}}
    whisper = {"model": "openai/whisper-large-v3", "avg": 0.3,
               "benchmarks": {"demo_en": {"wer": 0.3, "errors": 3, "words": 10, "samples": 2, "seconds": 1.0,
                                          "rtfx": 3.0}}}
    report = write_report(tmp_path / "wer.json", "last.ckpt", per, baselines={"whisper": whisper})
    saved = json.loads((tmp_path / "wer.json").read_text())
    assert saved == report and saved["baselines"]["whisper"] == whisper
    plain = write_report(tmp_path / "plain.json", "last.ckpt", per)
    assert {k: v for k, v in saved.items() if k != "baselines"} == plain  # the other keys as without a baseline
    table = wer_table({"last.ckpt": {"demo_en": 0.1, "avg": 0.1},
                       "Whisper openai/whisper-large-v3": {"demo_en": 0.3, "avg": 0.3}})
    assert [line.split(" | ")[-1].strip() for line in table.splitlines()[2:]] == ["10.00", "30.00"]
