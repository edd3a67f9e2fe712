"""The demo corpus plan: every sample's words, voice, prompt and noise, decided before any audio exists.

What: `plan_corpus(seed, counts)` returns a `CorpusPlan` holding, pool by pool, the samples
to write (`Sample`: key, shard metadata, the espeak job) and the noise/IR clips to
synthesise (`Clip`). The pools are train/asr_{en,ru}, train/instruct, train/text,
bench/demo_{en,ru} (grammar sentences), bench/demo_{en,ru}_random (known words in random
order), bench/demo_en_noisy, noise and ir.

Why: benchmarks use sentences never seen in training, spoken by espeak variants never used
in training (in either language); `demo_en_noisy` is `demo_en` with white/pink noise at
15-25 dB SNR, kinds the training noise pool never holds, so the clean/noisy WER gap measures
unheard noise alone; every word a benchmark says is heard in training. Planning first makes
these guarantees checkable (`plan_corpus` asserts them) and lets the writer synthesise only
what it needs. Every pool draws from its own generator (`rng_for(seed, name)`), so resizing
one pool leaves the others unchanged.

Cost: pure Python; the default plan (13,850 speech samples, 88 clips) takes ~2 s.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from borealis.demo.noise import (
    BABBLE_LEVEL_DB,
    BAND_LOW_HZ,
    BAND_OCTAVES,
    BABBLE_TALKERS,
    BENCH_NOISE,
    CLIP_RATE,
    HUM_HARMONICS,
    HUM_HZ,
    HUM_NOISE_DB,
    IR_PREDELAY_MS,
    IR_REVERB_PEAK,
    IR_RT60,
    NOISE_SECONDS,
    NOISE_SNR_DB,
    NOISE_TYPES,
    Clip,
    ir_frames,
)
from borealis.demo.speech import (
    BENCH_PITCH,
    BENCH_SPEED,
    BENCH_VARIANTS,
    TRAIN_PITCH,
    TRAIN_SPEED,
    TRAIN_VARIANTS,
    SynthJob,
    voice_name,
)
from borealis.demo.text import LANGUAGES, answer, chat_example, make_sentences
from borealis.prompts import AUDIO_PLACEHOLDER


def rng_for(seed: int, name: str) -> np.random.Generator:
    """An independent generator per (seed, pool name): resizing one pool leaves the others alone."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


@dataclass
class Sample:
    """One shard sample to write: its metadata, and the speech to synthesise (None: text-only)."""

    key: str
    meta: dict
    job: SynthJob | None = None
    noise: tuple[str, float] | None = None  # (white|pink, SNR dB) added after synthesis


@dataclass(frozen=True)
class Counts:
    """Samples per pool and language; `scaled` multiplies them all (at least 1 each)."""

    asr: int = 6000  # train/asr_{en,ru}, each
    instruct: int = 300  # train/instruct, per language
    text: int = 300  # train/text, per language
    bench: int = 150  # bench/demo_{en,ru} (and demo_en_noisy), each: grammar sentences
    bench_random: int = 100  # bench/demo_{en,ru}_random, each: known words in random order
    noise: int = 12  # shards/noise clips per noise type (not scaled: < 1 s to build in all)
    ir: int = 40  # shards/ir impulse responses (not scaled)

    def scaled(self, factor: float) -> Counts:
        """Speech and text counts times `factor` (at least 1 each); the noise and IR counts stay."""
        scaled = ("asr", "instruct", "text", "bench", "bench_random")
        return replace(self, **{k: max(1, round(getattr(self, k) * factor)) for k in scaled})


@dataclass
class CorpusPlan:
    """Every pool's samples, in write order, before any audio exists."""

    pools: dict[str, list[Sample]] = field(default_factory=dict)  # "train/asr_en" -> samples
    clip_pools: dict[str, list[Clip]] = field(default_factory=dict)  # "noise", "ir" -> clips
    bench_sentences: dict[str, set[str]] = field(default_factory=dict)
    train_texts: list[str] = field(default_factory=list)  # everything the tokenizer should see


def draw_job(text: str, language: str, rng: np.random.Generator, *, bench: bool) -> SynthJob:
    """A random voice (base + variant), speed and pitch: held-out variants for benchmarks."""
    lang = LANGUAGES[language]
    variants = BENCH_VARIANTS if bench else TRAIN_VARIANTS
    speed, pitch = (BENCH_SPEED, BENCH_PITCH) if bench else (TRAIN_SPEED, TRAIN_PITCH)
    base = lang.voices[rng.integers(len(lang.voices))]
    variant = variants[rng.integers(len(variants))]
    return SynthJob(text, voice_name(base, variant), int(rng.integers(speed[0], speed[1] + 1)),
                    int(rng.integers(pitch[0], pitch[1] + 1)))


