"""The Whisper baseline row: batched transcripts equal Whisper's own one-by-one `generate`, a
checkpoint without a decoder or tokenizer is skipped, and `borealis validate` shows the row."""

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from transformers import (
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperModel,
)

from borealis.demo.models import (
    WhisperSize,
    build_tiny_whisper,
    whisper_config,
    whisper_generation_config,
    whisper_tokenizer,
)
from borealis.features import WhisperLogMel
from borealis.testing import make_pool, run_cli, tone
from borealis.whisper_baseline import WhisperBaseline

# 2 layers, 2 heads, width 32: every code path of a real Whisper; 100 positions = a 2 s window.
# init 0.3 (the demo's): at Whisper's 0.02 a random decoder emits the same token for every clip.
SIZE = WhisperSize(dim=32, layers=2, heads=2, ffn=64, max_source_positions=100)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A tiny encoder-decoder saved as `WhisperForConditionalGeneration`, with tokenizer and generation config."""
    out = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    WhisperForConditionalGeneration(whisper_config(SIZE, decoder_ffn=64)).save_pretrained(out)
    tokenizer = whisper_tokenizer()
    tokenizer.save_pretrained(out)
    whisper_generation_config(tokenizer).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80, chunk_length=2).save_pretrained(out)
    return out


def test_batched_baseline_equals_generate_one_by_one(whisper_dir):
    """Batched, language-grouped transcripts of padded clips == Whisper's processor + `generate` per clip."""
    baseline = WhisperBaseline.load(str(whisper_dir), device=torch.device("cpu"), dtype=torch.float32,
                                    max_new_tokens=None)
    assert baseline is not None and baseline.multilingual and baseline.max_new_tokens == 16 - 4
    clips = [tone(i, 0.3 + 0.25 * i) for i in range(6)]  # 0.3-1.55 s: padded to the longest in the batch
    languages = ["en", "ru", "en", None, "ru", "en"]  # mixed, and one left to Whisper's language detection
    lengths = torch.tensor([len(c) for c in clips])
    waves = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        waves[i, : len(c)] = torch.from_numpy(c)
    mel = WhisperLogMel(num_mel_bins=80, max_source_positions=100)(waves, lengths)  # (6, 80, 200)
    ids = baseline.generate(mel, languages)
    texts = baseline.transcribe(mel, languages)

    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    pad = model.generation_config.pad_token_id
    for i, (clip, lang) in enumerate(zip(clips, languages)):
        features = extractor(clip, sampling_rate=16000, return_tensors="pt").input_features  # (1, 80, 200)
        with torch.no_grad():
            ref = model.generate(features, language=lang, task="transcribe", max_new_tokens=12)[0]
        ref = ref[: int(np.flatnonzero((ref != pad).numpy()).max()) + 1]  # one clip: no padding, unless all pad
        assert torch.equal(ids[i], ref), (i, ids[i], ref)
        assert texts[i] == baseline.tokenizer.decode(ref, skip_special_tokens=True).strip()
    assert len(set(texts)) > 1  # the clips' transcripts differ: the comparison is not vacuous


def test_checkpoints_without_decoder_or_tokenizer_are_skipped(tmp_path, caplog):
    torch.manual_seed(0)
    model = WhisperModel(whisper_config(SIZE, decoder_ffn=64))
    encoder_only = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    model.save_pretrained(tmp_path / "encoder_only", state_dict=encoder_only)
    model.save_pretrained(tmp_path / "no_tokenizer")  # a decoder, but nothing to decode its ids with
    state = torch.random.get_rng_state()
    with caplog.at_level(logging.INFO, logger="borealis.whisper_baseline"):
        for name in ("encoder_only", "no_tokenizer"):
            assert WhisperBaseline.load(str(tmp_path / name), device=torch.device("cpu"), dtype=torch.float32,
                                        max_new_tokens=None) is None
    assert torch.equal(state, torch.random.get_rng_state())  # the random decoder init drew in a forked RNG
    lines = [r.getMessage() for r in caplog.records if r.name == "borealis.whisper_baseline"]
    assert len(lines) == 2 and "no decoder weights" in lines[0] and "no tokenizer" in lines[1]


def test_max_new_tokens_must_fit_the_decoder(whisper_dir, tiny_parts):
    from borealis.module import BorealisLightningModule

    with pytest.raises(ValueError, match=r"whisper_baseline_max_new_tokens=13: must be in 1\.\.12"):
        BorealisLightningModule(str(whisper_dir), str(tiny_parts[1]), whisper_baseline_max_new_tokens=13)


