"""One bf16 LoRA step on the CPU: the LoRA path adds no activation dtype copies and no dropout kernels."""

import torch

from borealis.data.batching import collate
from borealis.modeling import BorealisForConditionalGeneration, LoraSettings
from borealis.profiling import step_op_counts
from test_packing import _items


def _counts(tiny_parts, dropout: float, lora_in_autocast_dtype: bool) -> tuple[dict, int]:
    enc, llm = tiny_parts
    torch.manual_seed(0)
    model = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), dtype=torch.bfloat16,
                                                        lora=LoraSettings(r=4, alpha=8, dropout=dropout))
    for p in model.parameters():  # as BorealisLightningModule.configure_model: trainable weights float32
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    layers = model.compute_lora_in_autocast_dtype(lora_in_autocast_dtype)
    batch = collate(_items(model)[:2], pad_token_id=0)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "waveforms", "audio_lengths")}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what precision: bf16-mixed runs
            loss = model.loss(**inputs)
        loss.backward()

    step()  # warm: the first call may convert once-only buffers
    return step_op_counts(step), layers


def test_lora_in_the_autocast_dtype_drops_its_copies_and_dropout(tiny_parts):
    before, layers = _counts(tiny_parts, dropout=0.05, lora_in_autocast_dtype=False)  # peft's defaults
    after, _ = _counts(tiny_parts, dropout=0.0, lora_in_autocast_dtype=True)  # it_fresh.yaml under bf16-mixed
    assert layers == 14  # 2 decoder layers x 7 projections
    assert before["dropout"] == layers and after["dropout"] == 0
    # per LoRA layer and step: the input cast to float32 and back (forward) and their gradients' casts (backward)
    assert before["dtype_conversions"] - after["dtype_conversions"] >= 5 * layers
