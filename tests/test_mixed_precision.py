"""MasterWeights: bf16 linear weights with float32 masters train bit for bit like float32 weights under autocast."""

from __future__ import annotations

import torch

from borealis.mixed_precision import MasterWeights, linear_only_parameters
from test_profiling import _step


def _train(tiny_parts, master_weights: bool, steps: int = 3):
    model, step = _step(tiny_parts, 0.0, True, False)
    masters = MasterWeights(linear_only_parameters(model), torch.bfloat16) if master_weights else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(masters.optimizer_parameters(params) if masters else params, lr=1e-2)
    for _ in range(steps):  # one micro-batch per step, clipped, as Lightning runs it
        optimizer.zero_grad()
        if masters:
            masters.zero_grad()
        step()
        if masters:
            masters.grads_to_masters()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 0.01)
        optimizer.step()
        if masters:
            masters.to_params()
    return model, masters, optimizer


def test_master_weights_follow_the_float32_trajectory_exactly(tiny_parts):
    ref, _, _ = _train(tiny_parts, master_weights=False)
    model, masters, optimizer = _train(tiny_parts, master_weights=True)
    assert len(masters.params) == 14 * 2 + 2  # LoRA A and B of 14 layers, the adapter's w_in and w_out
    assert all(p.dtype == torch.bfloat16 for p in masters.params)
    weights = dict(linear_only_parameters(ref))
    for name, master, p in zip(masters.names, masters.masters, masters.params):
        assert torch.equal(master, weights[name]), name  # bit for bit
        assert torch.equal(p, master.to(torch.bfloat16)), name
    moved = sum(not torch.equal(m, s) for m, s in zip(masters.masters, dict(linear_only_parameters(
        _step(tiny_parts, 0.0, True, False)[0])).values()))
    assert moved >= 14  # the steps changed the weights (B starts at 0 and moves in every layer)

    state = {n: m.clone() for n, m in masters.state().items()}
    twin = MasterWeights(linear_only_parameters(_step(tiny_parts, 0.0, True, False)[0]), torch.bfloat16)
    twin.load(state)  # what a resume from the checkpoint's float32 values does
    assert all(torch.equal(a, b) for a, b in zip(twin.masters, masters.masters))
    assert all(torch.equal(a, b) for a, b in zip(twin.params, masters.params))