def _module_and_data(whisper_dir, llm, bench, report_dir):
    from borealis.data import BorealisDataModule
    from borealis.data.batching import Batching
    from borealis.modeling import LoraSettings
    from borealis.module import BorealisLightningModule

    module = BorealisLightningModule(str(whisper_dir), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                     max_new_tokens=4, report_dir=str(report_dir))
    data = BorealisDataModule(val_sets=bench, val_batching=Batching(batch_size=4), max_seconds=2.0, num_workers=0,
                              prompt_builder=module.prompt_builder)
    return module, data


def test_validate_reports_the_row_and_fit_never_loads_it(whisper_dir, tiny_parts, tmp_path):
    """`Trainer.validate` writes `baselines.whisper` (each clip counted once, Borealis' keys unchanged);
    fit's validation leaves the baseline unloaded."""
    bench = {"bench_en": str(make_pool(tmp_path / "en", "e", range(5), max_samples=3)),
             "bench_ru": str(make_pool(tmp_path / "ru", "r", range(3), language="ru"))}
    module, data = _module_and_data(whisper_dir, tiny_parts[1], bench, tmp_path / "report")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False)
    trainer.validate(module, datamodule=data)
    report = json.loads((tmp_path / "report" / "wer.json").read_text())
    assert set(report) == {"checkpoint", "benchmarks", "avg", "audio_seconds", "seconds", "rtfx", "baselines"}
    whisper = report["baselines"]["whisper"]
    assert whisper["model"] == str(whisper_dir)
    for name, samples in (("bench_en", 5), ("bench_ru", 3)):
        row, ours = whisper["benchmarks"][name], report["benchmarks"][name]
        assert row["samples"] == ours["samples"] == samples and row["words"] == ours["words"] > 0
        assert row["wer"] == row["errors"] / row["words"] and row["seconds"] > 0
    assert whisper["avg"] == pytest.approx((whisper["benchmarks"]["bench_en"]["wer"]
                                            + whisper["benchmarks"]["bench_ru"]["wer"]) / 2)
    assert trainer.callback_metrics["val/whisper_wer_avg"] == pytest.approx(whisper["avg"])

    module, data = _module_and_data(whisper_dir, tiny_parts[1], bench, tmp_path / "fit")
    module._trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    module._trainer.state.fn = TrainerFn.FITTING  # fit's periodic validation
    module._load_baseline()
    assert module._baseline is None and not module._baseline_loaded


@pytest.mark.slow
def test_validate_through_the_cli_shows_the_whisper_row(tmp_path, tiny_parts):
    """`borealis validate` on the demo config with a demo-built Whisper (random decoder): the row is in the table."""
    whisper = tmp_path / "whisper"
    build_tiny_whisper(whisper, SIZE)  # as `borealis demo` writes it: WhisperModel + tokenizer + generation config
    make_pool(tmp_path / "bench", "v", range(6), max_samples=4)
    make_pool(tmp_path / "text", "t", range(4), text_only=True)
    configs = Path(__file__).parents[1] / "configs"
    out = run_cli("validate", "--config", str(configs / "it_fresh.yaml"), "--config", str(configs / "demo.yaml"),
                  "--model.encoder", str(whisper), "--model.llm", str(tiny_parts[1]), "--model.max_new_tokens", "4",
                  "--model.init_from", "null",  # tiny bases: models/demo/pretrain is the demo bases'
                  "--model.report_dir", str(tmp_path / "report"), "--data.train_pools", "[]",
                  "--data.text_pool", str(tmp_path / "text"), "--data.augmentation", "null",
                  "--data.val_sets", json.dumps({"bench": str(tmp_path / "bench")}), "--data.max_seconds", "2.0",
                  "--data.num_workers", "0", cwd=tmp_path)
    lines = (out.stdout + out.stderr).split("WER (%) per benchmark\n")[1].splitlines()
    table = [line.split(" | ") for line in lines[:4] if " | " in line]  # head, rule, rows
    assert [cells[0].strip() for cells in table] == ["checkpoint", "step-0", f"Whisper {whisper}"]
    assert [c.strip() for c in table[0][1:]] == ["bench", "Avg"]
    row = json.loads((tmp_path / "report" / "wer.json").read_text())["baselines"]["whisper"]
    assert row["benchmarks"]["bench"]["samples"] == 6 and row["benchmarks"]["bench"]["words"] > 0
