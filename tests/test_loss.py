"""The label loss: the chunked path equals the plain one, in value and in both gradients."""

import pytest
import torch

from borealis.loss import label_cross_entropy


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_loss_equals_the_plain_one(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=g, dtype=torch.float32)
    weight = torch.randn(300, 16, generator=g, dtype=torch.float32)
    targets = torch.randint(0, 300, (50,), generator=g)
    results = []
    for c in (None, chunk):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = label_cross_entropy(h, w, targets, chunk_tokens=c)
        (loss * 0.5).backward()  # a non-unit upstream gradient reaches both inputs
        results.append((loss.detach(), h.grad, w.grad))
    (plain, gh, gw), (chunked, ch, cw) = results
    assert plain.dtype == chunked.dtype == torch.float32  # the sum is float32, as the logits
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ch, gh, rtol=1e-4, atol=1e-6)  # float32 softmax, another summation order
    torch.testing.assert_close(cw, gw, rtol=1e-4, atol=1e-6)


def test_chunked_loss_with_a_frozen_head_under_bf16_autocast():
    """The LoRA case: the head is frozen (no weight gradient), the logits bf16, the softmax float32."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 32, generator=g).requires_grad_()
    weight = torch.randn(500, 32, generator=g)
    targets = torch.randint(0, 500, (40,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = label_cross_entropy(hidden, weight, targets)
        chunked = label_cross_entropy(hidden, weight, targets, chunk_tokens=16)
    (gp,) = torch.autograd.grad(plain, hidden)
    (gc,) = torch.autograd.grad(chunked, hidden)
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-3)  # the same bf16 logits, summed in float32
    torch.testing.assert_close(gc, gp, rtol=2e-2, atol=2e-2)  # bf16 gradient matmuls


def test_bad_chunk_size_names_the_option():
    with pytest.raises(ValueError, match="model.loss_chunk_tokens must be >= 1"):
        label_cross_entropy(torch.zeros(2, 4), torch.zeros(8, 4), torch.zeros(2, dtype=torch.long), chunk_tokens=0)