def _speech_meta(job: SynthJob, language: str, source: str, task: str) -> dict:
    return {"text": job.text, "language": language, "source": source, "task": task,
            "voice": job.voice, "speed": job.speed, "pitch": job.pitch}


def plan_corpus(seed: int, counts: Counts) -> CorpusPlan:
    """Sentences, voices, prosody, prompts and noise of every sample, for `seed`.

    Benchmark sentences are drawn first (distinct within a language); every training pool
    then rejects them, so no benchmark sentence is heard or read in training.
    """
    plan = CorpusPlan()
    bench: dict[str, list[str]] = {}
    for code in LANGUAGES:
        bench[code] = make_sentences(code, counts.bench, rng_for(seed, f"bench_sentences_{code}"), unique=True,
                                     kind="grammar")
        bench[f"{code}_random"] = make_sentences(code, counts.bench_random, rng_for(seed, f"bench_random_{code}"),
                                                 unique=True, kind="random", exclude=bench[code])
        plan.bench_sentences[code] = set(bench[code]) | set(bench[f"{code}_random"])
    for code in LANGUAGES:
        rng = rng_for(seed, f"asr_{code}")
        texts = make_sentences(code, counts.asr, rng, exclude=plan.bench_sentences[code])
        plan.pools[f"train/asr_{code}"] = [
            Sample(f"asr_{code}-{i:06d}", _speech_meta(job, code, f"asr_{code}", "asr"), job)
            for i, job in enumerate(draw_job(t, code, rng, bench=False) for t in texts)]
        plan.train_texts += texts
    plan.pools["train/instruct"] = _plan_instruct(plan, seed, counts.instruct)
    plan.pools["train/text"] = _plan_chats(plan, seed, counts.text)
    for name in bench:
        code = name[:2]
        rng = rng_for(seed, f"bench_voices_{name}")
        plan.pools[f"bench/demo_{name}"] = [
            Sample(f"demo_{name}-{i:06d}", _speech_meta(job, code, f"demo_{name}", "asr"), job)
            for i, job in enumerate(draw_job(t, code, rng, bench=True) for t in bench[name])]
    plan.pools["bench/demo_en_noisy"] = _plan_noisy(plan.pools["bench/demo_en"], rng_for(seed, "bench_noise_en"))
    plan.clip_pools["noise"] = plan_noise(seed, counts.noise, plan.pools["train/asr_en"] + plan.pools["train/asr_ru"])
    plan.clip_pools["ir"] = plan_irs(seed, counts.ir)
    _check_held_out(plan)
    return plan


def _plan_instruct(plan: CorpusPlan, seed: int, per_language: int) -> list[Sample]:
    """Spoken sentences with a question about them (first word, last word, word count)."""
    instruct: list[Sample] = []
    for code, lang in LANGUAGES.items():
        rng = rng_for(seed, f"instruct_{code}")
        for text in make_sentences(code, per_language, rng, exclude=plan.bench_sentences[code]):
            task = ("first", "last", "count")[rng.integers(3)]
            job = draw_job(text, code, rng, bench=False)
            meta = _speech_meta(job, code, "instruct", "instruct")
            meta["messages"] = [{"role": "user", "content": f"{lang.instruct[task]} {AUDIO_PLACEHOLDER}"},
                                {"role": "assistant", "content": answer(lang, task, text)}]
            instruct.append(Sample(f"instruct_{code}-{len(instruct):06d}", meta, job))
            plan.train_texts += [text, lang.instruct[task]]
    return instruct


