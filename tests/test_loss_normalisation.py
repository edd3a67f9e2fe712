"""The optimizer step's gradient does not depend on how its samples are split.

Four samples with different numbers of label tokens, one optimizer step through Lightning:
4 samples x accumulate 1, 1 sample x accumulate 4, and 2 DDP ranks (gloo, `ddp_fork`: no re-import) x 2
samples x accumulate 1 give the same gradient (fp32: within 1e-6 absolute, 1e-5 relative),
the gradient of the step's token mean. `loss_normalization: micro_batch` (each
micro-batch's mean weighs the same) does not, which shows the test can fail.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from borealis.data.batching import collate
from borealis.modeling import LoraSettings
from borealis.module import BorealisLightningModule
from borealis.prompts import AUDIO_PLACEHOLDER

SR = 16000
ANSWERS = ("one two three four five six", "five", "six seven", "nine eight")  # 7, 2, 3, 3 label tokens + <|im_end|>


class RankBatches(L.LightningDataModule):
    """Each rank's own list of collated micro-batches."""

    def __init__(self, per_rank: list[list[dict]]) -> None:
        super().__init__()
        self.per_rank = per_rank

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.per_rank[self.trainer.global_rank], batch_size=None)


class SaveGradients(L.Callback):
    """Each rank writes the trainable gradients the optimizer step used (they stay until the next step)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}
        torch.save(grads, Path(self.folder) / f"rank{trainer.global_rank}.pt")


def _items(module: BorealisLightningModule) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    items = []
    for i, answer in enumerate(ANSWERS):
        n = int((0.4 + 0.2 * i) * SR)
        chat = [{"role": "user", "content": f"Transcribe the audio. {AUDIO_PLACEHOLDER}"},
                {"role": "assistant", "content": answer}]
        enc = module.prompt_builder.encode(chat, num_samples=n)
        items.append({"key": f"s{i}", "input_ids": enc.input_ids, "labels": enc.labels, "num_samples": n,
                      "audio": (torch.randn(n, generator=g) * 0.1).numpy()})
    return items


def _step_gradient(tiny_parts, folder: Path, splits: list[list[list[int]]], accumulate: int,
                   normalization: str = "step") -> dict[str, torch.Tensor]:
    """The gradient of one optimizer step; `splits[rank]` lists that rank's micro-batches (sample indices)."""
    enc, llm = tiny_parts
    torch.manual_seed(0)
    module = BorealisLightningModule(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                     whisper_baseline=False, warmup_steps=0, loss_normalization=normalization)
    module.configure_model()  # before the ranks start: every rank gets these weights
    items = _items(module)
    pad = module.prompt_builder.pad_token_id
    per_rank = [[collate([items[i] for i in micro], pad) for micro in rank] for rank in splits]
    folder.mkdir()
    world = len(splits)
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp_fork" if world > 1 else "auto",
                        max_steps=1, accumulate_grad_batches=accumulate, precision="32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, use_distributed_sampler=False, callbacks=[SaveGradients(str(folder))])
    trainer.fit(module, datamodule=RankBatches(per_rank))
    grads = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for other in grads[1:]:  # DDP: every rank steps with the same gradient
        assert all(torch.equal(other[n], g) for n, g in grads[0].items())
    return grads[0]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and any(".lora_" in n for n in a)
    for name, g in a.items():
        torch.testing.assert_close(b[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_step_gradient_is_the_same_however_the_samples_are_split(tiny_parts, tmp_path):
    whole = _step_gradient(tiny_parts, tmp_path / "4x1", [[[0, 1, 2, 3]]], accumulate=1)
    singles = _step_gradient(tiny_parts, tmp_path / "1x4", [[[0], [1], [2], [3]]], accumulate=4)
    _assert_same(whole, singles)
    ranks = _step_gradient(tiny_parts, tmp_path / "ddp", [[[0, 1]], [[2, 3]]], accumulate=1)
    _assert_same(whole, ranks)


def test_micro_batch_means_weigh_short_transcripts_more(tiny_parts, tmp_path):
    whole = _step_gradient(tiny_parts, tmp_path / "4x1", [[[0, 1, 2, 3]]], accumulate=1, normalization="micro_batch")
    singles = _step_gradient(tiny_parts, tmp_path / "1x4", [[[0], [1], [2], [3]]], accumulate=4,
                             normalization="micro_batch")
    with pytest.raises(AssertionError):
        _assert_same(whole, singles)
