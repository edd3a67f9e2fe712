"""Prompts: the chat rule, audio-token counts, ChatML ids and the assistant-only label mask."""

import pytest
import torch
from transformers import AutoTokenizer

from borealis.prompts import (AUDIO_PLACEHOLDER, AUDIO_TOKEN, IGNORE_INDEX, IM_START, PromptBuilder, asr_messages,
                              chat_problem, num_audio_tokens, sample_messages)

SR = 16000
USER_AUDIO = {"role": "user", "content": f"Transcribe the audio. {AUDIO_PLACEHOLDER}"}
ANSWER = {"role": "assistant", "content": "one two"}


@pytest.fixture()
def prompts(tiny_parts):
    """The tiny LLM's tokenizer, Whisper-large-v3 geometry (k = 4, 1500 positions), trimmed tokens."""
    return PromptBuilder(AutoTokenizer.from_pretrained(tiny_parts[1]))


def test_chat_problem_accepts_valid_chats():
    assert chat_problem([USER_AUDIO, ANSWER], has_audio=True) is None
    assert chat_problem([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}, ANSWER],
                        has_audio=False) is None
    assert chat_problem([USER_AUDIO], has_audio=True, needs_answer=False) is None  # a generation prompt


@pytest.mark.parametrize("messages,has_audio,needs_answer,says", [
    ("hi", False, True, "non-empty list"),
    ([], False, True, "non-empty list"),
    ([{"role": "tool", "content": "x"}, ANSWER], False, True, "messages[0] must be"),
    ([{"role": "user"}, ANSWER], False, True, "messages[0] must be"),
    ([USER_AUDIO], True, True, "no assistant turn"),
    ([{"role": "user", "content": "no audio here"}, ANSWER], True, True, "exactly one"),
    ([{"role": "system", "content": AUDIO_PLACEHOLDER}, {"role": "user", "content": "x"}, ANSWER], True, True,
     "in a user turn"),
    ([{"role": "user", "content": AUDIO_PLACEHOLDER * 2}, ANSWER], True, True, "found 2"),
    ([USER_AUDIO, ANSWER], False, True, "text-only chat must not hold"),
])
def test_chat_problem_names_each_broken_rule(messages, has_audio, needs_answer, says):
    problem = chat_problem(messages, has_audio=has_audio, needs_answer=needs_answer)
    assert problem is not None and says in problem, problem


def test_trimming_counts():
    # tiny clip on large-v3 shapes: 0.5 s = 50 mel frames -> ceil(50 / 8) = 7 slots
    assert num_audio_tokens(8000, downsample_factor=4, max_source_positions=1500, trim=True) == 7
    assert num_audio_tokens(30 * SR, downsample_factor=4, max_source_positions=1500, trim=True) == 375
    assert num_audio_tokens(8000, downsample_factor=4, max_source_positions=1500, trim=False) == 375
    lengths = torch.tensor([8000, 30 * SR, 40 * SR])
    assert num_audio_tokens(lengths, downsample_factor=4, max_source_positions=1500, trim=True).tolist() == [7, 375, 375]
    assert num_audio_tokens(lengths, downsample_factor=4, max_source_positions=1500, trim=False).tolist() == [375] * 3


def test_encode_raises_on_what_the_chat_rule_names(prompts):
    with pytest.raises(ValueError, match="exactly one"):
        prompts.encode([{"role": "user", "content": "no audio here"}, ANSWER], num_samples=SR)
    with pytest.raises(ValueError, match="no assistant turn"):
        prompts.encode([USER_AUDIO], num_samples=SR)  # a training chat must have something to learn
    with pytest.raises(ValueError, match="text-only chat must not hold"):
        prompts.encode([USER_AUDIO, ANSWER])
    assert prompts.encode([USER_AUDIO], num_samples=SR, generation=True).reference is None


def test_labels_cover_exactly_assistant_tokens(prompts):
    chat = [{"role": "user", "content": f"hi {AUDIO_PLACEHOLDER}"}, {"role": "assistant", "content": "one two"},
            {"role": "user", "content": "and then"}, {"role": "assistant", "content": "three"}]
    e = prompts.encode(chat, num_samples=SR)
    assert len(e.labels) == len(e.input_ids)
    trained = [t for t, label in zip(e.input_ids, e.labels) if label != IGNORE_INDEX]
    tok = prompts.tokenizer
    want = [*tok("one two", add_special_tokens=False)["input_ids"], prompts.eos_token_id,
            *tok("three", add_special_tokens=False)["input_ids"], prompts.eos_token_id]
    assert trained == want  # both answers and their <|im_end|>, nothing of the prompt, headers or audio
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(e.input_ids, e.labels))


def test_audio_slots_follow_the_clip_and_the_system_turn_is_added(prompts):
    e = prompts.encode([USER_AUDIO, ANSWER], num_samples=8000)
    assert e.input_ids.count(prompts.audio_token_id) == 7
    assert prompts.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN) == prompts.audio_token_id
    text = prompts.tokenizer.decode(e.input_ids)
    assert text.startswith(f"{IM_START}system\n{prompts.system_prompt}")
    own = prompts.encode([{"role": "system", "content": "Be brief."}, USER_AUDIO, ANSWER], num_samples=8000)
    assert prompts.tokenizer.decode(own.input_ids).count(f"{IM_START}system") == 1


def test_generation_prompt_holds_out_the_answer_and_ends_with_the_assistant_header(prompts):
    train = prompts.encode([USER_AUDIO, ANSWER], num_samples=SR)
    gen = prompts.encode([USER_AUDIO, ANSWER], num_samples=SR, generation=True)
    assert gen.reference == "one two"
    assert set(gen.labels) == {IGNORE_INDEX}
    header = prompts.tokenizer(f"{IM_START}assistant\n", add_special_tokens=False)["input_ids"]
    assert gen.input_ids[-len(header):] == header
    assert train.input_ids[:len(gen.input_ids)] == gen.input_ids  # the same prompt, cut where the answer starts


def test_segment_cache_is_bounded_and_changes_nothing(prompts):
    prompts.CACHED_TEXTS = 3
    chats = [[{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}] for w in ("one", "two")]
    first = [prompts.encode(c).input_ids for c in chats]
    assert len(prompts._ids) <= 3
    assert [prompts.encode(c).input_ids for c in chats] == first


def test_asr_and_shard_sample_chats():
    assert asr_messages("dva", "ru") == [
        {"role": "user", "content": f"Расшифруй аудио. {AUDIO_PLACEHOLDER}"}, {"role": "assistant", "content": "dva"}]
    assert asr_messages(None, "xx") == [{"role": "user", "content": f"Transcribe the audio. {AUDIO_PLACEHOLDER}"}]
    assert sample_messages({"text": "one", "language": "en"}, has_audio=True)[1]["content"] == "one"
    own = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert sample_messages({"messages": own}, has_audio=False) == own
    with pytest.raises(ValueError, match="has no 'messages'"):
        sample_messages({"key": "k", "text": "one"}, has_audio=False)
