"""One bf16 LoRA step on the CPU: the LoRA path converts no tensor's dtype and draws no dropout mask.

Three set-ups of the tiny model (2 decoder layers x 7 projections = 14 LoRA layers), one
`model.loss` forward + backward under bf16 autocast with a bf16 frozen base: peft's defaults
(float32 LoRA, dropout, the input cast), LoRA in the autocast dtype with float32 factors, and
that plus the factors and the adapter's linears stored in bf16 with float32 masters
(`mixed_precision.MasterWeights`, what `bf16-mixed` training runs). The per-source table
is in /work/notes/issue17_docs.md (`cd tests && python test_profiling.py` prints it).
"""

from __future__ import annotations

import torch

from borealis.data.batching import collate
from borealis.mixed_precision import MasterWeights, linear_only_parameters
from borealis.modeling import BorealisForConditionalGeneration, LoraSettings
from borealis.profiling import conversion_sources, model_scopes, step_op_counts
from test_packing import _items

SETUPS = {"peft defaults": (0.05, False, False), "LoRA in the autocast dtype": (0.0, True, False),
          "+ bf16 factors, fp32 masters": (0.0, True, True)}


def _step(tiny_parts, dropout: float, lora_in_autocast_dtype: bool, master_weights: bool):
    enc, llm = tiny_parts
    torch.manual_seed(0)
    model = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), dtype=torch.bfloat16,
                                                        lora=LoraSettings(r=4, alpha=8, dropout=dropout))
    for p in model.parameters():  # as BorealisLightningModule.configure_model: trainable weights float32
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    model.compute_lora_in_autocast_dtype(lora_in_autocast_dtype)
    if master_weights:
        MasterWeights(linear_only_parameters(model), torch.bfloat16)
    batch = collate(_items(model)[:2], pad_token_id=0)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "waveforms", "audio_lengths")}

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):  # what precision: bf16-mixed runs
            loss = model.loss(**inputs)
        loss.backward()

    step()  # warm: the first call may convert once-only buffers
    return model, step


def test_the_lora_path_converts_no_tensor_and_draws_no_dropout(tiny_parts):
    counts, sources = {}, {}
    for name, setup in SETUPS.items():
        model, step = _step(tiny_parts, *setup)
        counts[name], sources[name] = step_op_counts(step), conversion_sources(step, model_scopes(model))
    before, cast_off, after = (sources[n] for n in SETUPS)
    layers = sum(s == "lora" for s in model_scopes(model).values())
    assert layers == 14  # 2 decoder layers x 7 projections
    assert counts["peft defaults"]["dropout"] == layers and counts["+ bf16 factors, fp32 masters"]["dropout"] == 0
    # peft's input cast: to float32 and back per layer in forward, both casts' gradients in backward
    assert before["lora", "forward"] - cast_off["lora", "forward"] == 2 * layers
    # float32 factors: autocast casts A and B once per forward, backward casts their gradients
    assert cast_off["lora", "forward"] == cast_off["lora", "backward"] == 2 * layers
    assert after["lora", "forward"] == after["lora", "backward"] == 0
    assert after["adapter", "backward"] == 0  # the adapter's two linears are stored in bf16 too
    assert after["lora", "scalar"] == 2 * layers  # `* scaling` forward and backward: a 0-dim Python-number cast
    lora_share = before["lora", "forward"] + before["lora", "backward"]
    tensors = {n: c["tensor_conversions"] for n, c in counts.items()}
    assert tensors["peft defaults"] - tensors["+ bf16 factors, fp32 masters"] >= lora_share
    for name in SETUPS:  # the breakdown accounts for every conversion the plain count sees
        assert sum(sources[name].values()) == counts[name]["dtype_conversions"]


if __name__ == "__main__":  # the per-source table, on the tests' tiny parts
    import tempfile
    from pathlib import Path

    from transformers import Qwen3ForCausalLM, WhisperModel

    from borealis.testing import build_tokenizer, tiny_qwen3_config, tiny_whisper_config

    root = Path(tempfile.mkdtemp())
    torch.manual_seed(0)  # as conftest.tiny_parts
    WhisperModel(tiny_whisper_config()).save_pretrained(root / "whisper")
    tok = build_tokenizer()
    Qwen3ForCausalLM(tiny_qwen3_config(len(tok))).save_pretrained(root / "qwen3")
    tok.save_pretrained(root / "qwen3")
    rows = {}
    for name, setup in SETUPS.items():
        model, step = _step((root / "whisper", root / "qwen3"), *setup)
        rows[name] = (step_op_counts(step), conversion_sources(step, model_scopes(model)))
    names = sorted({s for _, c in rows.values() for s, _ in c})
    print("| source (forward / backward / 0-dim) | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for source in names:
        print(f"| {source} | " + " | ".join(f"{c[source, 'forward']} / {c[source, 'backward']} / {c[source, 'scalar']}"
                                             for _, c in rows.values()) + " |")
    print("| all aten::_to_copy (with a dimension) | " + " | ".join(
        f"{n['dtype_conversions']} ({n['tensor_conversions']})" for n, _ in rows.values()) + " |")
    print("| dropout mask kernels | " + " | ".join(str(n["dropout"]) for n, _ in rows.values()) + " |")
