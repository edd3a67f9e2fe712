"""Contract tests of the audio-LLM: freezing, splice, trimming, save/load, generation."""

import pytest
import torch

from borealis.modeling import BorealisForConditionalGeneration, LoraSettings, shared_prefix_length
from borealis.prompts import AUDIO_PLACEHOLDER, IGNORE_INDEX

SR = 16000


def _batch(model, seconds=(1.0, 0.6), answers=("one two three", "five")):
    """Right-padded training batch, one ASR chat per clip."""
    encoded, waves = [], []
    g = torch.Generator().manual_seed(0)
    for sec, answer in zip(seconds, answers):
        n = int(sec * SR)
        waves.append(torch.randn(n, generator=g) * 0.1)
        chat = [{"role": "user", "content": f"Transcribe the audio. {AUDIO_PLACEHOLDER}"},
                {"role": "assistant", "content": answer}]
        encoded.append(model.prompts.encode(chat, num_samples=n))
    width = max(len(e.input_ids) for e in encoded)
    pad = model.prompts.pad_token_id
    ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in encoded])
    labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in encoded])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in encoded])
    lengths = torch.tensor([len(w) for w in waves])
    return dict(input_ids=ids, attention_mask=mask, labels=labels,
                waveforms=torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), audio_lengths=lengths)


def test_one_step_changes_only_trainable_weights(tiny_model):
    model = tiny_model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = set(model.trainable_parameter_names())
    assert trainable, "LoRA and adapter must train"
    assert all(".lora_" in n or n.startswith("adapter.") for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**_batch(model)).loss.backward()
    opt.step()
    after = model.state_dict()
    for name in before:
        changed = not torch.equal(before[name], after[name])
        if name.startswith("encoder.") or (name.startswith("llm.") and ".lora_" not in name):
            assert not changed, f"frozen {name} changed"
    assert not torch.equal(before["adapter.w_in.weight"], after["adapter.w_in.weight"])
    assert any(not torch.equal(before[n], after[n]) for n in trainable if ".lora_B" in n)


def test_encoder_stays_frozen_through_train(tiny_model):
    tiny_model.train()
    assert not tiny_model.encoder.training
    assert not any(p.requires_grad for p in tiny_model.encoder.parameters())


def test_unfreeze_encoder_flag(tiny_parts):
    enc, llm = tiny_parts
    model = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), lora=None, freeze_encoder=False).train()
    assert model.encoder.training and all(p.requires_grad for p in model.parameters())


def test_placeholder_embedding_mismatch_raises(tiny_model):
    batch = _batch(tiny_model)
    batch["audio_lengths"] = batch["audio_lengths"] - 4000  # fewer audio frames than slots
    with pytest.raises(ValueError, match=r"model.prompts.encode\(messages, num_samples=...\)"):
        tiny_model(**batch)


def test_untrimmed_prompt_has_full_window(tiny_parts):
    enc, llm = tiny_parts
    model = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), trim_audio_tokens=False)
    e = model.prompts.encode([{"role": "user", "content": AUDIO_PLACEHOLDER}], num_samples=1600, generation=True)
    assert e.input_ids.count(model.config.audio_token_id) == 100 // 4  # tiny encoder: 100 positions / k


def test_save_load_round_trip(tiny_model, tmp_path):
    model = tiny_model.eval()
    with torch.no_grad():
        model.adapter.w_in.weight.normal_()
        for n, p in model.named_parameters():
            if ".lora_B" in n:
                p.normal_(std=0.1)  # make LoRA non-trivial, so a lost LoRA weight shows
    batch = _batch(model)
    model.save_pretrained(tmp_path)
    again = BorealisForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, again(**batch).logits, atol=1e-6)


def test_reference_state_dict_loads_strict(tiny_model):
    # The reference module had plain names and no peft wrapping; its base checkpoint has no LoRA.
    reference = {k: v for k, v in tiny_model.state_dict().items() if ".lora_" not in k}
    assert "llm.model.layers.0.self_attn.q_proj.weight" in reference
    assert not any("base_layer" in k for k in reference)
    tiny_model.load_state_dict(reference, strict=True)
    reference.pop("adapter.w_in.weight")
    with pytest.raises(RuntimeError, match="adapter.w_in.weight"):
        tiny_model.load_state_dict(reference, strict=True)


def test_lora_merge_gives_same_logits(tiny_model):
    model = tiny_model.eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B" in n:
                p.normal_(std=0.1)
    batch = _batch(model)
    with torch.no_grad():
        before = model(**batch).logits
        model.merge_lora()
        after = model(**batch).logits
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert (before - after).abs().max() < 1e-4 * before.abs().max(), (before - after).abs().max()


