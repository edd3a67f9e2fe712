"""borealis tune-batch: the budget search against a simulated memory limit, and a real step on the CPU."""

import pytest
import torch

from borealis.modeling import LoraSettings
from borealis.module import BorealisLightningModule
from borealis.tune_batch import search_budget, training_step_fits, with_margin, worst_case_batch


@pytest.mark.parametrize("limit_tokens", [1024, 5000, 23_000, 131_072, 10**9])
def test_search_converges_to_the_simulated_limit(limit_tokens):
    calls = []

    def fits(budget):  # a card that holds `limit_tokens` tokens of activations
        calls.append(budget)
        return budget <= limit_tokens

    found = search_budget(fits, step=1024, limit=262_144)
    assert found == min(limit_tokens // 1024 * 1024, 262_144)  # the largest whole row count that fits
    assert len(calls) <= 2 * 8 + 2  # doubling then bisection: ~2 log2(256 rows)
    assert with_margin(found, 0.1, 1024) == max(1024, int(found * 0.9) // 1024 * 1024)


def test_search_reports_when_nothing_fits():
    assert search_budget(lambda b: False, step=512, limit=4096) == 0
    with pytest.raises(ValueError, match="--margin must be in"):
        with_margin(4096, 1.0, 512)


def test_worst_case_step_runs_on_the_cpu(tiny_parts):
    enc, llm = tiny_parts
    module = BorealisLightningModule(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                     whisper_baseline=False)
    module.configure_model()
    batch = worst_case_batch(module.prompt_builder, rows=2, row_tokens=256, seconds=2.0, answer_words=9)
    assert batch["input_ids"].shape[0] == 2 and len(batch["keys"]) >= 2
    assert batch["position_ids"] is not None and max(batch["row_tokens"]) <= 256
    assert training_step_fits(module, batch, "32-true")
    assert all(p.grad is None for p in module.model.parameters())  # the probe leaves no gradients behind
