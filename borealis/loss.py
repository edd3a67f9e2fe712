"""The training loss over labelled positions: cross-entropy without a labels x vocabulary fp32 tensor.

What: `label_cross_entropy(hidden, weight, targets)`, the summed next-token cross-entropy of
the labelled positions' hidden states (N, H) under an LM head `weight` (V, H).

Why: at Qwen3-4B (V = 151,936) a micro-batch of 4,096 labelled tokens would hold 2.5 GB of
float32 logits, plus as much again for their gradient. Three paths, picked by `chunk_tokens`
and the device:
    plain    (chunk_tokens null) logits for every labelled position at once, cast to float32,
             `F.cross_entropy`: the reference the others are tested against.
    chunked  (chunk_tokens > 0, torch) `chunk_tokens` positions at a time: their logits,
             float32 log-softmax, the loss and at once the gradients of `hidden` (and `weight`
             when it trains); backward only scales them. Peak: chunk_tokens x V float32,
             2 x 4,096 x 151,936 x 4 B = 5 GB -> 2 x 1,024 x ... = 1.2 GB at chunk 1,024. No
             recompute: the LM-head matmuls are the plain path's three (forward, input and
             weight gradient), so the FLOPs are the same.
    liger    (chunk_tokens > 0, CUDA, `liger-kernel` installed) Liger's fused linear
             cross-entropy kernel (`liger_kernel.transformers.functional`), the same idea in
             Triton. Imported lazily: Borealis runs without it.
All three return the sum over tokens in float32; the caller divides (`module`'s
normalisation by the label tokens of the optimizer step).
"""

from __future__ import annotations

import torch
from torch import nn

from borealis.prompts import IGNORE_INDEX


def label_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        chunk_tokens: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, in float32.

    Args:
        hidden: (N, H) the labelled positions' last hidden states.
        weight: (V, H) the LM head (no bias).
        targets: (N,) token ids (no IGNORE_INDEX: select the labelled positions first).
        chunk_tokens: positions per chunk (null: all at once, the plain path).

    Returns:
        () float32 sum over the N tokens.
    """
    if chunk_tokens is None or hidden.shape[0] == 0:
        return nn.functional.cross_entropy(nn.functional.linear(hidden, weight).float(), targets, reduction="sum")
    if chunk_tokens < 1:
        raise ValueError(f"model.loss_chunk_tokens must be >= 1 or null, got {chunk_tokens}")
    if hidden.is_cuda:
        liger = _liger()
        if liger is not None:
            return liger(hidden, weight, targets, reduction="sum").float()
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
        else hidden.dtype
    return _ChunkedCrossEntropy.apply(hidden.to(dtype), weight, targets, chunk_tokens)


def _liger():
    """Liger's fused linear cross-entropy function, or None when `liger-kernel` is not installed."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return lambda h, w, t, reduction: liger_fused_linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX,
                                                                       reduction=reduction)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and the gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_tokens: int) -> torch.Tensor:
        w = weight.to(hidden.dtype)  # the autocast dtype's copy: one per call, as autocast's own cache
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = torch.arange(min(chunk_tokens, hidden.shape[0]), device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, t = hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens]  # (C, H), (C,)
            logits = (h @ w.T).float()  # (C, V)
            lse = torch.logsumexp(logits, dim=-1)  # (C,)
            total += (lse - logits.gather(1, t[:, None])[:, 0]).sum()
            if need_h or need_w:
                probs = torch.exp_(logits.sub_(lse[:, None]))  # softmax, in place: (C, V)
                probs[rows[:len(t)], t] -= 1.0  # d loss / d logits
                if need_h:
                    grad_h[start:start + chunk_tokens] = probs.to(w.dtype) @ w
                if need_w:
                    grad_w += probs.T @ h.float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_out.to(grad_h.dtype),
                None if grad_w is None else (grad_w * grad_out).to(ctx.weight_dtype), None, None)
