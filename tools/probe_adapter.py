"""How fast the recipe's adapter learns to read a pair of frozen bases, without the data pipeline.

What:
    python tools/probe_adapter.py                                   # models/demo on the demo corpus: adapter + LoRA
    python tools/probe_adapter.py --head ctc_tied --steps 600       # the adapter alone, CTC over the LLM's embeddings
    python tools/probe_adapter.py --head ctc_free --steps 600       # the same with a free output layer
    python tools/probe_adapter.py --encoder E --llm L --train POOL... --bench POOL... --json out.json

The frozen encoder's hidden states of every training and benchmark clip are computed once
(`run_encoder` on the batch-cut log-mel window, as `encoder_window: batch` runs it; no
augmentation), then a fresh `simple` adapter (4x stacking) is trained on random batches of the
training clips with AdamW, linear warmup and a cosine to a tenth of the LR, gradients clipped
at 1.0. What it learns towards (`--head`):
- `lm`: the recipe's own loss. The adapter's outputs fill the `<|AUDIO|>` slots of each clip's
  ASR chat (Borealis's prompt format) and LoRA (`--lora-r`, alpha 2r, on the seven projections)
  trains with it on the frozen LLM's answer loss; benchmarks are scored by greedy
  `BorealisForConditionalGeneration.generate` answers, as `borealis validate` scores them.
- `ctc_tied`: no LLM in the path. Each adapter output is scored against the LLM's input
  embedding table (logits = output . E^T, blank = the `<|AUDIO|>` row) with CTC on the
  transcript's tokens; benchmarks by greedy CTC decoding. How hard the map from encoder
  states onto the LLM's embeddings is for the adapter on its own.
- `ctc_free`: as `ctc_tied` with a trained Linear(H -> vocab) after the adapter instead of the
  fixed table: how much of `ctc_tied`'s difficulty is the embedding table's geometry.
Prints the mean loss every `--log-every` steps and each evaluation's WER per benchmark (the
same `metrics.word_errors` as validation) with the average; `--json` writes all of it.

Why: the demo (`make demo`) takes ~13 min per seed on 2 cores and mixes the adapter's learning
with the curriculum, the instruction and text-only chats and the packing; this isolates the one
thing the bases decide, how fast the adapter learns to read them, in a few minutes (BENCHMARKS.md,
"What holds the demo back"). Figures from here are not the demo's: no augmentation, ASR clips
only, its own batches.

Cost on 2 CPU cores with models/demo: ~30-40 s to cache the 12,000 training clips' states, then
~0.25 s per step of 32 clips for `lm` (LoRA r=32) and ~0.03-0.05 s for the CTC heads; an
evaluation of the four benchmarks takes seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

HEADS = ("lm", "ctc_tied", "ctc_free")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEMO_TRAIN = ("train/asr_en", "train/asr_ru")
DEMO_BENCH = ("bench/demo_en", "bench/demo_ru", "bench/demo_en_random", "bench/demo_ru_random")


@dataclass
class Clip:
    """One clip of a pool: its transcript (text and tokens), language, sample count, its ASR chat
    as Borealis encodes it, the frozen encoder's states, and its waveform where evaluation needs it."""

    text: str
    language: str | None
    num_samples: int
    tokens: torch.Tensor  # (L,): the transcript's tokens, the CTC heads' targets
    chat_ids: torch.Tensor  # (P,): the ASR chat with `<|AUDIO|>` slots, the `lm` head's input
    chat_labels: torch.Tensor  # (P,): its labels (the answer only)
    states: torch.Tensor  # (num_audio_tokens * k, D): the frames the adapter stacks
    audio: torch.Tensor | None  # (num_samples,) with keep_audio, else None


def read_clips(pool: Path, model, batch: int = 64, keep_audio: bool = False) -> list[Clip]:
    """The transcribed clips of `pool` (instruction chats and text-only samples are skipped), with
    their encoder states computed in duration-sorted batches (batch-cut windows, no grad) and
    their tokens and chats encoded once; `keep_audio` keeps the waveforms (`lm` benchmarks)."""
    from borealis.demo.bases import read_pool
    from borealis.hf_remote.modeling_borealis import run_encoder
    from borealis.prompts import asr_messages

    raw = []
    for sample in read_pool(pool):
        meta = sample["meta"]
        if sample["audio"] is None or not meta.get("text") or meta.get("messages"):
            continue
        raw.append((torch.from_numpy(np.asarray(sample["audio"], dtype=np.float32)), meta["text"], meta.get("language")))
    if not raw:
        raise ValueError(f"{pool}: no transcribed clips (an ASR pool of `borealis shards build` or `borealis demo`)")
    k = model.config.downsample_factor
    states: list[torch.Tensor | None] = [None] * len(raw)
    order = sorted(range(len(raw)), key=lambda i: raw[i][0].numel())
    with torch.no_grad():
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            lengths = torch.tensor([raw[i][0].numel() for i in rows])
            hidden = run_encoder(model.encoder, model.log_mel(pad_sequence([raw[i][0] for i in rows], batch_first=True),
                                                              lengths))
            for row, i, n in zip(range(len(rows)), rows, model.num_audio_tokens(lengths).tolist()):
                states[i] = hidden[row, : n * k].clone()
    clips = []
    for (audio, text, language), s in zip(raw, states):
        chat = model.prompts.encode(asr_messages(text, language), num_samples=audio.numel())
        tokens = model.prompts.tokenizer(text, add_special_tokens=False)["input_ids"]
        clips.append(Clip(text, language, audio.numel(), torch.tensor(tokens), torch.tensor(chat.input_ids),
                          torch.tensor(chat.labels), s, audio if keep_audio else None))
    return clips