def _plan_chats(plan: CorpusPlan, seed: int, per_language: int) -> list[Sample]:
    """Text-only chats: digit order, counting, and word questions about a sentence."""
    chats: list[Sample] = []
    for code, lang in LANGUAGES.items():
        rng = rng_for(seed, f"text_{code}")
        for sentence in make_sentences(code, per_language, rng, exclude=plan.bench_sentences[code]):
            question, reply = chat_example(lang, rng, sentence)
            meta = {"task": "chat", "language": code, "source": "text",
                    "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]}
            chats.append(Sample(f"text_{code}-{len(chats):06d}", meta))
            plan.train_texts += [question, reply]
    return chats


def _plan_noisy(clean: Sequence[Sample], rng: np.random.Generator) -> list[Sample]:
    """The clips of `clean` again, each with white or pink noise at an SNR in `NOISE_SNR_DB`."""
    noisy = []
    for sample in clean:
        kind = BENCH_NOISE[rng.integers(len(BENCH_NOISE))]
        snr = round(float(rng.uniform(*NOISE_SNR_DB)), 2)
        meta = dict(sample.meta, source="demo_en_noisy", noise=kind, snr_db=snr)
        noisy.append(Sample(sample.key.replace("demo_en", "demo_en_noisy"), meta, sample.job, (kind, snr)))
    return noisy


def _check_held_out(plan: CorpusPlan) -> None:
    """Internal invariants: no benchmark sentence, voice or clip reaches training (babble included)."""
    for code in LANGUAGES:
        train = {s.meta["text"] for p, ss in plan.pools.items() if p.startswith("train/")
                 for s in ss if s.meta.get("language") == code and "text" in s.meta}
        assert not train & plan.bench_sentences[code], f"{code}: benchmark sentences leaked into training"
    train_voices = {s.job.voice for p, ss in plan.pools.items() if p.startswith("train/") for s in ss if s.job}
    bench_voices = {s.job.voice for p, ss in plan.pools.items() if p.startswith("bench/") for s in ss}
    assert not train_voices & bench_voices, "benchmark voices leaked into training"
    bench_jobs = {s.job for p, ss in plan.pools.items() if p.startswith("bench/") for s in ss}
    assert not bench_jobs & {j for c in plan.clip_pools["noise"] for j in c.talkers}, "benchmark speech in babble"


def word_coverage(plan: CorpusPlan) -> dict[str, dict]:
    """Per language: the vocabulary words spoken in train/asr_* (`heard`), and the fewest times
    a word any benchmark says is spoken there (`bench_word_min`; 0: a benchmark word is unheard)."""
    out = {}
    for code, lang in LANGUAGES.items():
        heard = collections.Counter(w for s in plan.pools[f"train/asr_{code}"] for w in s.meta["text"].split())
        bench_words = {w for s in plan.bench_sentences[code] for w in s.split()}
        out[code] = {"vocabulary": len(lang.vocabulary), "heard": sum(w in heard for w in lang.vocabulary),
                     "bench_word_min": min((heard[w] for w in bench_words), default=0)}
    return out


def plan_noise(seed: int, per_type: int, speech: Sequence[Sample]) -> list[Clip]:
    """`per_type` clips of each of `NOISE_TYPES`, 4-8 s each; babble mixes clips of `speech`.

    `speech` must be training clips: babble heard in training must not hold benchmark audio.
    A babble clip draws 4-6 distinct clips (with replacement only when `speech` has fewer).
    """
    rng = rng_for(seed, "noise")
    clips: list[Clip] = []
    for kind in NOISE_TYPES:
        for i in range(per_type):
            meta: dict = {"kind": "noise", "source": "synthetic", "noise": kind}
            seconds = round(float(rng.uniform(*NOISE_SECONDS)), 2)
            talkers: tuple[SynthJob, ...] = ()
            if kind == "band":
                low = float(rng.uniform(*BAND_LOW_HZ))
                high = min(low * 2 ** float(rng.uniform(*BAND_OCTAVES)), 7500.0)
                meta.update(low_hz=round(low, 1), high_hz=round(high, 1))
            elif kind == "hum":
                meta.update(hum_hz=HUM_HZ[rng.integers(len(HUM_HZ))],
                            harmonics=int(rng.integers(HUM_HARMONICS[0], HUM_HARMONICS[1] + 1)),
                            noise_db=round(float(rng.uniform(*HUM_NOISE_DB)), 1))
            elif kind == "babble":
                k = int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))
                chosen = [speech[j] for j in rng.choice(len(speech), size=k, replace=len(speech) < k)]
                talkers = tuple(c.job for c in chosen)
                meta.update(talkers=[c.key for c in chosen],
                            levels_db=[round(float(x), 1) for x in rng.uniform(*BABBLE_LEVEL_DB, size=k)])
            clips.append(Clip(f"noise_{kind}-{i:06d}", meta, seconds, talkers))
    return clips


def plan_irs(seed: int, count: int) -> list[Clip]:
    """`count` impulse responses: RT60 0.15-0.9 s, a 3-20 ms pre-delay, tail level 0.2-0.7 of
    the direct path; each lasts 1 sample + pre-delay + RT60 (its tail ends 60 dB down)."""
    rng = rng_for(seed, "ir")
    clips = []
    for i in range(count):
        rt60 = round(float(rng.uniform(*IR_RT60)), 3)
        predelay = round(float(rng.uniform(*IR_PREDELAY_MS)), 1)
        meta = {"kind": "ir", "source": "synthetic", "rt60_s": rt60, "predelay_ms": predelay,
                "reverb_peak": round(float(rng.uniform(*IR_REVERB_PEAK)), 2)}
        clips.append(Clip(f"ir-{i:06d}", meta, ir_frames(rt60, predelay) / CLIP_RATE))
    return clips
