"""Tiny random base models built in code: a Whisper encoder, a Qwen3 LLM and a byte-level BPE tokenizer.

What: `whisper_config` / `qwen3_config` give the configs of the demo's base models and, with
smaller sizes, of the tests' (tests/conftest.py); `train_tokenizer` trains a Qwen-style
tokenizer with ChatML special tokens; `build_tiny_whisper` / `build_tiny_qwen3` seed torch,
build a random model and save it (Whisper with its feature extractor, a tiny Whisper tokenizer and
generation config: `whisper_tokenizer`; Qwen3 with its tokenizer) where `from_pretrained` loads it,
as it loads a hub checkpoint.

Why: the CPU demo and the tests need real `WhisperModel` and `Qwen3ForCausalLM` parts,
loaded through the same code as the flagship's hub ids, without a download or a hub token.
The demo's random models at `WhisperSize` / `Qwen3Size` are what `borealis demo bases`
pretrains (`borealis.demo.bases`); the tests use them at smaller sizes as they are.

Cost: building and saving both demo models takes ~1 s; the tokenizer trains in ~1 s on the
demo's ~15k sentences.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from borealis.prompts import IM_END, IM_START

ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# Qwen2/Qwen3's pre-tokenizer split (tokenizer.json of Qwen/Qwen3-*): single digits, words
# with their leading space, punctuation runs, newlines.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# ChatML as in Qwen2.5 (without its default system prompt); Borealis builds its own prompts,
# this only makes `apply_chat_template` work on the saved tokenizer.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class WhisperSize:
    """Sizes of a random Whisper; the defaults are the demo's (encoder ~1.4M params)."""

    dim: int = 160  # d_model
    layers: int = 4  # encoder layers
    heads: int = 4  # attention heads (divide dim)
    ffn: int = 640  # encoder feed-forward width: 4 x d_model, as in every Whisper size
    mel_bins: int = 80  # as Whisper <= v2 (large-v3 has 128)
    max_source_positions: int = 150  # 2 mel frames (10 ms each) per position: 150 -> a 3 s window


@dataclass(frozen=True)
class Qwen3Size:
    """Sizes of a random Qwen3; the defaults are the demo's (~2.2M params with its 2,289-token tokenizer)."""

    dim: int = 256  # hidden size
    layers: int = 2  # decoder layers
    heads: int = 4  # query heads
    kv_heads: int = 2  # key/value heads: GQA, as Qwen3
    head_dim: int = 64  # per-head width, set apart from the hidden size as in Qwen3
    ffn: int = 768  # MLP width: 3 x hidden
    max_positions: int = 1024  # 38 audio slots (3 s) and the prompt fit easily


def whisper_config(size: WhisperSize = WhisperSize(), *, decoder_ffn: int | None = None, init_std: float = 0.3):
    """A `WhisperConfig` of `size` whose decoder is one minimal layer with a 64-token vocabulary.

    Only the encoder matters to Borealis, so the decoder costs next to nothing; `decoder_ffn`
    is its feed-forward width (None: `size.dim`). `init_std` 0.3 is the demo's: at Whisper's
    default 0.02 a random encoder's output is ~98% position embedding, clips differ by 2% of
    the output std, and a from-scratch demo spends its whole budget escaping that; at 0.3
    they differ by ~60%, and a tone-classification probe learns through the LLM within 250
    steps (it did not at 0.02 or 0.1).
    """
    from transformers import WhisperConfig

    return WhisperConfig(
        num_mel_bins=size.mel_bins, d_model=size.dim, encoder_layers=size.layers,
        encoder_attention_heads=size.heads, encoder_ffn_dim=size.ffn,
        max_source_positions=size.max_source_positions,
        decoder_layers=1, decoder_attention_heads=size.heads,  # the decoder serves the baseline row only
        decoder_ffn_dim=size.dim if decoder_ffn is None else decoder_ffn,
        vocab_size=64, max_target_positions=16,  # the decoder's vocabulary and length: minimal
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        suppress_tokens=None, begin_suppress_tokens=None,  # Whisper's defaults name ids outside 64 tokens
        init_std=init_std)