class Probe:
    """The adapter (and LoRA or an output layer, per head) on cached states: `loss(clips)` for a
    training batch, `ctc_transcribe(clips)` for the CTC heads' greedy hypotheses."""

    def __init__(self, model, head: str) -> None:
        self.model, self.head = model, head
        self.k = model.config.downsample_factor
        self.prompts = model.prompts
        self.blank = model.config.audio_token_id
        self.table = model.llm.get_input_embeddings().weight.detach()  # (V, H): ctc_tied's fixed output layer
        self.out = torch.nn.Linear(self.table.shape[1], self.table.shape[0]) if head == "ctc_free" else None

    def parameters(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad] if self.head == "lm" \
            else list(self.model.adapter.parameters())
        return params + (list(self.out.parameters()) if self.out is not None else [])

    def _adapted(self, clips: Sequence[Clip]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, H) adapter outputs of the stacked frames and the (B,) audio token counts."""
        from borealis.hf_remote.adapters_borealis import stack_frames

        frames = pad_sequence([c.states for c in clips], batch_first=True)  # (B, T, D)
        return self.model.adapter(stack_frames(frames, self.k)), torch.tensor([c.states.shape[0] // self.k for c in clips])

    def _logits(self, clips: Sequence[Clip]) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, counts = self._adapted(clips)
        return (self.out(outputs) if self.out is not None else outputs @ self.table.T), counts

    def loss(self, clips: Sequence[Clip]) -> torch.Tensor:
        if self.head != "lm":
            logits, counts = self._logits(clips)
            return F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), torch.cat([c.tokens for c in clips]), counts,
                              torch.tensor([len(c.tokens) for c in clips]), blank=self.blank, zero_infinity=True)
        from borealis.prompts import IGNORE_INDEX

        ids = pad_sequence([c.chat_ids for c in clips], batch_first=True, padding_value=self.prompts.pad_token_id)
        labels = pad_sequence([c.chat_labels for c in clips], batch_first=True, padding_value=IGNORE_INDEX)
        mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(c.chat_ids) for c in clips])[:, None]).long()
        outputs, counts = self._adapted(clips)
        real = torch.arange(outputs.shape[1])[None] < counts[:, None]
        embeds = self.model.llm.get_input_embeddings()(ids).masked_scatter((ids == self.blank)[..., None], outputs[real])
        return self.model.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    @torch.no_grad()
    def ctc_transcribe(self, clips: Sequence[Clip]) -> list[str]:
        """Greedy CTC hypotheses of the `ctc_*` heads (`lm` answers through `generate`: `evaluate`)."""
        from borealis.demo.bases import ctc_greedy

        logits, counts = self._logits(clips)
        return self.prompts.tokenizer.batch_decode(ctc_greedy(logits, counts, self.blank))


def evaluate(probe: Probe, model, benches: dict[str, list[Clip]], max_new_tokens: int,
             batch: int = 64) -> dict[str, float]:
    """WER (%) per benchmark and their average: greedy generate (`lm`) or greedy CTC."""
    from borealis.metrics import average_wer, word_errors
    from borealis.prompts import asr_messages

    model.eval()
    result = {}
    for name, clips in benches.items():
        hyps: list[str] = []
        for start in range(0, len(clips), batch):
            part = clips[start:start + batch]
            if probe.head != "lm":
                hyps += probe.ctc_transcribe(part)
                continue
            ids = [torch.tensor(probe.prompts.encode(asr_messages(None, c.language), num_samples=c.num_samples,
                                                     generation=True).input_ids) for c in part]
            width = max(len(x) for x in ids)  # left padding: every answer starts at the same column
            input_ids = torch.stack([F.pad(x, (width - len(x), 0), value=probe.prompts.pad_token_id) for x in ids])
            mask = torch.stack([F.pad(torch.ones_like(x), (width - len(x), 0)) for x in ids])
            waves = pad_sequence([c.audio for c in part], batch_first=True)
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=mask, waveforms=waves,
                                     audio_lengths=torch.tensor([c.num_samples for c in part]),
                                     max_new_tokens=max_new_tokens)
            hyps += [t.strip() for t in probe.prompts.tokenizer.batch_decode(out, skip_special_tokens=True)]
        errors, words = word_errors([c.text for c in clips], hyps, [c.language for c in clips])
        result[name] = round(100 * sum(errors) / max(sum(words), 1), 2)
    result["avg"] = round(average_wer(result), 2)
    model.train()
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--encoder", default="models/demo/whisper", help="Whisper folder (from_pretrained)")
    p.add_argument("--llm", default="models/demo/qwen3", help="Qwen3 folder with its tokenizer (from_pretrained)")
    p.add_argument("--corpus", type=Path, default=Path("demo"),
                   help="demo corpus: --train and --bench default to its ASR pools and four clean benchmarks")
    p.add_argument("--train", type=Path, nargs="+", help="training pool folders (default: the corpus's asr_en, asr_ru)")
    p.add_argument("--bench", type=Path, nargs="+",
                   help="benchmark pool folders, named by folder (default: the corpus's demo_en, demo_ru, *_random)")
    p.add_argument("--head", choices=HEADS, default="lm", help="what the adapter learns towards (module docstring)")
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps")
    p.add_argument("--batch", type=int, default=32, help="clips per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (adapter, LoRA, output layer)")
    p.add_argument("--warmup", type=int, default=50, help="linear warmup steps")
    p.add_argument("--lora-r", type=int, default=32, help="LoRA rank for --head lm (alpha = 2r); 0: the LLM frozen")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps as well as at the end (0: end only)")
    p.add_argument("--log-every", type=int, default=100, help="print the mean loss every N steps")
    p.add_argument("--max-new-tokens", type=int, default=24, help="generation limit per clip (--head lm)")
    p.add_argument("--seed", type=int, default=1, help="seeds the adapter and LoRA init and the batch draws")
    p.add_argument("--json", type=Path, help="also write settings, loss curve and evaluations here")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    problems = [f"--{name} must be >= 1, got {getattr(args, name)}" for name in ("steps", "batch", "log_every")
                if getattr(args, name) < 1]
    problems += [f"--{name} must be >= 0, got {getattr(args, name)}" for name in ("warmup", "lora_r", "eval_every")
                 if getattr(args, name) < 0]
    if args.lr <= 0:
        problems.append(f"--lr must be > 0, got {args.lr}")
    if problems:
        build_parser().error("; ".join(problems))
    from borealis.modeling import BorealisForConditionalGeneration

    torch.manual_seed(args.seed)
    lora = dict(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0, target_modules=LORA_TARGETS) \
        if args.head == "lm" and args.lora_r else None
    model = BorealisForConditionalGeneration.from_parts(args.encoder, args.llm, encoder_window="batch",
                                                        trim_audio_tokens=True, lora=lora, dtype=torch.float32)
    if args.head != "lm" or not args.lora_r:
        model.llm.requires_grad_(False)
    model.train()
    started = time.perf_counter()
    train_pools = args.train or [args.corpus / "shards" / p for p in DEMO_TRAIN]
    bench_pools = args.bench or [args.corpus / "shards" / p for p in DEMO_BENCH]
    train = [clip for pool in train_pools for clip in read_clips(pool, model)]
    benches = {pool.name: read_clips(pool, model, keep_audio=args.head == "lm") for pool in bench_pools}
    cached = time.perf_counter() - started
    print(f"states of {len(train)} training and {sum(map(len, benches.values()))} benchmark clips in {cached:.0f} s",
          flush=True)

    probe = Probe(model, args.head)
    params = probe.parameters()
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    total = args.steps

    def factor(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, total - args.warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    draws = torch.Generator().manual_seed(args.seed)
    curve, evaluations, window = [], [], []
    started = time.perf_counter()
    for step in range(1, total + 1):
        rows = torch.randint(len(train), (args.batch,), generator=draws).tolist()
        loss = probe.loss([train[i] for i in rows])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        window.append(loss.item())
        if step % args.log_every == 0 or step == total:
            curve.append({"step": step, "loss": round(float(np.mean(window)), 4)})
            window = []
            print(f"step {step}: loss {curve[-1]['loss']:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
        if step == total or (args.eval_every and step % args.eval_every == 0):
            wer = evaluate(probe, model, benches, args.max_new_tokens)
            evaluations.append({"step": step, "wer": wer})
            print(f"step {step}: WER " + ", ".join(f"{k} {v:.2f}" for k, v in wer.items()), flush=True)
    result = {"settings": vars(args),
              "train_clips": len(train), "cache_seconds": round(cached, 1),
              "train_seconds": round(time.perf_counter() - started, 1), "loss": curve, "evaluations": evaluations}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
