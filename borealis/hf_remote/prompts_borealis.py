"""Special audio tokens, the chat rule, ChatML prompts and assistant-only loss masks.

Every sample becomes a ChatML conversation (Qwen's format):

    <|im_start|>system\n{system}<|im_end|>\n
    <|im_start|>user\n{prompt} <|start_of_audio|><|AUDIO|>×N<|end_of_audio|><|im_end|>\n
    <|im_start|>assistant\n{answer}<|im_end|>\n

The conversation is tokenised segment by segment, so the label mask is known by
construction: assistant content and its `<|im_end|>` carry loss, everything else is -100.
It costs nothing per step (no scan of the tokens for the assistant turn) and runs once per
sample in the DataLoader workers. Generation prompts are the same segments ending with the
assistant header, so a model answers prompts built exactly as in training.

N, the number of `<|AUDIO|>` slots, comes from `num_audio_tokens`: with trimming it is the
real audio length, ceil(mel_frames / 2 / k); without it, every clip gets the full window
(375 for 30 s on Whisper-large-v3 with k = 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .features_borealis import HOP_LENGTH

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_START = "<|start_of_audio|>"
AUDIO_END = "<|end_of_audio|>"
AUDIO_PLACEHOLDER = AUDIO_START + AUDIO_END
AUDIO_SPECIAL_TOKENS = (AUDIO_TOKEN, AUDIO_START, AUDIO_END)
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
DEFAULT_SYSTEM_PROMPT = "You are a helpful voice assistant."


def chat_problem(messages, *, has_audio: bool, needs_answer: bool = True) -> str | None:
    """Why `messages` is not a valid chat, or None when it is: the one chat rule.

    A chat is a non-empty list of {"role": one of `ROLES`, "content": str}; with `needs_answer`
    it has an assistant turn to train on; an audio sample holds exactly one `AUDIO_PLACEHOLDER`,
    in a user turn, and a text-only chat holds none. Shard building rejects, the training
    stream skips and `PromptBuilder.encode` raises on what this names.
    """
    if not isinstance(messages, list) or not messages:
        return f"'messages' must be a non-empty list, got {type(messages).__name__}"
    bad = [f"messages[{i}] must be {{'role': one of {ROLES}, 'content': str}}, got {m!r:.80}"
           for i, m in enumerate(messages)
           if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str)]
    if bad:
        return "; ".join(bad)
    if needs_answer and not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn to train on"
    holders = [(i, m["role"]) for i, m in enumerate(messages) for _ in range(m["content"].count(AUDIO_PLACEHOLDER))]
    if has_audio and (len(holders) != 1 or holders[0][1] != "user"):
        return (f"an audio sample needs exactly one {AUDIO_PLACEHOLDER!r} in a user turn, found {len(holders)} "
                f"(turn, role): {holders}")
    if not has_audio and holders:
        return f"a text-only chat must not hold {AUDIO_PLACEHOLDER!r} (found in turns {[i for i, _ in holders]})"
    return None


def add_audio_tokens(tokenizer) -> dict[str, int]:
    """Register the three audio tokens (idempotent) and return their ids."""
    tokenizer.add_special_tokens({"additional_special_tokens": list(AUDIO_SPECIAL_TOKENS)},
                                 replace_extra_special_tokens=False)
    return {tok: tokenizer.convert_tokens_to_ids(tok) for tok in AUDIO_SPECIAL_TOKENS}


def num_audio_tokens(num_samples, *, downsample_factor: int, max_source_positions: int, trim: bool):
    """`<|AUDIO|>` slots for a clip of `num_samples` at 16 kHz (int or tensor).

    The encoder halves the mel frames (conv stride 2) and the downsampler stacks k frames,
    padding the tail: N = ceil(frames / (2k)), capped by the encoder window.
    """
    full = -(-max_source_positions // downsample_factor)
    if not trim:
        return torch.full_like(num_samples, full) if torch.is_tensor(num_samples) else full
    frames = num_samples // HOP_LENGTH
    n = (frames + 2 * downsample_factor - 1) // (2 * downsample_factor)
    return n.clamp(max=full) if torch.is_tensor(n) else min(n, full)


@dataclass
class EncodedPrompt:
    input_ids: list[int]
    labels: list[int]
    reference: str | None  # the final assistant answer when it was held out for generation


class PromptBuilder:
    """Turns chats into token ids and labels for one tokenizer and one audio geometry.

    Args:
        tokenizer: a Hugging Face tokenizer with ChatML tokens; the audio tokens are added.
        downsample_factor: frames stacked by the downsampler (k).
        max_source_positions: encoder positions for the full window (1500 for 30 s).
        trim_audio_tokens: N follows the real audio length instead of the full window.
        system_prompt: system turn prepended to chats that have none ("" for none).
    """

    CACHED_TEXTS = 4096  # distinct segment texts `_tok` keeps

    def __init__(self, tokenizer, *, downsample_factor: int = 4, max_source_positions: int = 1500,
                 trim_audio_tokens: bool = True, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> None:
        self.tokenizer = tokenizer
        self.audio_ids = add_audio_tokens(tokenizer)
        self.audio_token_id = self.audio_ids[AUDIO_TOKEN]
        self.downsample_factor = downsample_factor
        self.max_source_positions = max_source_positions
        self.trim_audio_tokens = trim_audio_tokens
        self.system_prompt = system_prompt
        self.eos_token_id = tokenizer.convert_tokens_to_ids(IM_END)
        if self.eos_token_id is None or self.eos_token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {IM_END!r} token; Borealis prompts are ChatML")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        self._ids: dict[str, tuple[int, ...]] = {}  # `_tok`'s cache

    def num_audio_tokens(self, num_samples):
        return num_audio_tokens(num_samples, downsample_factor=self.downsample_factor,
                                max_source_positions=self.max_source_positions, trim=self.trim_audio_tokens)

    def _tok(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text, tokenised on its own; repeated texts (role headers, system turns,
        instructions) come from a bounded cache, so a benchmark's prompts cost one lookup each."""
        found = {t: self._ids.get(t) for t in texts}
        missing = [t for t, ids in found.items() if ids is None]
        if missing:
            for text, ids in zip(missing, self.tokenizer(missing, add_special_tokens=False)["input_ids"]):
                if len(self._ids) >= self.CACHED_TEXTS:
                    del self._ids[next(iter(self._ids))]  # oldest first
                self._ids[text] = found[text] = tuple(ids)
        return [list(found[t]) for t in texts]

    def encode(self, messages: Sequence[dict[str, str]], *, num_samples: int | None = None,
               generation: bool = False) -> EncodedPrompt:
        """Token ids and labels of a chat.

        Args:
            messages: [{"role", "content"}], valid by `chat_problem`: exactly one user turn
                holds `AUDIO_PLACEHOLDER` when `num_samples` is given, none otherwise.
            num_samples: audio length at 16 kHz, or None for a text-only chat.
            generation: drop the final assistant turn (returned as `reference`) and end with
                the assistant header, ready for `generate`; no assistant turn is needed.

        Raises:
            ValueError: the chat breaks `chat_problem`'s rule (the message says how).
        """
        messages = list(messages)
        reference = None
        if generation and messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            reference = messages.pop()["content"]
        problem = chat_problem(messages, has_audio=num_samples is not None, needs_answer=not generation)
        if problem:
            raise ValueError(f"cannot encode this chat ({'audio' if num_samples is not None else 'no audio'} "
                             f"given): {problem}")
        if messages[0]["role"] != "system" and self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})

        # Segments: (text, carries_loss). The placeholder splits its turn in two.
        segments: list[tuple[str, bool]] = []
        for m in messages:
            segments.append((f"{IM_START}{m['role']}\n", False))
            body, trained = m["content"], m["role"] == "assistant"
            if AUDIO_PLACEHOLDER in body:
                before, after = body.split(AUDIO_PLACEHOLDER)
                segments += [(before, False), (AUDIO_PLACEHOLDER, False), (after + IM_END, False)]
            else:
                segments.append((body + IM_END, trained))
            segments.append(("\n", False))
        if generation:
            segments.append((f"{IM_START}assistant\n", False))

        pieces = self._tok([text for text, _ in segments if text != AUDIO_PLACEHOLDER])
        input_ids: list[int] = []
        labels: list[int] = []
        it = iter(pieces)
        for text, trained in segments:
            if text == AUDIO_PLACEHOLDER:
                n = int(self.num_audio_tokens(num_samples))
                ids = [self.audio_ids[AUDIO_START]] + [self.audio_token_id] * n + [self.audio_ids[AUDIO_END]]
            else:
                ids = next(it)
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
        return EncodedPrompt(input_ids, labels, reference)
