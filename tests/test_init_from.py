"""init_from: start a model from a state dict of the reference code or a saved/exported Borealis directory."""

from __future__ import annotations

import pytest
import torch

from borealis.modeling import BorealisForConditionalGeneration, LoraSettings, load_init_weights, read_weights


def _model(tiny_parts, seed: int) -> BorealisForConditionalGeneration:
    torch.manual_seed(seed)
    enc, llm = tiny_parts
    return BorealisForConditionalGeneration.from_parts(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0))


def _trained(tiny_parts) -> BorealisForConditionalGeneration:
    """A model whose adapter and LoRA factors are random (as after training): B != 0."""
    model = _model(tiny_parts, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return model


def test_reference_state_dict_with_reference_names_loads(tiny_parts, tmp_path):
    source = _trained(tiny_parts)
    names = source.trainable_parameter_names()
    assert any(n.startswith("adapter.w_in") for n in names) and any(".lora_A.weight" in n for n in names)
    assert not any("base_layer" in n or ".default." in n for n in names)  # the reference plain names, not peft's
    state = {k: v for k, v in source.state_dict().items() if k in set(names)}
    torch.save({"state_dict": state}, tmp_path / "reference_pretrain.pt")  # the reference code saved trainables only

    model = _model(tiny_parts, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_init_weights(model, tmp_path / "reference_pretrain.pt")
    assert report == {"loaded": len(names), "fresh_lora": 0}
    after = model.state_dict()
    for k in names:
        assert torch.equal(after[k], state[k]), k
    frozen = [k for k in after if k not in set(names)]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)  # the base is untouched
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(model(input_ids=ids).logits, source(input_ids=ids).logits, atol=1e-6)


def test_saved_directory_loads_and_bad_sources_fail_with_a_list(tiny_parts, tmp_path):
    source = _trained(tiny_parts)
    source.save_pretrained(tmp_path / "export")
    model = _model(tiny_parts, seed=3)
    load_init_weights(model, tmp_path / "export")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())

    state = read_weights(tmp_path / "export")
    broken = dict(state)
    broken.pop("adapter.w_in.weight")
    broken["adapter.extra.weight"] = torch.zeros(2)
    torch.save(broken, tmp_path / "broken.bin")
    with pytest.raises(ValueError) as info:
        load_init_weights(_model(tiny_parts, seed=4), tmp_path / "broken.bin")
    message = str(info.value)
    assert "1 unexpected key(s): ['adapter.extra.weight']" in message
    assert "1 missing trainable key(s): ['adapter.w_in.weight']" in message
    shaped = dict(state)
    shaped["adapter.w_out.weight"] = torch.zeros(3, 3)
    torch.save(shaped, tmp_path / "shaped.pt")
    with pytest.raises(ValueError, match="1 shape mismatch"):
        load_init_weights(_model(tiny_parts, seed=4), tmp_path / "shaped.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_init_weights(_model(tiny_parts, seed=4), tmp_path / "nope.pt")


def test_base_without_lora_leaves_lora_fresh(tiny_parts, tmp_path):
    source = _trained(tiny_parts)
    state = {k: v for k, v in source.state_dict().items() if ".lora_" not in k}  # e.g. a merged export
    torch.save(state, tmp_path / "merged.pt")
    model = _model(tiny_parts, seed=5)
    report = load_init_weights(model, tmp_path / "merged.pt")
    assert report["fresh_lora"] > 0 and report["loaded"] == len(state) - ("llm.lm_head.weight" in state)  # tied


def test_module_init_from_option(tiny_parts, tmp_path):
    """`--model.init_from` reaches configure_model: the module's model starts from those weights."""
    from borealis.module import BorealisLightningModule

    source = _trained(tiny_parts)
    names = set(source.trainable_parameter_names())
    torch.save({k: v for k, v in source.state_dict().items() if k in names}, tmp_path / "pretrain.pt")
    enc, llm = tiny_parts
    module = BorealisLightningModule(encoder=str(enc), llm=str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                     init_from=str(tmp_path / "pretrain.pt"))
    module.configure_model()
    got = module.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in source.state_dict().items() if k in names)
    bad = BorealisLightningModule(encoder=str(enc), llm=str(llm), lora=None, init_from=str(tmp_path / "pretrain.pt"))
    with pytest.raises(ValueError, match="unexpected key"):  # LoRA factors into a model without LoRA
        bad.configure_model()