def qwen3_config(vocab_size: int, size: Qwen3Size = Qwen3Size(), *, init_std: float = 0.02,
                 eos_token_id: int | None = None, pad_token_id: int | None = None):
    """A `Qwen3Config` of `size` with tied embeddings, as the small Qwen3 models.

    `init_std` is the config's `initializer_range` (Qwen3's default 0.02). Qwen3 has no BOS
    token: its bos id is the pad id (`<|endoftext|>`), as in Qwen3's own config.
    """
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=size.dim, intermediate_size=size.ffn, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.kv_heads, head_dim=size.head_dim,
        max_position_embeddings=size.max_positions, tie_word_embeddings=True, initializer_range=init_std,
        bos_token_id=pad_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, *, qwen3: bool = True):
    """A byte-level BPE tokenizer trained on `texts`, as `PreTrainedTokenizerFast`, with the
    ChatML special tokens `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos).

    `qwen3=True` (the demo's): Qwen3's pre-tokenizer split, NFC normalisation, the ChatML
    role names learnt as single tokens, and a ChatML chat template. With ~100 word types per
    language every word ends up a single token, which is what a 2-layer LM can learn in
    minutes. `qwen3=False` (the tests'): GPT-2's byte-level split and no chat template.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    if not qwen3:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(list(texts), trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    roles = ["system\n", "user\n", "assistant\n"] * 10  # ChatML headers: one token per role name
    tok.train_from_iterator([*texts, *roles], trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT,
                                 additional_special_tokens=[IM_START, IM_END], model_max_length=1024)
    hf.chat_template = CHATML_TEMPLATE
    return hf


WHISPER_LANGUAGES = ("en", "ru")  # the demo's languages: one <|xx|> token each


def whisper_tokenizer(vocab_size: int = 64):
    """A Whisper tokenizer for `whisper_config`'s `vocab_size`-token decoder, laid out as Whisper's.

    Text tokens first, then the special tokens with `<|notimestamps|>` last: Whisper's
    `generate` reads every id above it as a timestamp. Ids 0-2 are the config's pad
    (`<|pad|>`), decoder start (`<|startoftranscript|>`) and eos (`<|endoftext|>`); the text
    tokens are byte-level characters (space, a-z, 0-9, then space-prefixed letters), enough to
    decode whatever a random decoder emits.
    """
    import string

    from transformers import WhisperTokenizer

    head = ["<|pad|>", "<|startoftranscript|>", "<|endoftext|>"]
    tail = [*(f"<|{code}|>" for code in WHISPER_LANGUAGES), "<|translate|>", "<|transcribe|>", "<|notimestamps|>"]
    chars = ["\u0120", *string.ascii_lowercase, *string.digits]  # \u0120 (Ġ): byte-level space
    words = ["\u0120" + c for c in string.ascii_lowercase]
    text = (chars + words)[: vocab_size - len(head) - len(tail)]
    vocab = {token: i for i, token in enumerate(head + text + tail)}
    merges = [("\u0120", t[1:]) for t in text if len(t) == 2]
    return WhisperTokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", pad_token="<|pad|>", extra_special_tokens=[head[1], *tail])


def whisper_generation_config(tokenizer):
    """Whisper's generation settings for `tokenizer` (`whisper_tokenizer`): language and task
    tokens, and the special tokens suppressed in the transcript, as a hub checkpoint has them."""
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    langs = {f"<|{code}|>": ids(f"<|{code}|>") for code in WHISPER_LANGUAGES}
    tasks = {"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")}
    return GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"), eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id, is_multilingual=True,
        lang_to_id=langs, task_to_id=tasks, no_timestamps_token_id=ids("<|notimestamps|>"),
        suppress_tokens=[tokenizer.pad_token_id, ids("<|startoftranscript|>"), *langs.values(), *tasks.values(),
                         ids("<|notimestamps|>")],
        begin_suppress_tokens=[tokenizer.eos_token_id])  # as Whisper: no empty transcript


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_tiny_whisper(out_dir: Path, size: WhisperSize = WhisperSize(), *, seed: int = 0) -> dict[str, int]:
    """Save a random Whisper (`WhisperModel`, `whisper_config(size)`), its
    `WhisperFeatureExtractor`, tokenizer and generation config (`whisper_tokenizer`,
    `whisper_generation_config`: the baseline row of `borealis validate` decodes with them) to
    `out_dir`, the weights drawn after `torch.manual_seed(seed)`.

    `size.max_source_positions` positions cover twice as many mel frames (10 ms each): 150 ->
    3 s, the window every demo clip fits in (the longest is ~2.7 s; a tighter window wastes
    less encoder work on padding).

    Returns:
        Parameter counts: {"encoder": ..., "total": ...}.

    Raises:
        ValueError: the window is not whole seconds, or `size.dim` does not divide into `size.heads`.
    """
    import torch
    from transformers import WhisperFeatureExtractor, WhisperModel

    chunk_seconds, rest = divmod(2 * size.max_source_positions * 160, 16_000)
    problems = []
    if rest:
        problems.append(f"max_source_positions={size.max_source_positions} must be a multiple of 50 "
                        "(the feature extractor's window is whole seconds)")
    if size.dim % size.heads:
        problems.append(f"encoder dim {size.dim} is not divisible by {size.heads} heads")
    if problems:
        raise ValueError("; ".join(problems))
    torch.manual_seed(seed)
    model = WhisperModel(whisper_config(size))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer = whisper_tokenizer(model.config.vocab_size)  # for the Whisper baseline row (random decoder)
    tokenizer.save_pretrained(out_dir)
    whisper_generation_config(tokenizer).save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=size.mel_bins, sampling_rate=16_000, hop_length=160, n_fft=400,
                            chunk_length=chunk_seconds).save_pretrained(out_dir)
    return {"encoder": _params(model.encoder), "total": _params(model)}


def build_tiny_qwen3(out_dir: Path, tokenizer, size: Qwen3Size = Qwen3Size(), *, seed: int = 0) -> dict[str, int]:
    """Save a random `Qwen3ForCausalLM` sized to `len(tokenizer)`, and the tokenizer, to `out_dir`.

    Tied embeddings, GQA (`size.heads` query / `size.kv_heads` key-value heads) and ChatML ids
    as in Qwen3: eos = `<|im_end|>`, pad and bos = `<|endoftext|>`; the weights are drawn
    after `torch.manual_seed(seed)`.

    Returns:
        Parameter counts: {"total": ..., "embedding": ...}.

    Raises:
        ValueError: `size.heads` is not a multiple of `size.kv_heads`.
    """
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    if size.heads % size.kv_heads:
        raise ValueError(f"llm heads ({size.heads}) must be a multiple of llm kv heads ({size.kv_heads})")
    eos, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = qwen3_config(len(tokenizer), size, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.model_max_length = size.max_positions
    tokenizer.save_pretrained(out_dir)
    return {"total": _params(model), "embedding": model.get_input_embeddings().weight.numel()}
