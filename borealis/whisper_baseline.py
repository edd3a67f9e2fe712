"""The seed's Whisper row: the encoder-decoder Whisper whose encoder Borealis froze, on the same benchmarks.

Why: the seed compares every run with plain Whisper-large-v3 on the same benchmarks (11.03
average WER against 19.17-24.02), and the question every run raises is the same: is the
audio LLM better than the Whisper it froze? `borealis validate` answers it in the same
table: `WhisperBaseline` transcribes each validation batch with
`WhisperForConditionalGeneration.generate` (greedy, as Borealis decodes), from the same
log-mel the Borealis model computes (`features_borealis.WhisperLogMel`, which matches
`WhisperFeatureExtractor`), and the module scores it with the same normaliser and sums
(`metrics.word_errors`).

Language and task: each row's decoder prompt is `<|startoftranscript|><|lang|><|transcribe|>
<|notimestamps|>`, the language taken from the sample's `language` metadata. A batch is
split by language and each group is one batched `generate` call (a benchmark holds one
language, so that is one call per batch); rows without a language let Whisper detect it.
English-only checkpoints (no language tokens in their generation config) get no language
or task token.

Cost: a second model's weights on each device (large-v3: 1.55B parameters, 3.1 GB in bf16)
and one more greedy decode per batch; its time is kept out of Borealis' RTFx and reported
as its own (`metrics.write_report`'s `baselines`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import AutoTokenizer, WhisperForConditionalGeneration
from transformers.utils import logging as hf_logging

log = logging.getLogger(__name__)

PROMPT_TOKENS = 4  # <|startoftranscript|> <|lang|> <|transcribe|> <|notimestamps|>


class WhisperBaseline:
    """A Whisper encoder-decoder and its tokenizer, transcribing log-mel batches.

    Args:
        model: the encoder-decoder, in eval mode, on the device and dtype to run in.
        tokenizer: its tokenizer (decodes the generated ids).
        max_new_tokens: generation limit per clip, at most what the decoder's positions allow
            after the prompt (`max_target_positions - 4`: 444 for large-v3).
    """

    def __init__(self, model: WhisperForConditionalGeneration, tokenizer, max_new_tokens: int) -> None:
        limit = model.config.max_target_positions - PROMPT_TOKENS
        if not 1 <= max_new_tokens <= limit:
            raise ValueError(f"whisper_baseline_max_new_tokens={max_new_tokens}: must be in 1..{limit} (the "
                             f"decoder's max_target_positions {model.config.max_target_positions} less the "
                             f"{PROMPT_TOKENS} prompt tokens)")
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.multilingual = bool(getattr(model.generation_config, "lang_to_id", None))

    @classmethod
    def load(cls, name: str, *, device: torch.device, dtype: torch.dtype,
             max_new_tokens: int | None) -> WhisperBaseline | None:
        """Load the checkpoint `name` (hub id or folder) as an encoder-decoder; None, with one
        log line saying why, when it has no decoder weights or no tokenizer.

        `max_new_tokens` None: as many as the decoder's positions allow. Missing weights would
        be drawn at random by `from_pretrained`; the draws run in a forked RNG, so the
        training streams are untouched whatever the checkpoint holds.
        """
        devices = [device] if device.type == "cuda" else []
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its load report of missing keys: the line below says it once
        try:
            with torch.random.fork_rng(devices=devices):
                model, info = WhisperForConditionalGeneration.from_pretrained(name, dtype=dtype,
                                                                             output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        if info["missing_keys"]:  # any weight drawn at random is not the checkpoint's Whisper
            missing = sorted(info["missing_keys"])
            what = "no decoder weights" if any(".decoder." in k for k in missing) else "missing weights"
            log.info("Whisper baseline skipped: %s has %s (%d missing, e.g. %s); the table shows no Whisper row",
                     name, what, len(missing), missing[0])
            return None
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError):
            tokenizer = []
        start = model.generation_config.decoder_start_token_id
        if start is None or len(tokenizer) <= start:  # without tokenizer files transformers builds an empty one
            log.info("Whisper baseline skipped: %s has no tokenizer that decodes its decoder's ids (%d tokens, the "
                     "decoder starts at id %s); the table shows no Whisper row", name, len(tokenizer), start)
            return None
        limit = model.config.max_target_positions - PROMPT_TOKENS
        return cls(model.to(device).eval().requires_grad_(False), tokenizer,
                   limit if max_new_tokens is None else max_new_tokens)

    @torch.no_grad()
    def generate(self, input_features: torch.Tensor, languages: Sequence[str | None]) -> list[torch.Tensor]:
        """Greedy transcripts' token ids per clip, trailing padding removed.

        Args:
            input_features: (A, M, T_mel) log-mel of the encoder's full window.
            languages: (A,) language codes ("en", "ru") or names; None lets Whisper detect it.

        Returns:
            A list of A 1-D tensors: each clip's generated ids (the prompt excluded), in row order.
        """
        features = input_features.to(self.model.dtype)
        groups: dict[str | None, list[int]] = {}
        for row, lang in enumerate(languages if self.multilingual else [None] * len(languages)):
            groups.setdefault(lang, []).append(row)
        out: list[torch.Tensor | None] = [None] * len(languages)
        pad = self.model.generation_config.pad_token_id
        for lang, rows in groups.items():
            index = torch.tensor(rows, device=features.device)
            task = {"language": lang, "task": "transcribe"} if self.multilingual else {}
            ids = self.model.generate(features.index_select(0, index), max_new_tokens=self.max_new_tokens,
                                      do_sample=False, num_beams=1, **task)  # (rows, L)
            keep = ids != pad if pad is not None else torch.ones_like(ids, dtype=torch.bool)
            ends = keep.flip(1).int().argmax(1)  # trailing pads per row
            ends = torch.where(keep.any(1), ids.shape[1] - ends, 0).tolist()
            for row, seq, end in zip(rows, ids, ends):
                out[row] = seq[:end]
        return out

    def transcribe(self, input_features: torch.Tensor, languages: Sequence[str | None]) -> list[str]:
        """(A, M, T_mel) log-mel + (A,) languages -> A transcripts (special tokens dropped, stripped)."""
        ids = self.generate(input_features, languages)
        return [t.strip() for t in self.tokenizer.batch_decode([s.tolist() for s in ids], skip_special_tokens=True)]
