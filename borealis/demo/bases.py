"""The demo's pretrained bases: a Whisper encoder trained for recognition and a Qwen3 trained as a
language model, on the demo corpus's training pools only.

What: `build_bases(corpus, out, settings)` loads the random models that `borealis demo` wrote
(`CORPUS/models/whisper`, `CORPUS/models/qwen3` with its tokenizer) and trains
- the Whisper encoder with a CTC head over the Qwen3 tokenizer's tokens (`pretrain_encoder`)
  on the speech of `train/asr_*` and `train/instruct`, every batch through the same log-mel and
  encoder code as Borealis (`WhisperLogMel`, `run_encoder`, the full window), with the training
  noise pool (`shards/noise`: brown, band, hum and babble, never the benchmark's white or pink)
  mixed into `noise_share` of the clips at `snr_db` and a random gain (optionally each clip
  at a random `speed`, SpecAugment on the log-mel and `encoder_dropout`: off in the shipped bases);
- the Qwen3 as a causal language model (`pretrain_llm`) on the training transcripts, the spoken
  instructions' prompts and answers and the text-only chats, as ChatML conversations, and on
  the ASR chats of the training clips in Borealis's own prompt format with the transcript's
  tokens in the audio slots (`CopyConversations`), so it reads a transcript out of a slot span
  (for `copy_shuffle_share` of them, the transcript's words in a random order, which no
  language-model prior can guess, so the answer has to be read out of the slots);
  its tokenizer carries the three audio tokens, whose rows it trains;
then saves both with `save_pretrained` in bfloat16, the dtype the flagship's `base_dtype` loads
them in, so a fit computes with the files' own bits (the CTC head is dropped: Borealis reads the
encoder's hidden states), with `bases.json` (sizes, settings, times, and each base's own quality
on the demo benchmarks: greedy CTC WER, the LM's loss per token and its greedy WER reading the
benchmark transcripts out of slot spans) and `SHA256SUMS`.

Why: the demo trains the flagship recipe, a frozen pretrained encoder and LoRA on a pretrained
LLM, and nothing can be downloaded; these bases stand in for `openai/whisper-large-v3` and
`Qwen/Qwen3-4B`, loaded by the same `from_pretrained` path. CTC over the LLM's own tokens gives
encoder states from which a map reads the words, and the copy chats give an LLM that reads
words out of the audio slots, so the adapter has a target to learn; no benchmark sentence or
voice is ever trained on (`borealis.demo.plan` guarantees it for the pools read here).

Cost: one seeded run on 2 CPU cores; the defaults take ~70 min (encoder ~51, LLM ~19;
BENCHMARKS.md). The saved bases are ~8 MB in all (`models/demo/` of the repository).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SPEECH_POOLS = ("train/asr_en", "train/asr_ru", "train/instruct")  # the encoder hears only these
TEXT_POOLS = ("train/asr_en", "train/asr_ru", "train/instruct", "train/text")  # the LM reads only these
DOWNSAMPLE = 4  # the recipe's frame stacking: windows are cut to whole stacked positions, as Borealis cuts them
BENCHMARKS = ("demo_en", "demo_ru", "demo_en_random", "demo_ru_random", "demo_en_noisy")  # quality, not training


@dataclass(frozen=True)
class BaseSettings:
    """How the bases are trained (`borealis demo bases --help` documents each)."""

    seed: int = 0
    encoder_steps: int = 10000
    encoder_batch: int = 32
    encoder_lr: float = 3e-3
    noise_share: float = 0.5
    snr_db: tuple[float, float] = (5.0, 30.0)
    gain_db: tuple[float, float] = (-6.0, 6.0)
    char_ctc_weight: float = 1.0
    speed: tuple[float, float] = (1.0, 1.0)
    spec_augment: bool = False
    encoder_dropout: float = 0.0
    init_std: float = 0.02
    llm_steps: int = 2400
    llm_batch: int = 64
    llm_lr: float = 3e-3
    copy_share: float = 0.75
    copy_max_run: int = 4
    copy_swap_rate: float = 0.03
    copy_shuffle_share: float = 0.5
    warmup: int = 100
    threads: int = 0  # 0: torch's default


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_pool(pool_dir: Path) -> Iterator[dict]:
    """Every decoded sample of a pool's shards, in shard order.

    Raises:
        FileNotFoundError: the pool has no shards (build the corpus first: `borealis demo`).
    """
    from borealis.shards import iter_shard, list_shards

    paths = list_shards(pool_dir)
    if not paths:
        raise FileNotFoundError(f"no shards in {pool_dir}; build the demo corpus first: borealis demo --out "
                                f"{pool_dir.parent.parent.parent}")
    for path in paths:
        yield from iter_shard(path)


def transcript(sample: dict) -> str | None:
    """What the speech of a training sample says: its `text` (ASR and instruction clips)."""
    return sample["meta"].get("text")


def _schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class SpeechSet:
    """Clips of a set of pools held in memory as one zero-padded int16 tensor, with token targets
    and character targets (indices into `alphabet`, every character of the transcripts, sorted)."""

    def __init__(self, pools: Sequence[Path], tokenizer, num_samples: int) -> None:
        import torch

        audio, lengths, targets, texts = [], [], [], []
        for pool in pools:
            for sample in read_pool(pool):
                text = transcript(sample)
                if sample["audio"] is None or not text:
                    continue
                clip = sample["audio"][:num_samples]
                audio.append(torch.from_numpy(np.round(np.clip(clip, -1, 1) * 32767).astype(np.int16)))
                lengths.append(clip.size)
                targets.append(tokenizer(text, add_special_tokens=False)["input_ids"])
                texts.append(text)
        if not audio:
            raise ValueError(f"no transcribed speech in {', '.join(map(str, pools))}")
        self.audio = torch.zeros(len(audio), num_samples, dtype=torch.int16)
        for i, a in enumerate(audio):
            self.audio[i, : a.numel()] = a
        self.lengths = torch.tensor(lengths)
        self.targets = targets
        self.texts = texts
        self.alphabet = "".join(sorted(set("".join(texts))))
        index = {c: i for i, c in enumerate(self.alphabet)}
        self.char_targets = [[index[c] for c in t] for t in texts]

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, rows) -> tuple:
        """(audio (B, S) float, lengths (B,), concatenated token targets, their lengths (B,),
        concatenated character targets, their lengths (B,)) of `rows`; S is the longest clip of
        the batch, not the window."""
        import torch

        rows = torch.as_tensor(rows)
        lengths = self.lengths[rows]
        audio = self.audio[rows, : int(lengths.max())].float() / 32767
        return audio, lengths, *self._flat(self.targets, rows), *self._flat(self.char_targets, rows)

    @staticmethod
    def _flat(targets: list[list[int]], rows) -> tuple:
        import torch

        picked = [targets[int(i)] for i in rows]
        return torch.tensor([t for ts in picked for t in ts], dtype=torch.long), torch.tensor([len(t) for t in picked])

    def epoch(self, batch_size: int, generator) -> list:
        """One epoch of batches of clips of similar length: sorted by length with a random
        jitter of +-10% (so batches differ between epochs), cut, then shuffled."""
        import torch

        jitter = 1 + 0.2 * (torch.rand(len(self), generator=generator) - 0.5)
        order = torch.argsort(self.lengths * jitter)
        batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


class NoiseMixer:
    """Batched noise mixing: every row gets an excerpt of the noise pool (its clips joined end to
    end, from a random offset) scaled to a random SNR over the row's speech, added to `share` of
    the rows; every row also gets a random gain. No Python loop over rows."""

    def __init__(self, pool: Path, settings: BaseSettings, generator) -> None:
        import torch

        clips = [torch.from_numpy(np.asarray(s["audio"], dtype=np.float32)) for s in read_pool(pool)]
        if not clips:
            raise ValueError(f"the noise pool {pool} holds no clips")
        self.noise = torch.cat(clips)
        self.settings = settings
        self.generator = generator

    def __call__(self, audio, lengths):
        import torch

        b, n = audio.shape
        g, s = self.generator, self.settings
        start = torch.randint(self.noise.numel(), (b, 1), generator=g)
        excerpt = self.noise[(start + torch.arange(n)) % self.noise.numel()]  # (B, S)
        valid = torch.arange(n) < lengths[:, None]
        speech_power = (audio.pow(2) * valid).sum(1) / lengths
        noise_power = (excerpt.pow(2) * valid).sum(1) / lengths
        snr = torch.empty(b).uniform_(*s.snr_db, generator=g)
        on = (torch.rand(b, generator=g) < s.noise_share).float()
        scale = on * (speech_power / noise_power.clamp_min(1e-10) / 10 ** (snr / 10)).sqrt()
        gain = 10 ** (torch.empty(b, 1).uniform_(*s.gain_db, generator=g) / 20)
        return ((audio + scale[:, None] * excerpt * valid) * gain).clamp(-1, 1)


def ctc_greedy(log_probs, lengths, blank: int) -> list[list[int]]:
    """Greedy CTC decoding of (B, T, V) log-probs: the best token per frame, repeats merged, blanks dropped."""
    import torch

    best = log_probs.argmax(-1)  # (B, T)
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != blank
    keep &= torch.arange(best.shape[1])[None] < lengths[:, None]
    return [row[mask].tolist() for row, mask in zip(best, keep)]


def _reinit(encoder, std: float) -> None:
    """Fresh weights for the encoder's linear and conv layers (normal(0, std), zero bias) and unit
    layer norms; the sinusoidal position table stays. The corpus's random Whisper is drawn for
    training through an LLM from scratch (init_std 0.3), too large for CTC pretraining."""
    import torch

    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def perturb_speed(audio, lengths, factors: tuple[float, float], max_samples: int, generator) -> tuple:
    """Every row played at its own random speed in `factors` (pitch moves with tempo, as from a
    voice of another register), by linear interpolation; a row is sped up as far as needed to
    stay within `max_samples`. Returns (audio (B, S'), lengths (B,)); one batched gather.
    """
    import torch

    factor = torch.empty(audio.shape[0]).uniform_(*factors, generator=generator)
    factor = torch.maximum(factor, (lengths - 1) / (max_samples - 1))
    new_lengths = ((lengths - 1) / factor).floor().long() + 1
    position = torch.arange(int(new_lengths.max()))[None] * factor[:, None]  # (B, S'): where each sample reads
    left = position.floor().long().clamp(max=audio.shape[1] - 1)
    right = (left + 1).clamp(max=audio.shape[1] - 1)
    weight = position - left
    out = audio.gather(1, left) * (1 - weight) + audio.gather(1, right) * weight
    return out * (torch.arange(out.shape[1])[None] < new_lengths[:, None]), new_lengths


def pretrain_encoder(whisper_dir: Path, corpus: Path, tokenizer, settings: BaseSettings, out: Path) -> dict:
    """Train the encoder of `whisper_dir` with CTC over `tokenizer`'s tokens; save it to `out`."""
    import torch
    from transformers import WhisperModel

    from borealis.features import WhisperLogMel, num_mel_frames, window_frames
    from borealis.hf_remote.modeling_borealis import run_encoder
    from borealis.spec_augment import SpecAugment

    torch.manual_seed(settings.seed)  # the weight draws (`_reinit`, the heads); each base seeds its own
    # dropout regularises the pretraining only: the saved config keeps the corpus model's (no dropout)
    saved_dropout = WhisperModel.config_class.from_pretrained(whisper_dir).dropout
    model = WhisperModel.from_pretrained(whisper_dir, dtype=torch.float32, dropout=settings.encoder_dropout)
    encoder = model.get_encoder()
    _reinit(encoder, settings.init_std)
    positions = model.config.max_source_positions
    features = WhisperLogMel.from_encoder_config(model.config)
    blank = len(tokenizer)
    head = torch.nn.Linear(model.config.d_model, blank + 1)
    data = SpeechSet([corpus / "shards" / p for p in SPEECH_POOLS], tokenizer, features.num_samples)
    alphabet = data.alphabet
    char_head = torch.nn.Linear(model.config.d_model, len(alphabet) + 1)
    generator = torch.Generator().manual_seed(settings.seed)
    mixer = NoiseMixer(corpus / "shards" / "noise", settings, generator)
    masker = SpecAugment(freq_masks=2, freq_width=15, time_masks=2, time_width=20) if settings.spec_augment else None
    params = [*encoder.parameters(), *head.parameters(), *char_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.encoder_lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _schedule(step, settings.warmup, settings.encoder_steps))
    ctc = torch.nn.CTCLoss(blank=blank, zero_infinity=True)
    char_ctc = torch.nn.CTCLoss(blank=len(alphabet), zero_infinity=True)
    log.info("encoder: CTC over %d tokens on %d clips, %d steps of %d", blank, len(data),
             settings.encoder_steps, settings.encoder_batch)
    encoder.train()
    start, losses, char_losses, batches = time.monotonic(), [], [], []
    for step in range(settings.encoder_steps):
        if not batches:
            batches = data.epoch(settings.encoder_batch, generator)
        audio, lengths, targets, target_lengths, chars, char_lengths = data.batch(batches.pop())
        if settings.speed != (1.0, 1.0):
            audio, lengths = perturb_speed(audio, lengths, settings.speed, features.num_samples, generator)
        mel = features(mixer(audio, lengths), lengths, window_frames(audio.shape[1], DOWNSAMPLE, positions))
        if masker is not None:
            mel = masker(mel, num_mel_frames(lengths), generator)
        frames = (num_mel_frames(lengths) + 1) // 2
        hidden = run_encoder(encoder, mel)
        log_probs = head(hidden).log_softmax(-1)  # (B, T, V + 1)
        token_loss = ctc(log_probs.transpose(0, 1), targets, frames, target_lengths)
        loss = token_loss
        if settings.char_ctc_weight:  # an auxiliary character CTC loss on the same hidden states
            char_log_probs = char_head(hidden).log_softmax(-1)
            loss = loss + settings.char_ctc_weight * char_ctc(char_log_probs.transpose(0, 1), chars, frames,
                                                              char_lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(token_loss.item())
        char_losses.append(loss.item() - losses[-1])
        if step % 100 == 0 or step == settings.encoder_steps - 1:
            log.info("encoder step %d/%d: token CTC loss %.3f, character CTC loss %.3f (%.0f s)", step,
                     settings.encoder_steps, float(np.mean(losses[-100:])), float(np.mean(char_losses[-100:])),
                     time.monotonic() - start)
    seconds = time.monotonic() - start
    encoder.eval()
    quality = {name: _ctc_wer(encoder, head, features, corpus / "shards" / "bench" / name, tokenizer, blank, positions)
               for name in BENCHMARKS}
    model.config.dropout = saved_dropout
    model.to(torch.bfloat16).save_pretrained(out)
    return {"steps": settings.encoder_steps, "seconds": round(seconds, 1), "clips": len(data),
            "final_ctc_loss": round(float(np.mean(losses[-100:])), 4), "wer": quality,
            "parameters": sum(p.numel() for p in encoder.parameters())}


def _ctc_wer(encoder, head, features, pool: Path, tokenizer, blank: int, positions: int) -> float:
    """Greedy CTC WER (%) of the encoder on one benchmark pool (batch windows, as in training)."""
    import torch

    from borealis.features import num_mel_frames, window_frames
    from borealis.hf_remote.modeling_borealis import run_encoder
    data = SpeechSet([pool], tokenizer, features.num_samples)
    hyps: list[str] = []
    with torch.no_grad():
        for i in range(0, len(data), 64):
            audio, lengths, *_ = data.batch(range(i, min(i + 64, len(data))))
            mel = features(audio, lengths, window_frames(audio.shape[1], DOWNSAMPLE, positions))
            log_probs = head(run_encoder(encoder, mel)).log_softmax(-1)
            hyps += tokenizer.batch_decode(ctc_greedy(log_probs, (num_mel_frames(lengths) + 1) // 2, blank))
    return _wer_percent(data.texts, hyps)


def _wer_percent(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (%) over the pairs: `metrics.word_errors` (language-neutral normalisation)."""
    from borealis.metrics import word_errors

    errors, words = word_errors(references, hypotheses)
    return round(100 * sum(errors) / max(sum(words), 1), 2)


def lm_texts(corpus: Path) -> list[str]:
    """The LM's plain training text, as ChatML conversations: every training transcript as an
    assistant turn, and every spoken instruction's and text-only chat's conversation (audio
    slots removed). The ASR task's text side is `CopyConversations`."""
    from borealis.prompts import AUDIO_PLACEHOLDER, IM_END, IM_START

    def chatml(turns) -> str:
        return "".join(f"{IM_START}{role}\n{text.replace(AUDIO_PLACEHOLDER, '').strip()}{IM_END}\n"
                       for role, text in turns)

    texts = []
    for pool in TEXT_POOLS:
        for sample in read_pool(corpus / "shards" / pool):
            meta = sample["meta"]
            if meta.get("text"):
                texts.append(chatml([("assistant", meta["text"])]))
            if meta.get("messages"):
                texts.append(chatml([(m["role"], m["content"]) for m in meta["messages"]]))
    return texts


class CopyConversations:
    """The text side of the demo's ASR task: every training ASR clip's chat exactly as Borealis
    encodes it (system turn, the user's ASR prompt, `<|start_of_audio|>`, N `<|AUDIO|>` slots for
    the clip's length, `<|end_of_audio|>`, the assistant's transcript), with the slots holding the
    transcript's own tokens the way frame-rate speech holds words: each token at a random slot,
    in order, held for a random run of slots, the other slots left as `<|AUDIO|>`, and a small
    share of the tokens swapped for a random word's. The loss is on the answer only.

    Why: Borealis writes the adapter's outputs into those slots. An LM that already reads a
    transcript out of a slot span, skipping filler and repeats and mending a wrong word from its
    context, leaves the adapter one job: turn each stacked encoder frame into the embedding of
    the token spoken there. Without these chats the 2-layer LM does not read words out of the
    slots at all (~100% copy WER, BENCHMARKS.md), and the adapter has nothing to learn towards.
    """

    def __init__(self, corpus: Path, tokenizer, max_source_positions: int, settings: BaseSettings) -> None:
        from borealis.prompts import PromptBuilder, asr_messages

        builder = PromptBuilder(tokenizer, downsample_factor=DOWNSAMPLE, max_source_positions=max_source_positions)
        self.builder, self.tokenizer = builder, tokenizer
        self.filler = builder.audio_token_id
        self.settings = settings
        self.ids, self.labels, self.tokens = [], [], []
        self.texts, self.languages, self.num_samples = [], [], []
        for pool in ("train/asr_en", "train/asr_ru"):
            for sample in read_pool(corpus / "shards" / pool):
                meta = sample["meta"]
                if sample["audio"] is None or not meta.get("text") or meta.get("messages"):
                    continue
                encoded = builder.encode(asr_messages(meta["text"], meta.get("language")),
                                         num_samples=int(sample["audio"].size))
                self.ids.append(np.asarray(encoded.input_ids))
                self.labels.append(np.asarray(encoded.labels))
                self.tokens.append(np.asarray(tokenizer(meta["text"], add_special_tokens=False)["input_ids"]))
                self.texts.append(meta["text"])
                self.languages.append(meta.get("language"))
                self.num_samples.append(int(sample["audio"].size))
        self.words = np.unique(np.concatenate(self.tokens))  # what a swapped token becomes
        # a shuffled transcript that is a benchmark sentence keeps its own order instead
        self.benchmark_texts = {sample["meta"]["text"] for name in BENCHMARKS if settings.copy_shuffle_share
                                for sample in read_pool(corpus / "shards" / "bench" / name)}
        self.kept_order = 0  # shuffles that hit a benchmark sentence

    def __len__(self) -> int:
        return len(self.ids)

    def fill(self, slots: int, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`slots` slot ids holding `tokens` in order: starts drawn without replacement, each run
        1..`copy_max_run` slots long (cut at the next start), swaps at `copy_swap_rate`."""
        tokens = tokens[:slots]
        if rng.random() < self.settings.copy_swap_rate * len(tokens):
            tokens = tokens.copy()
            tokens[rng.integers(len(tokens))] = rng.choice(self.words)
        starts = np.sort(rng.choice(slots, size=len(tokens), replace=False))
        ends = np.minimum(starts + rng.integers(1, self.settings.copy_max_run + 1, size=len(tokens)),
                          np.append(starts[1:], slots))
        span = np.full(slots, self.filler)
        owner = np.searchsorted(starts, np.arange(slots), side="right") - 1  # the last start at or before
        held = (owner >= 0) & (np.arange(slots) < ends[owner.clip(min=0)])
        span[held] = tokens[owner[held]]
        return span

    def conversation(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(ids, labels) of clip `index` with its slots filled afresh; with chance
        `copy_shuffle_share`, its transcript's words in a random order (`shuffled`)."""
        share = self.settings.copy_shuffle_share
        if share and rng.random() < share:
            ids, labels, tokens = self.shuffled(index, rng)
        else:
            ids, labels, tokens = self.ids[index].copy(), self.labels[index], self.tokens[index]
        slots = np.flatnonzero(ids == self.filler)
        ids[slots] = self.fill(len(slots), tokens, rng)
        return ids, labels

    def shuffled(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, labels, transcript tokens) of clip `index`'s chat with its words in a random
        order, the clip's slot count kept. The LM's prior cannot guess such a sentence, so the
        answer has to be read out of the slots, as the benchmarks' random orders need. A
        shuffle that is a benchmark sentence keeps the clip's own order (`kept_order` counts them)."""
        from borealis.prompts import asr_messages

        words = self.texts[index].split()
        text = " ".join(words[i] for i in rng.permutation(len(words)))
        if text in self.benchmark_texts:
            self.kept_order += 1
            return self.ids[index].copy(), self.labels[index], self.tokens[index]
        encoded = self.builder.encode(asr_messages(text, self.languages[index]), num_samples=self.num_samples[index])
        return (np.asarray(encoded.input_ids), np.asarray(encoded.labels),
                np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"]))


def pretrain_llm(qwen_dir: Path, corpus: Path, settings: BaseSettings, out: Path) -> dict:
    """Train the Qwen3 of `qwen_dir` as a causal LM on `lm_texts(corpus)` and, for
    `copy_share` of each batch, `CopyConversations`; save it and its tokenizer (with the three
    audio tokens, whose rows it trains) to `out`."""
    import torch
    from torch.nn.utils.rnn import pad_sequence
    from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperConfig

    from borealis.prompts import IGNORE_INDEX, add_audio_tokens

    torch.manual_seed(settings.seed)  # the audio tokens' new rows, drawn as `--only llm` draws them
    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    add_audio_tokens(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    positions = WhisperConfig.from_pretrained(corpus / "models" / "whisper").max_source_positions
    copies = CopyConversations(corpus, tokenizer, positions, settings)
    plain = [np.asarray(ids) for ids in tokenizer(lm_texts(corpus), add_special_tokens=False)["input_ids"]]
    generator = torch.Generator().manual_seed(settings.seed + 1)
    rng = np.random.default_rng(settings.seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.llm_lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _schedule(step, settings.warmup, settings.llm_steps))
    n_copy = round(settings.llm_batch * settings.copy_share)
    log.info("llm: %d plain conversations, %d ASR copy chats, %d steps of %d (%d copies)", len(plain), len(copies),
             settings.llm_steps, settings.llm_batch, n_copy)
    model.train()
    start, losses, copy_losses = time.monotonic(), [], []
    for step in range(settings.llm_steps):
        picks = torch.randint(len(plain), (settings.llm_batch - n_copy,), generator=generator).tolist()
        rows = [(plain[i], plain[i]) for i in picks]
        rows += [copies.conversation(i, rng) for i in torch.randint(len(copies), (n_copy,), generator=generator).tolist()]
        input_ids = pad_sequence([torch.from_numpy(ids) for ids, _ in rows], batch_first=True,
                                 padding_value=tokenizer.pad_token_id)
        labels = pad_sequence([torch.from_numpy(lab) for _, lab in rows], batch_first=True, padding_value=IGNORE_INDEX)
        lengths = torch.tensor([len(ids) for ids, _ in rows])
        attention = (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long()
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="none")
        keep = labels[:, 1:] != IGNORE_INDEX
        loss = per_token[keep].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        copy_losses.append(float(per_token.detach()[-n_copy:][keep[-n_copy:]].mean()) if n_copy else float("nan"))
        if step % 100 == 0 or step == settings.llm_steps - 1:
            log.info("llm step %d/%d: loss %.3f, copy loss %.3f (%.0f s)", step, settings.llm_steps,
                     float(np.mean(losses[-100:])), float(np.mean(copy_losses[-100:])), time.monotonic() - start)
    seconds = time.monotonic() - start
    model.eval()
    quality = {name: _lm_loss(model, tokenizer, corpus / "shards" / "bench" / name) for name in BENCHMARKS[:4]}
    copy_quality = {name: _copy_wer(model, tokenizer, copies, corpus / "shards" / "bench" / name, settings.seed)
                    for name in BENCHMARKS[:4]}
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"steps": settings.llm_steps, "seconds": round(seconds, 1), "conversations": len(plain) + len(copies),
            "final_loss": round(float(np.mean(losses[-100:])), 4),
            "final_copy_loss": round(float(np.mean(copy_losses[-100:])), 4),
            "shuffles_kept_order": copies.kept_order,
            "benchmark_loss_per_token": quality, "benchmark_copy_wer": copy_quality,
            "parameters": sum(p.numel() for p in model.parameters())}


def _copy_wer(model, tokenizer, copies: CopyConversations, pool: Path, seed: int) -> float:
    """Greedy WER (%) of the LM answering a benchmark's transcripts as `CopyConversations` chats
    (the slots filled as in training, with swaps): how well it reads a transcript out of a span."""
    import torch

    from borealis.prompts import asr_messages

    rng = np.random.default_rng(seed)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    refs, hyps = [], []
    with torch.no_grad():
        for sample in read_pool(pool):
            text = sample["meta"]["text"]
            ids = np.asarray(copies.builder.encode(asr_messages(None, sample["meta"].get("language")),
                                                   num_samples=int(sample["audio"].size), generation=True).input_ids)
            slots = np.flatnonzero(ids == copies.filler)
            ids[slots] = copies.fill(len(slots), np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"]), rng)
            out = model.generate(torch.from_numpy(ids)[None], max_new_tokens=24, do_sample=False,
                                 eos_token_id=end, pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
            refs.append(text)
            hyps.append(tokenizer.decode(out[: out.index(end)] if end in out else out, skip_special_tokens=True))
    return _wer_percent(refs, hyps)


def _lm_loss(model, tokenizer, pool: Path) -> float:
    """The LM's mean loss (nats per token) on a benchmark's transcripts as assistant turns."""
    import torch

    from borealis.prompts import IM_END, IM_START

    total = count = 0.0
    with torch.no_grad():
        for sample in read_pool(pool):
            ids = torch.tensor([tokenizer(f"{IM_START}assistant\n{sample['meta']['text']}{IM_END}",
                                          add_special_tokens=False)["input_ids"]])
            n = ids.shape[1] - 1
            total += float(model(input_ids=ids, labels=ids).loss) * n
            count += n
    return round(total / max(count, 1), 4)


def build_bases(corpus: Path, out: Path, settings: BaseSettings = BaseSettings(), only: str | None = None) -> dict:
    """Pretrain the corpus's random Whisper and Qwen3 (`CORPUS/models/`) and save them to
    `out/whisper` and `out/qwen3`, with `out/bases.json` and `out/SHA256SUMS`; returns the summary.
    `only` ("encoder" or "llm") rebuilds one base and keeps the other (and its bases.json entry):
    each base seeds its own draws, so either comes out bit for bit as a full build makes it.

    Raises:
        FileNotFoundError: the corpus or its models are missing.
    """
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    for needed in (corpus / "corpus.json", corpus / "models" / "whisper", corpus / "models" / "qwen3"):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} is missing; build the demo corpus first: borealis demo --out {corpus}")
    hf_logging.disable_progress_bar()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(corpus / "models" / "qwen3")
    previous = json.loads((out / "bases.json").read_text()) if (out / "bases.json").is_file() else {}
    if only == "llm":
        if "encoder" not in previous or not (out / "whisper" / "model.safetensors").is_file():
            raise FileNotFoundError(f"--only llm keeps the encoder in {out / 'whisper'}, but there is none; "
                                    "build both (drop --only)")
        encoder = previous["encoder"]
    else:
        encoder = pretrain_encoder(corpus / "models" / "whisper", corpus, tokenizer, settings, out / "whisper")
    for extra in ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                  "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json"):
        src = corpus / "models" / "whisper" / extra  # the extractor, and what the Whisper baseline row decodes with
        if src.is_file():
            (out / "whisper" / extra).write_bytes(src.read_bytes())
    llm = previous["llm"] if only == "encoder" else pretrain_llm(corpus / "models" / "qwen3", corpus, settings,
                                                                  out / "qwen3")
    corpus_info = json.loads((corpus / "corpus.json").read_text())
    # seconds: both bases' training, as a full build spends it (an `only` rebuild keeps the other's time)
    summary = {"settings": asdict(settings), "seconds": round(encoder["seconds"] + llm["seconds"], 1),
               "corpus_seed": corpus_info["seed"], "torch": torch.__version__,
               "encoder": encoder, "llm": llm}
    (out / "bases.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_sums(out)
    log.info("bases in %s: encoder CTC WER %s; LM loss %s; %.0f s", out, encoder["wer"],
             llm["benchmark_loss_per_token"], summary["seconds"])
    return summary


SUMMARIES = ("SHA256SUMS", "bases.json", "pretrain.json")  # what a bases folder's SHA256SUMS leaves out


def write_sums(folder: Path) -> None:
    """`folder/SHA256SUMS`: the sha256 of every file under `folder` but the summaries (`SUMMARIES`)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in SUMMARIES)
    (folder / "SHA256SUMS").write_text("".join(f"{_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files))


def check_sums(folder: Path) -> list[str]:
    """Files of `folder` whose sha256 differs from its `SHA256SUMS`, or that are missing."""
    bad = []
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = folder / name
        if not path.is_file():
            bad.append(f"{name}: missing")
        elif _sha256(path) != digest:
            bad.append(f"{name}: sha256 differs from SHA256SUMS")
    return bad


def build_parser() -> argparse.ArgumentParser:
    """The options of `borealis demo bases`."""
    d = BaseSettings()
    p = argparse.ArgumentParser(
        prog="borealis demo bases", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Pretrain the demo's bases on the demo corpus's training pools: the Whisper encoder with CTC "
                    "over the Qwen3 tokens, the Qwen3 as a language model. The repository ships the result in "
                    "models/demo; this command rebuilds it.")
    p.add_argument("--corpus", type=Path, required=True, help="a demo corpus (`borealis demo --out CORPUS`)")
    p.add_argument("--out", type=Path, required=True, help="output folder: whisper/, qwen3/, bases.json, SHA256SUMS")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the batch order, noise mixing and dropout")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--only", choices=("encoder", "llm"), default=None,
                   help="rebuild one base and keep the other from --out (default: both)")
    g = p.add_argument_group("encoder (CTC)")
    g.add_argument("--encoder-steps", type=int, default=d.encoder_steps, help="optimizer steps")
    g.add_argument("--encoder-batch", type=int, default=d.encoder_batch, help="clips per step")
    g.add_argument("--encoder-lr", type=float, default=d.encoder_lr, help="peak AdamW learning rate")
    g.add_argument("--noise-share", type=float, default=d.noise_share, help="share of clips mixed with noise")
    g.add_argument("--snr-db", type=float, nargs=2, default=d.snr_db, help="noise SNR range (dB)")
    g.add_argument("--gain-db", type=float, nargs=2, default=d.gain_db, help="random gain range (dB), every clip")
    g.add_argument("--char-ctc-weight", type=float, default=d.char_ctc_weight,
                   help="weight of an auxiliary character CTC head (dropped at save); 0 turns it off")
    g.add_argument("--speed", type=float, nargs=2, default=d.speed, metavar=("MIN", "MAX"),
                   help="random speed per clip (pitch moves with tempo: other voices' registers); 1 1: off")
    g.add_argument("--spec-augment", action="store_true",
                   help="SpecAugment on the log-mel: 2 bands of up to 15 bins, 2 spans of up to 20 frames")
    g.add_argument("--encoder-dropout", type=float, default=d.encoder_dropout,
                   help="dropout in the encoder's layers while it pretrains (the saved config keeps the corpus "
                        "model's)")
    g.add_argument("--init-std", type=float, default=d.init_std,
                   help="std of the encoder's fresh weights (Whisper's 0.02) before pretraining")
    g = p.add_argument_group("LLM (language model)")
    g.add_argument("--llm-steps", type=int, default=d.llm_steps, help="optimizer steps")
    g.add_argument("--llm-batch", type=int, default=d.llm_batch, help="conversations per step")
    g.add_argument("--llm-lr", type=float, default=d.llm_lr, help="peak AdamW learning rate")
    g.add_argument("--copy-share", type=float, default=d.copy_share,
                   help="share of each batch that is ASR copy chats (the transcript read out of the audio slots)")
    g.add_argument("--copy-max-run", type=int, default=d.copy_max_run,
                   help="longest run of slots a copy chat holds one token for")
    g.add_argument("--copy-swap-rate", type=float, default=d.copy_swap_rate,
                   help="per-token chance that a copy chat's span holds a random word instead (one swap at most)")
    g.add_argument("--copy-shuffle-share", type=float, default=d.copy_shuffle_share,
                   help="share of copy chats whose transcript's words come in a random order (read, not guessed)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps of both (then cosine to 5%%)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`borealis demo bases`: pretrain and save the demo's bases; returns the exit status 0."""
    p = build_parser()
    args = p.parse_args(argv)
    problems = [f"--{k.replace('_', '-')} must be >= 1, got {v}" for k, v in vars(args).items()
                if k.endswith(("steps", "batch")) and v < 1]
    for name in ("noise_share", "encoder_dropout", "copy_share", "copy_swap_rate", "copy_shuffle_share"):
        if not 0 <= getattr(args, name) <= 1:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    if not 0.5 <= args.speed[0] <= args.speed[1] <= 2:
        problems.append(f"--speed must be MIN <= MAX within [0.5, 2], got {args.speed[0]} {args.speed[1]}")
    if args.copy_max_run < 1:
        problems.append(f"--copy-max-run must be >= 1, got {args.copy_max_run}")
    if problems:
        p.error("; ".join(problems))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    fields = {k: v for k, v in vars(args).items() if k not in ("corpus", "out", "only")}
    fields["snr_db"], fields["gain_db"], fields["speed"] = (tuple(fields[k]) for k in ("snr_db", "gain_db", "speed"))
    build_bases(args.corpus, args.out, BaseSettings(**fields), only=args.only)
    return 0