def test_batched_generate_equals_one_by_one(tiny_model):
    model = tiny_model.eval()
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.normal_(std=0.5)  # make the output depend strongly on the audio
    g = torch.Generator().manual_seed(1)
    clips = [torch.randn(int(s * SR), generator=g) * 0.1 for s in (0.4, 1.3, 0.9)]
    prompt = f"What is this audio about? {AUDIO_PLACEHOLDER}"
    batched = model.generate(audio=clips, user_prompt=prompt, system_prompt="You are a helpful voice assistant.",
                             max_new_tokens=6)
    for i, clip in enumerate(clips):
        single = model.generate(audio=clip, user_prompt=prompt, system_prompt="You are a helpful voice assistant.",
                                max_new_tokens=6)
        n = single.shape[1]
        assert batched[i, :n].tolist() == single[0].tolist()
    assert isinstance(model.decode(batched[0]), str)


def test_shared_prompt_prefix_is_prefilled_once_with_the_same_result(tiny_model):
    """Batched generation prefills the rows' common prefix once (a KV cache copied to every row);
    the scores of every step must match generation without it, and so must the greedy tokens."""
    model = tiny_model.eval()
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.normal_(std=0.5)
    g = torch.Generator().manual_seed(2)
    clips = [torch.randn(int(s * SR), generator=g) * 0.1 for s in (0.4, 1.3, 0.9, 0.2)]
    ids, mask, waves, lengths = model._client_batch(clips, f"Describe. {AUDIO_PLACEHOLDER}", "Be brief.")
    p, start = shared_prefix_length(ids, mask, model.config.audio_token_id)
    first_audio = int((ids[0] == model.config.audio_token_id).nonzero()[0])
    assert p == first_audio - int(start[0]) > 0  # the system turn and instruction up to the audio
    kwargs = dict(input_ids=ids, attention_mask=mask, waveforms=waves, audio_lengths=lengths, max_new_tokens=5,
                  output_scores=True, return_dict_in_generate=True)
    shared, plain = model.generate(**kwargs), model.generate(**kwargs, cache=None)  # cache=None: no prefix reuse
    assert shared.sequences.tolist() == plain.sequences.tolist()
    for a, b in zip(shared.scores, plain.scores, strict=True):
        assert (a - b).abs().max() < 1e-4 * b.abs().max()


def test_shared_prefix_length_rules():
    audio = 9
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    ids = torch.tensor([[0, 5, 6, 9, 7], [5, 6, 8, 9, 7]])
    assert shared_prefix_length(ids, mask, audio)[0] == 2  # 5 6, then the rows part
    same = torch.tensor([[0, 5, 6, 9, 7], [5, 6, 6, 9, 7]])
    assert shared_prefix_length(same, mask, audio)[0] == 2  # 5 6, then row 0's audio slot ends it
    twins = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert shared_prefix_length(twins, torch.ones(2, 3, dtype=torch.long), audio)[0] == 2  # each row keeps 1 token
    right_padded = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert shared_prefix_length(ids, right_padded, audio)[0] == 0
    one_token = torch.tensor([[0, 0, 0, 0, 1], [1, 1, 1, 1, 1]])
    assert shared_prefix_length(ids, one_token, audio)[0] == 0  # a row with one token has nothing to share
    assert shared_prefix_length(ids, one_token * 0, audio)[0] == 0  # nor has an empty batch


