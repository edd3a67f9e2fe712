"""Counting the ops a training step runs, by name: dtype conversions and dropout kernels.

Why: the flagship step on one H100 spent 22% of GPU time in dtype copies (BENCHMARKS.md):
peft cast every LoRA input to the float32 LoRA weights and applied dropout, 252 times per
forward. `step_op_counts` runs one step under `torch.profiler` on the CPU and counts the ops
that convert a dtype (`aten::_to_copy`, which `.to(dtype)` and autocast's casts call) and
those that draw dropout masks, so a test can hold the count down and BENCHMARKS.md can quote
it. A count, not a time: it does not depend on the machine. Cost: one profiled step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch

DTYPE_CONVERSIONS = ("aten::_to_copy",)  # a real conversion; `aten::to` to the same dtype returns its input
DROPOUT = ("aten::native_dropout", "aten::bernoulli_")  # mask kernels; `aten::dropout` with p = 0 returns its input


def op_counts(step: Callable[[], object]) -> Counter:
    """How often each op ran in `step()` (forward and backward), every call counted."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return Counter(event.name for event in prof.events())


def step_op_counts(step: Callable[[], object]) -> dict[str, int]:
    """{"dtype_conversions": n, "dropout": n} of one `step()`."""
    counts = op_counts(step)
    return {"dtype_conversions": sum(counts[n] for n in DTYPE_CONVERSIONS), "dropout": sum(counts[n] for n in DROPOUT)}
