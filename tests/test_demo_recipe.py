"""The demo trains the recipe on the shipped bases: models/demo is what its SHA256SUMS says, it
loads through the same `from_pretrained` path as a hub id, and a demo-shaped fit starts from the
shipped stage-1 pretrain and changes only the adapter and LoRA, which are all its checkpoint holds."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from borealis.demo.bases import check_sums
from borealis.testing import make_pool

ROOT = Path(__file__).resolve().parents[1]
BASES = ROOT / "models" / "demo"
MAX_BYTES = 15 * 1024 * 1024  # the cap on the shipped bases


def test_shipped_bases_match_their_sha256_and_stay_small():
    assert check_sums(BASES) == []
    listed = [line.split(maxsplit=1)[1] for line in (BASES / "SHA256SUMS").read_text().splitlines()]
    assert {"whisper/model.safetensors", "qwen3/model.safetensors", "qwen3/tokenizer.json",
            "pretrain/model.safetensors"} <= set(listed)
    assert sum((BASES / name).stat().st_size for name in listed) <= MAX_BYTES


def test_check_sums_names_a_changed_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"one")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  a.bin\n{'0' * 64}  gone.bin\n")
    assert check_sums(tmp_path) == ["a.bin: sha256 differs from SHA256SUMS", "gone.bin: missing"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_a_demo_shaped_fit_changes_only_the_adapter_and_lora(tmp_path, monkeypatch):
    """`borealis fit` with it_fresh.yaml + demo.yaml on the shipped bases (tone pools stand in for
    the corpus), in process: training starts from the shipped pretrain's adapter and LoRA, and
    afterwards the encoder and the LLM's base weights equal the shipped files bit for bit, and the
    checkpoint holds adapter and LoRA weights only."""
    from borealis.cli import BorealisCLI
    from borealis.data import BorealisDataModule
    from borealis.module import BorealisLightningModule

    make_pool(tmp_path / "asr", "asr", range(40), max_samples=10, seconds=lambda i: 0.5 + 0.1 * (i % 5))
    make_pool(tmp_path / "bench", "bench", range(100, 104), seconds=lambda i: 0.6)
    make_pool(tmp_path / "text", "t", range(20), text_only=True)
    for pool in ("noise", "ir"):  # the curriculum's pools, checked before training starts
        make_pool(tmp_path / "demo" / "shards" / pool, pool, range(4))
    monkeypatch.chdir(tmp_path)  # demo.yaml's relative output folders land in tmp_path
    pretrain, at_start = _weights(BASES / "pretrain"), {}
    original = BorealisLightningModule.on_train_start

    def on_train_start(self):  # the trainable weights before the first step, as the optimizer holds them
        original(self)
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if getattr(self, "master_weights", None) is not None:  # bf16-mixed: the fp32 masters
            state.update({k.removeprefix("model."): v.detach().clone() for k, v in self.master_weights.state().items()})
        at_start.update(state)

    monkeypatch.setattr(BorealisLightningModule, "on_train_start", on_train_start)
    cli = BorealisCLI(BorealisLightningModule, BorealisDataModule, auto_configure_optimizers=False, args=[
        "fit", "--config", str(ROOT / "configs" / "it_fresh.yaml"), "--config", str(ROOT / "configs" / "demo.yaml"),
        "--model.encoder", str(BASES / "whisper"), "--model.llm", str(BASES / "qwen3"),
        "--model.init_from", str(BASES / "pretrain"),
        "--data.train_pools", f'[{{name: asr, shards: "{tmp_path / "asr"}"}}]',
        "--data.text_pool", str(tmp_path / "text"), "--data.val_sets", f'{{bench: "{tmp_path / "bench"}"}}',
        "--data.batches_per_epoch", "3", "--data.num_workers", "0", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "--model.max_new_tokens", "4"])
    model = cli.model.model
    assert cli.trainer.global_step == 3
    assert pretrain and all(torch.equal(at_start[k], v) for k, v in pretrain.items())  # stage 2 from stage 1
    assert cli.model.hparams.base_dtype == "bfloat16"  # the flagship's, and the files' own: no cast at load

    ckpt = torch.load(tmp_path / "demo" / "runs" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    names = [k.removeprefix("model.") for k in ckpt["state_dict"]]
    assert names and all(n.startswith("adapter.") or "lora_" in n for n in names), names[:5]
    assert any(n.startswith("adapter.") for n in names) and any("lora_" in n for n in names)

    encoder = _weights(BASES / "whisper")
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder[f"encoder.{name}"]), name
    shipped = _weights(BASES / "qwen3")
    checked = 0
    for name, value in model.llm.state_dict().items():
        if "lora_" in name:
            continue
        ref = name.replace("base_model.model.", "").replace(".base_layer", "")
        if ref not in shipped:  # the tied LM head is saved once, as the embedding
            assert ref == "lm_head.weight", name
            continue
        rows = shipped[ref].shape[0]  # the embedding grew by the audio tokens' rows
        assert torch.equal(value[:rows], shipped[ref]), name
        checked += 1
    assert checked > 10


@pytest.mark.parametrize("seed", range(5))
def test_copy_spans_hold_the_transcript_in_order_between_fillers(seed):
    """`CopyConversations.fill`: every token is held for 1..copy_max_run slots, in order, and the
    rest of the span is the `<|AUDIO|>` filler; a swap changes at most one token."""
    import numpy as np

    from borealis.demo.bases import BaseSettings, CopyConversations

    copies = CopyConversations.__new__(CopyConversations)  # fill() needs only these three
    copies.filler, copies.settings, copies.words = -1, BaseSettings(copy_swap_rate=0.0), np.arange(100, 110)
    rng = np.random.default_rng(seed)
    tokens = rng.permutation(np.arange(1, 9))  # distinct, so each run is one token
    span = copies.fill(30, tokens, rng)
    assert span.shape == (30,)
    runs = [(v, n) for v, n in _runs(span) if v != -1]
    assert [v for v, _ in runs] == tokens.tolist()
    assert all(1 <= n <= copies.settings.copy_max_run for _, n in runs)
    copies.settings = BaseSettings(copy_swap_rate=1.0)
    swapped = [v for v, _ in _runs(copies.fill(30, tokens, rng)) if v != -1]
    assert len(swapped) == len(tokens) and sum(a != b for a, b in zip(swapped, tokens.tolist())) == 1
    copies.settings = BaseSettings(copy_swap_rate=0.0)
    assert copies.fill(4, tokens, rng).tolist() == tokens[:4].tolist()  # fewer slots than tokens: the head


def test_shuffled_copy_chats_hold_a_permutation_of_the_words_and_never_a_benchmark_sentence():
    """`CopyConversations.shuffled`: the answer is the clip's words in another order, the slot count
    is the clip's, and a shuffle that is a benchmark sentence keeps the clip's own order (counted)."""
    import numpy as np

    from borealis.demo.bases import BaseSettings, CopyConversations
    from borealis.prompts import IGNORE_INDEX, PromptBuilder, add_audio_tokens, asr_messages
    from borealis.testing import build_tokenizer

    tokenizer = build_tokenizer()
    add_audio_tokens(tokenizer)
    copies = CopyConversations.__new__(CopyConversations)  # what shuffled() and conversation() read
    copies.tokenizer, copies.builder = tokenizer, PromptBuilder(tokenizer, downsample_factor=4, max_source_positions=100)
    copies.filler, copies.words = copies.builder.audio_token_id, np.arange(3)
    copies.settings = BaseSettings(copy_swap_rate=0.0, copy_shuffle_share=1.0)
    text = "zero one two three four"
    encoded = copies.builder.encode(asr_messages(text, "en"), num_samples=32000)
    copies.ids, copies.labels = [np.asarray(encoded.input_ids)], [np.asarray(encoded.labels)]
    copies.tokens = [np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"])]
    copies.texts, copies.languages, copies.num_samples = [text], ["en"], [32000]
    copies.benchmark_texts, copies.kept_order = set(), 0
    rng = np.random.default_rng(0)
    answers = set()
    slots = int((copies.ids[0] == copies.filler).sum())
    for _ in range(20):
        ids, labels, tokens = copies.shuffled(0, rng)
        answer = tokenizer.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=True).strip()
        assert sorted(answer.split()) == sorted(text.split())  # the same words, in some order
        assert tokenizer.decode(tokens) == answer
        assert int((ids == copies.filler).sum()) == slots  # the clip's own slot count
        answers.add(answer)
    assert len(answers) > 5
    ids, labels = copies.conversation(0, rng)  # share 1: every chat is a shuffle, its slots filled
    answer = tokenizer.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=True).strip()
    assert sorted(answer.split()) == sorted(text.split()) and (ids == copies.filler).sum() < slots
    copies.texts = ["zero one"]  # two words: every shuffle is one of the two benchmark orders
    copies.benchmark_texts = {"zero one", "one zero"}
    _, _, tokens = copies.shuffled(0, rng)
    assert tokens.tolist() == copies.tokens[0].tolist() and copies.kept_order == 1


def _runs(span):
    """(value, run length) of each run of equal values."""
    return [(v, len(list(run))) for v, run in itertools.groupby(span.tolist())]


def test_speed_perturbation_resamples_each_row_within_its_range_and_the_window():
    """`perturb_speed` on ramps (linear interpolation reads a ramp exactly): each row's slope is its
    factor, drawn in the range or raised to fit the window; lengths follow; padding stays zero."""
    from borealis.demo.bases import perturb_speed

    lengths = torch.tensor([100, 80, 41, 10])
    audio = torch.arange(100, dtype=torch.float32).repeat(4, 1) * (torch.arange(100)[None] < lengths[:, None])
    out, new = perturb_speed(audio, lengths, (0.8, 1.2), 100, torch.Generator().manual_seed(0))
    factor = out[:, 1] - out[:, 0]
    assert factor[0] >= 1 - 1e-6 and ((factor >= 0.8 - 1e-6) & (factor <= 1.2 + 1e-6)).all()  # row 0 fills the window
    assert torch.equal(new, ((lengths - 1) / factor).floor().long() + 1) and (new <= 100).all()
    for row, n in enumerate(new.tolist()):
        assert torch.allclose(out[row, :n], torch.arange(n) * factor[row], atol=1e-3)
        assert not out[row, n:].any()
    same, kept = perturb_speed(audio, lengths, (1.0, 1.0), 100, torch.Generator().manual_seed(0))
    assert torch.equal(kept, lengths) and torch.equal(same, audio)


def test_bases_options_fail_naming_the_option(tmp_path, capsys):
    from borealis.demo.bases import main

    with pytest.raises(SystemExit):
        main(["--corpus", str(tmp_path), "--out", str(tmp_path / "out"), "--speed", "1.2", "0.9"])
    assert "--speed must be MIN <= MAX within [0.5, 2], got 1.2 0.9" in capsys.readouterr().err
    for option in ("--encoder-dropout", "--copy-shuffle-share"):
        with pytest.raises(SystemExit):
            main(["--corpus", str(tmp_path), "--out", str(tmp_path / "out"), option, "1.5"])
        assert f"{option} must be in [0, 1], got 1.5" in capsys.readouterr().err
