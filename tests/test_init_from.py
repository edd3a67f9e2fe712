"""init_from: start a model from a state dict of the reference code, a saved/exported Borealis directory,
a Hugging Face repo id (through the hub's offline cache), or the seed's pretrain with full LLM weights."""

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
    assert report == {"loaded": len(names), "frozen": 0, "fresh_lora": 0}
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


def _seed_full_llm_state(source: BorealisForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The seed's pretrain as its code saved it: the adapter and the whole fine-tuned LLM under
    reference names (`llm.model.layers.0.self_attn.q_proj.weight`), no LoRA, no encoder."""
    source.merge_lora()  # LoRA folded into the base: a fully fine-tuned LLM, no lora_ keys
    with torch.no_grad():
        for name, p in source.llm.named_parameters():
            p.add_(torch.randn_like(p) * 0.01)  # every LLM weight moved by training, not only LoRA's
    state = {k: v.clone() for k, v in source.state_dict().items() if not k.startswith("encoder.")}
    assert not any(".lora_" in k or "base_layer" in k for k in state)
    return state


def test_seed_state_dict_with_full_llm_loads_into_the_base_and_lora_starts_fresh(tiny_parts, tmp_path):
    state = _seed_full_llm_state(_trained(tiny_parts))
    torch.save(state, tmp_path / "seed_pretrain.bin")
    fresh = _model(tiny_parts, seed=6)
    model = _model(tiny_parts, seed=6)
    report = load_init_weights(model, tmp_path / "seed_pretrain.bin")
    trainable = set(model.trainable_parameter_names())
    got = model.state_dict()
    llm_base = [k for k in state if k.startswith("llm.") and k != "llm.lm_head.weight"]  # tied: not loaded twice
    assert report == {"loaded": len(llm_base) + 2, "frozen": len(llm_base),  # + adapter.w_in, adapter.w_out
                      "fresh_lora": sum(".lora_" in k for k in trainable)}
    for k, v in state.items():  # the base LLM is the pretrain's, and so is the adapter
        assert torch.equal(got[k], v), k
    assert all(not p.requires_grad for n, p in model.llm.named_parameters() if "lora_" not in n)  # still frozen: LoRA trains on top of the pretrain's LLM
    before = fresh.state_dict()
    for k in (k for k in got if ".lora_" in k or k.startswith("encoder.")):
        assert torch.equal(got[k], before[k]), k  # LoRA at its fresh init, the encoder Whisper's


def test_a_partly_given_base_fails_naming_the_missing_weights(tiny_parts, tmp_path):
    state = _seed_full_llm_state(_trained(tiny_parts))
    dropped = sorted(k for k in state if k.startswith("llm.model.layers.1."))
    torch.save({k: v for k, v in state.items() if k not in dropped}, tmp_path / "half.pt")
    with pytest.raises(ValueError, match=f"{len(dropped)} of the .* frozen llm weights missing") as info:
        load_init_weights(_model(tiny_parts, seed=7), tmp_path / "half.pt")
    assert dropped[0] in str(info.value)


def test_trainable_weights_keep_the_sources_precision_on_a_bfloat16_base(tiny_parts, tmp_path):
    source = _trained(tiny_parts)
    names = source.trainable_parameter_names()
    state = {k: v for k, v in source.state_dict().items() if k in set(names)}
    assert all(v.dtype == torch.float32 for v in state.values())
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "stage1.ckpt")
    enc, llm = tiny_parts
    model = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                                        dtype=torch.bfloat16)
    assert any(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if p.requires_grad)  # peft's LoRA
    load_init_weights(model, tmp_path / "stage1.ckpt")
    got = model.state_dict()
    assert all(torch.equal(got[k], v) and got[k].dtype == torch.float32 for k, v in state.items())


def test_a_pretrain_with_a_frozen_encoder_starts_a_run_that_trains_it(tiny_parts, tmp_path):
    source = _trained(tiny_parts)
    names = set(source.trainable_parameter_names())
    torch.save({k: v for k, v in source.state_dict().items() if k in names}, tmp_path / "pretrain.pt")
    enc, llm = tiny_parts
    torch.manual_seed(8)
    model = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                                        freeze_encoder=False)
    whisper = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("encoder.")}
    load_init_weights(model, tmp_path / "pretrain.pt")
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in whisper.items())  # the encoder starts from Whisper's weights
    assert all(torch.equal(got[k], v) for k, v in source.state_dict().items() if k in names)


def test_a_hub_id_resolves_through_the_offline_cache(tiny_parts, tmp_path, monkeypatch):
    """`init_from: owner/name` is fetched like any from_pretrained id: offline, from the hub cache."""
    import huggingface_hub.constants as hub
    from safetensors.torch import save_file

    source = _trained(tiny_parts)
    names = set(source.trainable_parameter_names())
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--AlexWortega--Borealis5b_90k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items() if k in names},
              repo / "snapshots" / commit / "model.safetensors")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # the id is not a local path
    model = _model(tiny_parts, seed=9)
    assert load_init_weights(model, "AlexWortega/Borealis5b_90k")["loaded"] == len(names)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items() if k in names)
    with pytest.raises(FileNotFoundError, match="not a local path.*HF_HUB_OFFLINE=1: none in the cache"):
        read_weights("AlexWortega/NotCached")


def test_export_rebuilds_a_run_on_its_pretrain(tiny_parts, tmp_path):
    """A run started from the seed's full-LLM pretrain exports on that pretrain's LLM, not on the
    plain base: `export.build_model` applies `init_from` before the checkpoint's weights."""
    from borealis.export import build_model

    state = _seed_full_llm_state(_trained(tiny_parts))
    torch.save(state, tmp_path / "seed_pretrain.bin")
    run = _model(tiny_parts, seed=7)
    load_init_weights(run, tmp_path / "seed_pretrain.bin")
    with torch.no_grad():  # as after stage-2 training: LoRA and adapter moved
        for p in (p for p in run.parameters() if p.requires_grad):
            p.normal_(0, 0.05)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in run.state_dict().items()
                           if k in set(run.trainable_parameter_names())}}
    enc, llm = tiny_parts
    settings = {"encoder": enc, "llm": llm, "downsample_factor": 4, "adapter": "simple", "trim_audio_tokens": True,
                "encoder_window": "full", "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                                                   "target_modules": LoraSettings().target_modules},
                "freeze_encoder": True, "init_from": str(tmp_path / "seed_pretrain.bin")}
    exported = build_model(settings, ckpt).state_dict()
    for k, v in run.state_dict().items():
        assert torch.equal(exported[k], v), k
    settings["init_from"] = None  # without it the base LLM would be the plain one
    plain = build_model(settings, ckpt).state_dict()
    assert not all(torch.equal(plain[k], v) for k, v in run.state_dict().items())
