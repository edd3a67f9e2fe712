"""Master weights: trainable linear weights stored in the autocast dtype, float32 copies in the optimizer.

Why: under `bf16-mixed` with float32 LoRA factors, autocast casts every factor to bf16 once per
forward and backward casts its bf16 gradient back to float32: 2 x 2 conversions per LoRA layer
and step (504 at Qwen3-4B: 7 targets x 36 layers x A and B), 56 of the 191 `aten::_to_copy` of
one tiny-model step (/work/notes/issue17_docs.md, `borealis.profiling.conversion_sources`).
Stored in bf16, the factors meet autocast's bf16 linear as they are: no cast in forward or
backward. The optimizer steps float32 masters instead, so updates smaller than a bf16 ulp are
not lost; once per optimizer step `to_params` rounds the masters into the bf16 weights (one
batched copy). An autocast linear with float32 weights computes with exactly that rounding, so
with one micro-batch per optimizer step the trajectory is bit for bit the float32-weights one
(tests/test_mixed_precision.py).

Only parameters that nothing but `nn.Linear` modules use are stored low (LoRA's A and B, the
adapter's linears): autocast runs linear in the low dtype, so storing its weights there changes
no result; a norm's weight would meet float32 ops and is left alone.

Cost and limits: gradients reach the bf16 `.grad` of the stored weights; `grads_to_masters`
copies them into the masters' float32 `.grad` after each backward (one batched copy, parameter-
sized: r x H per factor). With `accumulate_grad_batches > 1` the micro-batches' gradients
add in bf16 in `.grad` (DDP's `no_sync` needs them there) before that copy; DDP all-reduces
them in bf16. Checkpoints keep the float32 masters (`BorealisLightningModule.on_save_checkpoint`),
so a resume continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn


def linear_only_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the trainable parameters that only `nn.Linear` modules hold, in
    `named_parameters` order (tied weights held by another kind of module are left out)."""
    owners: dict[int, set[type]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(nn.Linear if isinstance(module, nn.Linear) else type(module))
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and owners[id(p)] == {nn.Linear}]


class MasterWeights:
    """Store `params` in `dtype` for compute and keep float32 masters for the optimizer.

    Args:
        params: (name, parameter) pairs, float32; their data is replaced by a `dtype` copy.
        dtype: the autocast dtype (torch.bfloat16 under `bf16-mixed`).
    """

    def __init__(self, params: Iterable[tuple[str, nn.Parameter]], dtype: torch.dtype) -> None:
        pairs = list(params)
        bad = [n for n, p in pairs if p.dtype != torch.float32]
        if bad:
            raise ValueError(f"master weights start from float32 parameters; {len(bad)} are not: {bad[:3]}")
        self.names = [n for n, _ in pairs]
        self.params = [p for _, p in pairs]
        self.masters = [nn.Parameter(p.detach().clone()) for p in self.params]  # float32, optimizer-owned
        self.dtype = dtype
        for p in self.params:
            p.data = p.data.to(dtype)

    def optimizer_parameters(self, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        """`params` with each stored weight replaced by its float32 master (what the optimizer steps)."""
        master_of = {id(p): m for p, m in zip(self.params, self.masters)}
        return [master_of.get(id(p), p) for p in params]

    @torch.no_grad()
    def grads_to_masters(self) -> None:
        """The stored weights' `.grad` into the masters' float32 `.grad` (after a backward)."""
        pairs = [(m, p.grad) for p, m in zip(self.params, self.masters) if p.grad is not None]
        for m, _ in pairs:
            if m.grad is None:
                m.grad = torch.empty_like(m)
        if pairs:
            torch._foreach_copy_([m.grad for m, _ in pairs], [g for _, g in pairs])

    def zero_grad(self) -> None:
        """Drop the stored weights' gradients (the optimizer's `zero_grad` clears the masters')."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def to_params(self) -> None:
        """Round the masters into the stored weights (after an optimizer step)."""
        torch._foreach_copy_(self.params, self.masters)

    def state(self) -> dict[str, torch.Tensor]:
        """{name: float32 master} (names as `params` gave them)."""
        return {n: m.detach() for n, m in zip(self.names, self.masters)}

    @torch.no_grad()
    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Masters from `state` (float32 values by name; every name required), then the stored weights."""
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"master weights missing from the state: {missing[:3]} ({len(missing)} in all)")
        torch._foreach_copy_(self.masters, [state[n].to(self.masters[0].device) for n in self.names])
        self.to_params()
