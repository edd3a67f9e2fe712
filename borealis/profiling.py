"""Counting the ops a training step runs, by name: dtype conversions and dropout kernels.

Why: the flagship step on one H100 spent 22% of GPU time in dtype copies (BENCHMARKS.md):
peft cast every LoRA input to the float32 LoRA weights and applied dropout, 252 times per
forward. `step_op_counts` runs one step under `torch.profiler` on the CPU and counts the ops
that convert a dtype (`aten::_to_copy`, which `.to(dtype)` and autocast's casts call) and
those that draw dropout masks, so a test can hold the count down and BENCHMARKS.md can quote
it. A count, not a time: it does not depend on the machine. Cost: one profiled step.

`conversion_sources` says where each conversion comes from: the innermost of the given modules
whose forward ran it, or, for a backward op, the forward op whose autograd node it belongs to
(matched by sequence number). Conversions of 0-dim tensors are counted apart: a Python number
in a CPU op (`x * scaling`, `+ eps`) is wrapped as a 0-dim double tensor and cast to the op's
dtype, a host-side scalar cast that exists under float32 too and is a kernel argument on CUDA.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import torch
from torch import nn

DTYPE_CONVERSIONS = ("aten::_to_copy",)  # a real conversion; `aten::to` to the same dtype returns its input
DROPOUT = ("aten::native_dropout", "aten::bernoulli_")  # mask kernels; `aten::dropout` with p = 0 returns its input


SCOPE = "borealis.scope::"  # record_function prefix of the scopes `conversion_sources` opens


def _events(step: Callable[[], object]):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    return prof.events()


def _is_scalar(event) -> bool:
    return bool(event.input_shapes) and event.input_shapes[0] == []


def op_counts(step: Callable[[], object]) -> Counter:
    """How often each op ran in `step()` (forward and backward), every call counted."""
    return Counter(event.name for event in _events(step))


def step_op_counts(step: Callable[[], object]) -> dict[str, int]:
    """{"dtype_conversions": n, "tensor_conversions": n (of them, those of tensors with a dimension),
    "dropout": n} of one `step()`."""
    events = _events(step)
    conversions = [e for e in events if e.name in DTYPE_CONVERSIONS]
    return {"dtype_conversions": len(conversions),
            "tensor_conversions": sum(not _is_scalar(e) for e in conversions),
            "dropout": sum(e.name in DROPOUT for e in events)}


def _scope(event) -> str | None:
    while event is not None:
        if event.name.startswith(SCOPE):
            return event.name.removeprefix(SCOPE)
        event = event.cpu_parent
    return None


def _backward_node(event):
    while event is not None:
        if event.name.startswith("autograd::engine::evaluate_function"):
            return event
        event = event.cpu_parent
    return None


def conversion_sources(step: Callable[[], object], scopes: Mapping[nn.Module, str]) -> Counter:
    """Counter {(source, kind): n} of the dtype conversions of one `step()`: source the name
    `scopes` gives the innermost module whose forward ran it ("other" outside them; a backward
    conversion is charged to the forward op that recorded its autograd node), kind "forward",
    "backward" or "scalar" (a 0-dim tensor, either pass)."""
    from torch.autograd.profiler import record_function

    open_scopes: list[record_function] = []

    def enter(module, args, name):
        open_scopes.append(record_function(SCOPE + name))
        open_scopes[-1].__enter__()

    def leave(module, args, output):
        open_scopes.pop().__exit__(None, None, None)

    handles = []
    for module, name in scopes.items():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: enter(m, a, name)))
        handles.append(module.register_forward_hook(leave))
    try:
        events = _events(step)
    finally:
        for h in handles:
            h.remove()
    forward_op: dict[int, object] = {}  # autograd sequence number -> the outermost forward op that recorded it
    for e in events:
        if e.sequence_nr >= 0 and _backward_node(e) is None and not e.name.startswith(SCOPE):
            if e.sequence_nr not in forward_op or e.time_range.start < forward_op[e.sequence_nr].time_range.start:
                forward_op[e.sequence_nr] = e
    counts = Counter()
    for e in events:
        if e.name not in DTYPE_CONVERSIONS:
            continue
        node = _backward_node(e)
        origin = e if node is None else forward_op.get(node.sequence_nr)
        source = (_scope(origin) if origin is not None else None) or "other"
        counts[source, "scalar" if _is_scalar(e) else "forward" if node is None else "backward"] += 1
    return counts


def model_scopes(model: nn.Module) -> dict[nn.Module, str]:
    """The sources `conversion_sources` tells apart in a Borealis model: each LoRA layer, the
    adapter, the encoder, every RMSNorm, the rotary embedding and the LM head."""
    from peft.tuners.lora import LoraLayer

    scopes = {}
    for module in model.modules():
        kind = type(module).__name__
        if isinstance(module, LoraLayer):
            scopes[module] = "lora"
        elif kind.endswith("RMSNorm"):
            scopes[module] = "rms_norm"
        elif kind.endswith("RotaryEmbedding"):
            scopes[module] = "rotary"
    scopes.update({model.adapter: "adapter", model.encoder: "encoder", model.llm.get_output_embeddings(): "lm_head"})
    return scopes
