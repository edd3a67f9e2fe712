"""Packed micro-batches: rows cut by a token budget, and the same losses and gradients as unpacked rows."""

import numpy as np
import pytest
import torch

from borealis.data.batching import Batching, collate, pack_rows
from borealis.modeling import BorealisForConditionalGeneration, LoraSettings
from borealis.prompts import AUDIO_PLACEHOLDER, IGNORE_INDEX

SR = 16000


def _items(model, seconds=(1.0, 0.6, 0.3, 0.8, 0.5), answers=("one two three", "five", "six seven", "nine", "zero")):
    """Encoded ASR samples as `batching.encode_sample` gives them (audio as numpy)."""
    g = torch.Generator().manual_seed(0)
    items = []
    for i, (sec, answer) in enumerate(zip(seconds, answers)):
        n = int(sec * SR)
        chat = [{"role": "user", "content": f"Transcribe the audio. {AUDIO_PLACEHOLDER}"},
                {"role": "assistant", "content": answer}]
        enc = model.prompts.encode(chat, num_samples=n)
        items.append({"key": f"s{i}", "input_ids": enc.input_ids, "labels": enc.labels, "num_samples": n,
                      "audio": (torch.randn(n, generator=g) * 0.1).numpy()})
    return items


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 8, 2, 4], capacity=10) == [[2, 3], [0, 4], [1]]  # 8+2, 5+4, 3
    assert pack_rows([12, 3], capacity=10) == [[0], [1]]  # too long for any row: a row of its own
    rows = pack_rows(list(np.random.default_rng(0).integers(1, 50, 200)), capacity=64)
    assert sorted(i for row in rows for i in row) == list(range(200))  # every item exactly once


def test_packed_cut_fills_rows_within_the_budget():
    batching = Batching(max_tokens_per_batch=40, pack=True, max_tokens_per_row=20)
    items = [{"input_ids": [0] * n, "key": i} for i, n in enumerate([3, 4, 5, 6, 7, 8, 9, 10, 11])]
    batches = batching.cut(items)
    keys = [it["key"] for b in batches for it in b]
    assert sorted(keys) == list(range(9))  # exact accounting: each sample once
    for b in batches:
        rows = [it["row"] for it in b]
        assert rows == sorted(rows) and rows[0] == 0 and max(rows) < 40 // 20
        per_row = np.bincount(rows, weights=[len(it["input_ids"]) for it in b])
        assert per_row.max() <= 20
    assert len(batches) == 2  # 63 tokens in 4 rows of <= 20, 2 rows per batch


def test_packing_options_are_checked_together():
    with pytest.raises(ValueError, match=r"pack: true needs max_tokens_per_batch and max_tokens_per_row"):
        Batching(batch_size=4, pack=True)
    with pytest.raises(ValueError, match=r"max_tokens_per_row \(64\) exceeds max_tokens_per_batch \(32\)"):
        Batching(max_tokens_per_batch=32, pack=True, max_tokens_per_row=64)
    with pytest.raises(ValueError, match=r"max_tokens_per_row \(64\) is a packing setting"):
        Batching(max_tokens_per_batch=128, max_tokens_per_row=64)


def test_collate_packed_layout(tiny_model):
    items = _items(tiny_model)[:3]
    lengths = [len(it["input_ids"]) for it in items]
    packed = collate([dict(items[0], row=0), dict(items[1], row=0), dict(items[2], row=1)], pad_token_id=0)
    assert packed["attention_mask"] is None and packed["input_ids"].shape == (2, lengths[0] + lengths[1])
    assert packed["row_tokens"] == [lengths[0] + lengths[1], lengths[2]]
    assert packed["seq_tokens"] == lengths and packed["keys"] == ["s0", "s1", "s2"]
    pos = packed["position_ids"]
    assert pos[0, :lengths[0]].tolist() == list(range(lengths[0]))
    assert pos[0, lengths[0]:].tolist() == list(range(lengths[1]))  # the second sample restarts at 0
    assert pos[1, lengths[2]:].tolist() == list(range(lengths[0] + lengths[1] - lengths[2]))  # pad tail: own segment
    assert packed["input_ids"][0, lengths[0]:].tolist() == items[1]["input_ids"]
    assert packed["labels"][0, lengths[0]] == IGNORE_INDEX  # no sample predicts the next one's first token
    assert packed["label_tokens"] == [int((packed["labels"][r] != IGNORE_INDEX).sum()) for r in range(2)]
    assert packed["audio_lengths"].tolist() == [it["num_samples"] for it in items]


def _per_sample_losses(model, batch, keys_per_row):
    """Per-token losses of `model.loss(reduction='none')`, split per sample in row-major order."""
    tokens = model.loss(**batch, reduction="none")
    counts = [len([t for t in it["labels"][1:] if t != IGNORE_INDEX]) for row in keys_per_row for it in row]
    return torch.split(tokens, counts)


def _inputs(batch):
    keys = ("input_ids", "attention_mask", "labels", "waveforms", "audio_lengths", "position_ids")
    return {k: batch[k] for k in keys if k in batch}


def test_packed_and_unpacked_give_the_same_losses_and_gradients(tiny_parts):
    """fp32, sdpa: per-sample losses within 1e-5 and gradients within 1e-5 (relative 1e-4)."""
    torch.manual_seed(0)
    enc, llm = tiny_parts
    model = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8,
                                                                                              dropout=0.0))
    model.train()
    items = _items(model)
    batching = Batching(max_tokens_per_batch=640, pack=True, max_tokens_per_row=160)
    (packed_items,) = batching.cut(sorted(items, key=batching.size))  # one batch of rows
    order = [it["key"] for it in packed_items]
    assert [it["row"] for it in packed_items] == [0, 0, 1, 1, 2]  # 160-token rows: two rows hold two samples
    by_key = {it["key"]: it for it in items}
    plain_items = [by_key[k] for k in order]  # the same samples, one per row, in the packed order
    packed, plain = collate(packed_items, pad_token_id=0), collate(plain_items, pad_token_id=0)

    grads = {}
    for name, batch in (("plain", plain), ("packed", packed)):
        model.zero_grad()
        losses = _per_sample_losses(model, _inputs(batch), [[by_key[k]] for k in order])
        torch.cat(losses).sum().backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads[name + "_losses"] = [x.detach() for x in losses]
    for a, b in zip(grads["plain_losses"], grads["packed_losses"]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert grads["plain"].keys() == grads["packed"].keys() and any("lora_" in n for n in grads["plain"])
    for n, g in grads["plain"].items():
        torch.testing.assert_close(grads["packed"][n], g, atol=1e-5, rtol=1e-4, msg=n)
    # the mean losses of both layouts agree too (what the training step computes)
    torch.testing.assert_close(model.loss(**_inputs(packed)), model.loss(**_inputs(plain)), atol=1e-5, rtol=1e-5)
