"""Special audio tokens, ChatML prompts, the one chat rule, assistant-only loss masks, and the ASR chat.

The tokens, `chat_problem`, `num_audio_tokens` and `PromptBuilder` (ids and label masks) live in
`borealis.hf_remote.prompts_borealis`, the copy every exported model ships, so a published
model builds its prompts exactly as training did; this module re-exports them and adds what
only training data needs: the instruction an ASR sample is wrapped in, by language, and the
chat of a shard sample.
"""

from __future__ import annotations

from borealis.hf_remote.prompts_borealis import (AUDIO_END, AUDIO_PLACEHOLDER, AUDIO_SPECIAL_TOKENS, AUDIO_START,
                                                 AUDIO_TOKEN, DEFAULT_SYSTEM_PROMPT, IGNORE_INDEX, IM_END, IM_START,
                                                 ROLES, EncodedPrompt, PromptBuilder, add_audio_tokens, chat_problem,
                                                 num_audio_tokens)

__all__ = ["ASR_PROMPTS", "AUDIO_END", "AUDIO_PLACEHOLDER", "AUDIO_SPECIAL_TOKENS", "AUDIO_START", "AUDIO_TOKEN",
           "DEFAULT_SYSTEM_PROMPT", "IGNORE_INDEX", "IM_END", "IM_START", "ROLES", "EncodedPrompt", "PromptBuilder",
           "add_audio_tokens", "asr_messages", "chat_problem", "num_audio_tokens", "sample_messages"]

# The instruction each ASR sample is wrapped in, by language; `default` for the rest.
ASR_PROMPTS = {
    "en": "Transcribe the audio.",
    "ru": "Расшифруй аудио.",
    "default": "Transcribe the audio.",
}


def asr_messages(text: str | None, language: str | None) -> list[dict[str, str]]:
    """The chat an ASR sample is trained on: instruction + audio, answer = transcript."""
    prompt = ASR_PROMPTS.get(language or "default", ASR_PROMPTS["default"])
    messages = [{"role": "user", "content": f"{prompt} {AUDIO_PLACEHOLDER}"}]
    if text is not None:
        messages.append({"role": "assistant", "content": text})
    return messages


def sample_messages(meta: dict, has_audio: bool) -> list[dict[str, str]]:
    """Messages of a shard sample: its own `messages`, or the ASR chat built from `text`."""
    if meta.get("messages"):
        return list(meta["messages"])
    if not has_audio:
        raise ValueError(f"text-only sample {meta.get('key', '?')!r} has no 'messages'")
    return asr_messages(meta.get("text"), meta.get("language"))
