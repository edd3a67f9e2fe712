"""Frame stacking and the two adapters: shapes, padding and parameter counts."""

import pytest
import torch

from borealis.adapters import ADAPTERS, AudioLanguageAdapter, AudioLanguageAdapterDeep, stack_frames
from borealis.modeling import BorealisConfig


def test_stacking_concatenates_k_frames_and_zero_pads_the_tail():
    hidden = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # (B, T, D): T not a multiple of k
    stacked = stack_frames(hidden, 4)
    assert stacked.shape == (2, 2, 12)  # ceil(7 / 4) positions of 4 * 3 values
    assert torch.equal(stacked[:, 0], hidden[:, :4].reshape(2, 12))  # frames 0-3, side by side
    assert torch.equal(stacked[:, 1, :9], hidden[:, 4:].reshape(2, 9))
    assert not stacked[:, 1, 9:].any()  # the missing eighth frame is zeros
    assert torch.equal(stack_frames(hidden[:, :4], 4), hidden[:, :4].reshape(2, 1, 12))  # no padding needed
    assert torch.equal(stack_frames(hidden, 1), hidden)


def test_simple_adapter_is_two_bias_free_linears():
    adapter = AudioLanguageAdapter(4 * 32, 48)
    assert sum(p.numel() for p in adapter.parameters()) == 4 * 32 * 48 + 48 * 48
    assert [n for n, _ in adapter.named_parameters()] == ["w_in.weight", "w_out.weight"]  # the reference names
    assert adapter(torch.randn(2, 5, 128)).shape == (2, 5, 48)


def test_deep_adapter_shape_and_parameter_count():
    k_d, h = 4 * 32, 48
    adapter = AudioLanguageAdapterDeep(k_d, h)
    inner = int(h * 1.5)
    block = 2 * h + (h * inner + inner) + (inner * h + h)  # LayerNorm + fc1 + fc2, with biases
    assert sum(p.numel() for p in adapter.parameters()) == k_d * h + 3 * block + 2 * h + h * h
    assert adapter.eval()(torch.randn(2, 5, k_d)).shape == (2, 5, h)
    assert all(not m.bias.any() for m in adapter.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)


def test_config_accepts_exactly_the_adapters():
    assert sorted(ADAPTERS) == ["deep", "simple"]
    with pytest.raises(ValueError, match=r"adapter='mlp' is not one of \['deep', 'simple'\]"):
        BorealisConfig(adapter="mlp")
