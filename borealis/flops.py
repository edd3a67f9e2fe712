"""FLOPs of a Borealis training step, and the device peak they are compared with (MFU).

What: `step_flops` counts the matmul work one training step must do for the rows of a batch:
the Whisper encoder (frozen, or trained in the unfreeze ablation and the demo), the adapter,
the LLM's linears, LoRA, causal attention and the LM head. `throughput.Throughput` divides it
by the measured step time for every run's MFU; `tools/bench_train.py` does the same for its
synthetic steps.
Why a formula and not a FLOP counter: it costs nothing per step, needs only host-side row
lengths, and counts *useful* work (non-pad tokens), so padding shows up as lost MFU.
`tests/test_flops.py` holds the formulas to torch's own `FlopCounterMode` on tiny models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from borealis.adapters import ADAPTERS

__all__ = ["StepFlops", "matmul_params", "step_flops", "peak_flops"]


def _projection_shapes(llm) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection of one Qwen3/Llama-style decoder layer."""
    h, inter = llm.hidden_size, llm.intermediate_size
    head_dim = getattr(llm, "head_dim", None) or h // llm.num_attention_heads
    q, kv = llm.num_attention_heads * head_dim, llm.num_key_value_heads * head_dim
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def _adapter_params(config) -> tuple[int, int]:
    """(w_in weights, every other Linear weight) of the configured adapter, built on the meta device."""
    enc, llm = config.encoder_config, config.llm_config
    with torch.device("meta"):
        adapter = ADAPTERS[config.adapter](config.downsample_factor * enc.d_model, llm.hidden_size)
    linears = [m.weight.numel() for m in adapter.modules() if isinstance(m, torch.nn.Linear)]
    w_in = adapter.w_in.weight.numel()
    return w_in, sum(linears) - w_in