def test_overfit_one_batch(tiny_parts):
    enc, llm = tiny_parts
    torch.manual_seed(0)
    model = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), lora=LoraSettings(r=16, alpha=32, dropout=0.0))
    model.train()
    batch = _batch(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(300):
        loss = model(**batch).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    assert first > 3 and loss.item() < 0.05


# ---------------------------------------------------------------------- encoder_window: batch
def test_run_encoder_on_a_short_window_equals_transformers_on_that_window(tiny_model):
    """Our loop over WhisperEncoder's modules = transformers' own forward of an encoder whose
    window is the short one (same weights, positional table cut to T')."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from borealis.modeling import run_encoder

    encoder = tiny_model.encoder.eval()
    config = encoder.config.__class__(**{**encoder.config.to_dict(), "max_source_positions": 24})
    short = WhisperEncoder(config).eval()
    state = {k: (v[:24] if k == "embed_positions.weight" else v) for k, v in encoder.state_dict().items()}
    short.load_state_dict(state)
    features = torch.randn(2, 80, 48)
    with torch.no_grad():
        torch.testing.assert_close(run_encoder(encoder, features), short(features).last_hidden_state)
        full = torch.randn(2, 80, 2 * encoder.config.max_source_positions)
        torch.testing.assert_close(run_encoder(encoder, full), encoder(full).last_hidden_state)


def test_batch_window_model_trains_and_matches_full_when_the_window_is_full(tiny_parts):
    enc, llm = tiny_parts
    torch.manual_seed(0)
    full = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), lora=None, freeze_encoder=False)
    torch.manual_seed(0)
    short = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), lora=None, freeze_encoder=False,
                                                        encoder_window="batch")
    short.load_state_dict(full.state_dict())
    full.eval(), short.eval()
    window = full.features.max_seconds
    batch = _batch(full, seconds=(window, 0.5))  # the longest clip fills the window: both encode it all
    assert short.encoder_frames(batch["waveforms"].shape[-1]) == full.config.encoder_config.max_source_positions
    with torch.no_grad():
        torch.testing.assert_close(short(**batch).logits, full(**batch).logits)
    batch = _batch(full, seconds=(0.5, 0.3))
    # 0.5 s = 50 mel frames -> 56 (7 LLM positions of 8 frames) -> 28 encoder positions, of 100
    assert short.encoder_frames(batch["waveforms"].shape[-1]) == 28 < full.encoder_frames(8000) == 100
    short.train()
    loss = short(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and short.encoder.conv1.weight.grad.abs().sum() > 0


def test_batch_window_needs_trimmed_tokens(tiny_parts):
    enc, llm = tiny_parts
    with pytest.raises(ValueError, match="needs trim_audio_tokens=True"):
        BorealisForConditionalGeneration.from_parts(str(enc), str(llm), trim_audio_tokens=False,
                                                    encoder_window="batch")
    with pytest.raises(ValueError, match="encoder_window='half'"):
        BorealisForConditionalGeneration.from_parts(str(enc), str(llm), encoder_window="half")


def test_loss_on_labelled_positions_equals_the_full_forward(tiny_model):
    """model.loss projects only the labelled positions onto the vocabulary: same loss, same grads."""
    model = tiny_model.train()
    model.llm.eval()  # no LoRA dropout draw: both passes must see the same network
    batch = _batch(model, seconds=(1.0, 0.6), answers=("one two three", "five"))
    full = model(**batch).loss
    full.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    lean = model.loss(**batch)
    lean.backward()
    torch.testing.assert_close(lean, full)
    assert want and all(torch.allclose(p.grad, want[n], atol=1e-6) for n, p in model.named_parameters() if n in want)


def test_trainable_state_check_lists_every_problem(tiny_model):
    from borealis.modeling import check_trainable_state

    names = tiny_model.trainable_parameter_names()
    full = tiny_model.state_dict()
    state = {k: full[k] for k in names}
    check_trainable_state(tiny_model, state, source="ckpt")  # exactly the trainable weights
    frozen = {"llm.model.embed_tokens.weight": full["llm.model.embed_tokens.weight"]}
    with pytest.raises(ValueError, match=r"^ckpt X does not match this model's trainable weights: 1 unexpected "
                                         r"key\(s\): \['llm.model.embed_tokens.weight'\].*same encoder, LLM"):
        check_trainable_state(tiny_model, {**state, **frozen}, source="ckpt X")
    check_trainable_state(tiny_model, {**state, **frozen}, source="saved model", allow_frozen=True)
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): \['adapter.extra'\]"):
        check_trainable_state(tiny_model, {**state, "adapter.extra": torch.zeros(1)}, source="x", allow_frozen=True)

    lora = sorted(k for k in names if ".lora_" in k)
    no_lora = {k: v for k, v in state.items() if ".lora_" not in k}
    with pytest.raises(ValueError, match=rf"{len(lora)} missing trainable key\(s\)"):
        check_trainable_state(tiny_model, no_lora, source="merged")
    check_trainable_state(tiny_model, no_lora, source="merged", lora_optional=True)  # fresh LoRA on top
    with pytest.raises(ValueError, match=rf"{len(lora) - 1} missing trainable key\(s\)"):  # some LoRA: all of it
        check_trainable_state(tiny_model, {**no_lora, lora[0]: state[lora[0]]}, source="x", lora_optional=True)
    shape = r"1 shape mismatch\(es\): \['adapter.w_out.weight: \(3, 3\), in the model \(48, 48\)'\]"
    with pytest.raises(ValueError, match=shape):
        check_trainable_state(tiny_model, {**state, "adapter.w_out.weight": torch.zeros(3, 3)}, source="x")


def test_fresh_lora_leaves_the_llm_as_loaded(tiny_parts):
    """peft's start (B = 0): a model with fresh LoRA gives the base LLM's logits exactly."""
    from transformers import AutoModelForCausalLM

    enc, llm = tiny_parts
    model = BorealisForConditionalGeneration.from_parts(str(enc), str(llm), lora=LoraSettings(r=4, alpha=8,
                                                                                                dropout=0.0))
    lora_b = [p for n, p in model.llm.named_parameters() if "lora_B" in n]
    lora_a = [p for n, p in model.llm.named_parameters() if "lora_A" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)
    assert all(p.std() > 0 for p in lora_a)  # A random, so B's gradient is not zero
    base = AutoModelForCausalLM.from_pretrained(str(llm)).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(model.llm.eval()(input_ids=ids).logits[..., :base.config.vocab_size],
                                   base(input_ids=ids).logits, rtol=0, atol=0)