def matmul_params(config) -> dict[str, int]:
    """Weights that take part in matmuls, by part (norms, biases and embeddings left out).

    encoder: conv1 3*M*D + conv2 3*D*D + layers * (4*D^2 + 2*D*F), Whisper's D, F, M mel bins.
    adapter_in: k*D*H (w_in); adapter_out: every other adapter Linear (H*H for `simple`).
    llm_linear: layers * the 7 projections; lora: layers * sum over targets of r * (in + out);
    lm_head: V * H (tied to the input embeddings in Qwen3-4B).
    """
    enc, llm = config.encoder_config, config.llm_config
    d, f, m = enc.d_model, enc.encoder_ffn_dim, enc.num_mel_bins
    shapes = _projection_shapes(llm)
    lora = 0
    if config.lora:
        unknown = sorted(set(config.lora["target_modules"]) - set(shapes))
        if unknown:
            raise ValueError(f"lora target_modules {unknown} are not among {sorted(shapes)}")
        lora = llm.num_hidden_layers * sum(config.lora["r"] * sum(shapes[t]) for t in config.lora["target_modules"])
    adapter_in, adapter_out = _adapter_params(config)
    return {
        "encoder": 3 * m * d + 3 * d * d + enc.encoder_layers * (4 * d * d + 2 * d * f),
        "adapter_in": adapter_in,
        "adapter_out": adapter_out,
        "llm_linear": llm.num_hidden_layers * sum(i * o for i, o in shapes.values()),
        "lora": lora,
        "lm_head": llm.vocab_size * llm.hidden_size,
    }


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step, by part (multiply-add = 2 FLOPs)."""

    encoder: int
    adapter: int
    llm_linear: int
    lora: int
    attention: int
    lm_head: int

    @property
    def total(self) -> int:
        return self.encoder + self.adapter + self.llm_linear + self.lora + self.attention + self.lm_head


def step_flops(config, seq_lens: Sequence[int], num_clips: int, encoder_frames: int | None = None,
               label_tokens: int | None = None) -> StepFlops:
    """Matmul FLOPs one training step must do: encoder, adapter, LLM with LoRA.

    A linear with P weights costs 2P per position forward, 2P for the input gradient and 2P
    for the weight gradient; a frozen weight skips the last, and the first layer of a trained
    stack needs no input gradient. With T = max_source_positions (1500) encoder frames per
    clip, N = ceil(T / k) stacked frames, L_i tokens in row i and S = sum(L_i):

        encoder, frozen  = clips * [2*(3MD)*2T + 2*(3D^2 + layers*(4D^2 + 2DF))*T + layers*4*T^2*D]
        encoder, trained = clips * [4*(3MD)*2T + 6*(3D^2 + layers*(4D^2 + 2DF))*T + layers*12*T^2*D]
        adapter    = clips * N * (a * P_in + 6 * P_rest)     a = 4 under a frozen encoder, else 6
        llm_linear = b * P_llm * S                           b = 4 under LoRA (frozen), 6 trained
        lora       = 6 * P_lora * S
        attention  = layers * 6 * heads * head_dim * sum(L_i^2)  causal half, fwd + 2x bwd
        lm_head    = b * V * H * S                           every position gets logits (or S_lab)

    With `encoder_window: full` Whisper encodes the full window (the log-mel is padded to it),
    and the adapter runs on all N frames before the splice keeps each clip's first N_i; so
    trimming audio tokens saves LLM work only. With `encoder_window: batch` the window is the
    batch's longest clip: pass its encoder frames as `encoder_frames` (T above). The encoder's
    attention is full (not causal): 4*T^2*D per layer forward; causal attention in the LLM
    costs half of the full square. Norms, softmax,
    activations, rotary, the STFT and the optimizer are left out (< 1%). Pad tokens are not
    counted: S and L_i are the rows' real lengths, so padding shows as lost MFU.

    Args:
        config: a `BorealisConfig`.
        seq_lens: non-pad LLM tokens of each row.
        num_clips: audio clips in the batch (each one runs the encoder once).
        encoder_frames: encoder positions each clip runs through (default: the full window,
            max_source_positions).
        label_tokens: positions projected onto the vocabulary when only labelled ones are
            (`BorealisForConditionalGeneration.loss`, the training step); None: every position
            (the causal LM's own forward).
    """
    enc, llm = config.encoder_config, config.llm_config
    p = matmul_params(config)
    t = enc.max_source_positions if encoder_frames is None else encoder_frames
    d, m = enc.d_model, enc.num_mel_bins
    conv1 = 3 * m * d
    rest, attn = p["encoder"] - conv1, enc.encoder_layers * 4 * t * t * d
    if config.freeze_encoder:
        encoder = num_clips * (2 * conv1 * 2 * t + 2 * rest * t + attn)
    else:
        encoder = num_clips * (4 * conv1 * 2 * t + 6 * rest * t + 3 * attn)
    n = -(-t // config.downsample_factor)
    adapter = num_clips * n * ((4 if config.freeze_encoder else 6) * p["adapter_in"] + 6 * p["adapter_out"])
    s = sum(seq_lens)
    base = 4 if config.lora else 6  # frozen base weights get no weight gradient
    attn_width = _projection_shapes(llm)["q_proj"][1]  # heads * head_dim
    attention = llm.num_hidden_layers * 6 * attn_width * sum(length * length for length in seq_lens)
    return StepFlops(encoder=encoder, adapter=adapter, llm_linear=base * p["llm_linear"] * s,
                     lora=6 * p["lora"] * s, attention=attention,
                     lm_head=base * p["lm_head"] * (s if label_tokens is None else label_tokens))


_PRECISION_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16, "32": torch.float32, "64": torch.float64}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak FLOP/s at the training precision, or None when unknown.

    Lightning's table (`lightning.fabric.utilities.throughput.get_available_flops`: H100 SXM
    989 TFLOP/s bf16, H200, A100, L4, ... ; float32 on Ampere+ counts as TF32 when matmul
    precision allows it). CPUs and unlisted chips give None: MFU is then not reported, and
    `throughput.peak_tflops` sets the peak by hand.
    """
    from lightning.fabric.utilities.throughput import get_available_flops

    if device.type != "cuda":
        return None
    dtype = _PRECISION_DTYPES.get(str(precision).split("-")[0])
    if dtype is None:
        return None
    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None
