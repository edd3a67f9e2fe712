"""Generate the embedded CPU demo: espeak-ng speech, noise and IR pools, a tiny Whisper and Qwen3.

What: `python tools/make_demo_corpus.py --out demo` writes, deterministically for `--seed`,
    demo/models/whisper/   random Whisper (~0.9M-param encoder, 3 s window) + feature extractor
    demo/models/qwen3/     random 2-layer Qwen3 + a byte-level BPE tokenizer trained here (ChatML)
    demo/shards/train/{asr_en,asr_ru,instruct,text}/   training pools (ShardWriter format)
    demo/shards/bench/{demo_en,demo_ru,demo_en_noisy}/ held-out benchmarks
    demo/shards/noise/     60 noise clips, 4-8 s: white, pink, brown, mains hum, babble (12 each)
    demo/shards/ir/        40 room impulse responses, RT60 0.15-0.9 s
    demo/corpus.json       summary: counts, hours, vocabularies, voices, noise/IR parameters,
                           parameter counts

Why: the end-to-end CPU demo must show a model that really learns ASR in ~8 minutes on two
cores. In a trial on such a machine a ~1M-param Whisper-style encoder with a 2-layer Qwen3
reached 1.2% WER on held-out spoken digit strings after 7 minutes, while the same model on a
200-word vocabulary had not started to learn after 8. So the corpus is spoken digits plus ~40
command words per language (English, Russian), 2-6 words per utterance (< 5 s of audio).
Benchmarks use sentences never seen in training, spoken by espeak variants never used in
training (in either language); `demo_en_noisy` is `demo_en` with white/pink noise at 15-25 dB
SNR, so the clean/noisy WER gap measures noise alone.
The noise and IR pools let the demo run the augmentation curriculum (`BackgroundNoise`,
`ImpulseResponse` in configs/demo.yaml) without downloading MUSAN or RIR corpora. Noise is
coloured (white, pink ~1/f, brown ~1/f^2, flat below 20 Hz), mains hum (50 or 60 Hz, 3-8
harmonics, pink noise 20-35 dB under it), or babble: 4-6 clips of train/asr_{en,ru} (never
benchmark speech, which would leak into training), each looped through the clip from a
random offset, at -8..0 dB.
An IR is a direct-path impulse at t=0, a 3-20 ms pre-delay, then Gaussian noise decaying
60 dB over its RT60 (drawn 0.15-0.9 s: small room to hall); its tail peaks at 0.2-0.7 of the
direct path, so the effect's peak alignment keeps speech in place. Every parameter is in
the sample's JSON.

Cost: ~9k espeak-ng calls (~11 ms each, mostly process start-up) run `--workers` at a time,
while the main thread resamples and writes FLAC shards. The default run (9650 speech samples,
3.0 h of audio) writes 263 MB and took 100 s on a 2-core machine shared with other jobs
(load ~4), 60 s unloaded. The noise and IR pools (100 clips, 6.4 min of audio, 9.7 MB)
are synthesised with numpy FFTs in < 1 s; babble reuses speech already synthesised.
Threads, not processes, drive the pool: each call is its own espeak-ng process, so `workers`
threads already keep `workers` cores busy, without pickling audio between processes or
forking a parent that may have torch's thread pools running (as under pytest).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import io
import json
import logging
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout, without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from borealis.prompts import ASR_PROMPTS, AUDIO_PLACEHOLDER, DEFAULT_SYSTEM_PROMPT, IM_END, IM_START  # noqa: E402

log = logging.getLogger("make_demo_corpus")

ESPEAK = "espeak-ng"
ESPEAK_RATE = 22_050  # espeak-ng's output rate; ShardWriter resamples to 16 kHz
ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
MIN_WORDS, MAX_WORDS = 2, 5

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

# espeak variants (voices/!v) that stay intelligible; case matters, and an unknown name is
# silently ignored by espeak, so `check_espeak` verifies every one. "" is the plain voice.
TRAIN_VARIANTS = ("", "m1", "m2", "m4", "m5", "m7", "f1", "f3", "f5", "klatt", "klatt3", "Alex",
                  "Annie", "adam", "belinda", "benjamin", "david", "edward", "john", "max",
                  "Michael", "paul", "robert", "steph", "victor", "norbert", "quincy", "zac")
# Never used in training, in either language: the benchmarks hear only these.
BENCH_VARIANTS = ("m3", "m6", "f2", "f4", "klatt2", "Andy", "linda", "travis")
TRAIN_SPEED, BENCH_SPEED = (130, 200), (140, 185)  # words per minute (espeak default 175)
TRAIN_PITCH, BENCH_PITCH = (25, 75), (35, 65)  # 0-99 (espeak default 50)
NOISE_SNR_DB = (15.0, 25.0)
BENCH_NOISE = ("white", "pink")  # demo_en_noisy's noise kinds
PEAK = 0.7  # clip peak after synthesis: headroom for resampling overshoot and added noise

# Augmentation pools (shards/noise, shards/ir) for augmentations.BackgroundNoise / ImpulseResponse.
CLIP_RATE = 16_000  # noise and IRs are synthesised at the shard rate (babble mixes espeak audio)
NOISE_TYPES = ("white", "pink", "brown", "hum", "babble")
NOISE_SECONDS = (4.0, 8.0)
NOISE_FLOOR_HZ = 20.0  # pink/brown spectra are held flat below: no sub-audio drift
HUM_HZ = (50.0, 60.0)  # mains fundamentals (Europe/Asia, Americas)
HUM_HARMONICS = (3, 8)  # partials, the fundamental included
HUM_NOISE_DB = (20.0, 35.0)  # hum power over the pink noise under it
BABBLE_TALKERS = (4, 6)  # training speech clips per babble clip
BABBLE_LEVEL_DB = (-8.0, 0.0)  # per talker, relative to unit RMS
IR_RT60 = (0.15, 0.9)  # seconds: small room to hall
IR_PREDELAY_MS = (3.0, 20.0)  # gap between the direct path and the reverberant tail
IR_REVERB_PEAK = (0.2, 0.7)  # tail peak relative to the direct path (always the IR's peak)
IR_DIRECT = 0.9  # direct-path amplitude at t=0


@dataclass(frozen=True)
class Language:
    """Vocabulary, sentence grammar, voices and task prompts of one demo language.

    Templates are space-separated words; `{name}` draws from `slots[name]` (a slot value may
    hold several words). `digits[i]` is the word for i, `genitive[i]` its genitive (Russian
    counting prompts need it).
    """

    code: str
    digits: tuple[str, ...]
    genitive: tuple[str, ...]
    slots: dict[str, tuple[str, ...]]
    templates: tuple[str, ...]
    voices: tuple[str, ...]
    instruct: dict[str, str]  # task -> spoken-instruction prompt
    chat: dict[str, str]  # task -> text-only prompt with {x}, {a}, {b}, {s} fields

    @property
    def vocabulary(self) -> list[str]:
        words = set(self.digits)
        for values in self.slots.values():
            words.update(w for v in values for w in v.split())
        for t in self.templates:
            words.update(w for w in t.split() if not w.startswith("{"))
        return sorted(words)


_EN_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_RU_DIGITS = ("ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять")

LANGUAGES: dict[str, Language] = {
    "en": Language(
        code="en", digits=_EN_DIGITS, genitive=_EN_DIGITS,
        slots={"d": _EN_DIGITS, "updown": ("up", "down")},
        templates=("call {d} {d} {d}", "volume {d}", "volume {updown}", "go {updown} {d}", "stop {d} {d}"),
        voices=("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-us-nyc"),
        instruct={"first": "What is the first word?", "last": "What is the last word?",
                  "count": "How many words?"},
        chat={"after": "What comes after {x}?", "before": "What comes before {x}?",
              "range": "Count from {a} to {b}.", "first": 'What is the first word in "{s}"?',
              "last": 'What is the last word in "{s}"?', "count": 'How many words are in "{s}"?'},
    ),
    "ru": Language(
        code="ru", digits=_RU_DIGITS,
        genitive=("нуля", "одного", "двух", "трех", "четырех", "пяти", "шести", "семи", "восьми", "девяти"),
        slots={"d": _RU_DIGITS, "updown": ("вверх", "вниз")},
        templates=("позвони {d} {d} {d}", "громкость {d}", "громкость {updown}", "иди {updown} {d}",
                   "стоп {d} {d}"),
        voices=("ru", "ru-lv"),
        instruct={"first": "Какое первое слово?", "last": "Какое последнее слово?", "count": "Сколько слов?"},
        chat={"after": "Что идет после числа {x}?", "before": "Что идет перед числом {x}?",
              "range": "Посчитай от {a} до {b}.", "first": 'Какое первое слово во фразе "{s}"?',
              "last": 'Какое последнее слово во фразе "{s}"?', "count": 'Сколько слов во фразе "{s}"?'},
    ),
}


# ----------------------------------------------------------------------------- sentences
def rng_for(seed: int, name: str) -> np.random.Generator:
    """An independent generator per (seed, pool name): resizing one pool leaves the others alone."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def make_sentence(language: str, rng: np.random.Generator) -> str:
    """One lower-case utterance of 2-5 words: a digit string (50%), a command (40%) or a
    random word sequence from the vocabulary (10%, so the acoustics, not the grammar, decide).

    The vocabulary is 16 words per language (digits + 6 command words): a 2-layer model
    trained from scratch on 2 CPU cores learns 10 spoken digits in minutes but not 200 words
    (the issue's trial); at ~25 words per language it reached only ~1.0 nats/token in the
    demo's 9-minute budget, so the demo stays close to the digits end."""
    lang = LANGUAGES[language]
    while True:
        kind = rng.random()
        if kind < 0.50:
            words = [lang.digits[i] for i in rng.integers(0, 10, size=rng.integers(MIN_WORDS, MAX_WORDS + 1))]
        elif kind < 0.90:
            template = lang.templates[rng.integers(len(lang.templates))]
            words = []
            for part in template.split():
                if part.startswith("{"):
                    values = lang.slots[part[1:-1]]
                    words.extend(values[rng.integers(len(values))].split())
                else:
                    words.append(part)
        else:
            vocab = lang.vocabulary
            words = [vocab[i] for i in rng.integers(0, len(vocab), size=rng.integers(MIN_WORDS, MAX_WORDS + 1))]
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return " ".join(words)


def make_sentences(language: str, count: int, rng: np.random.Generator, *, exclude: Iterable[str] = (),
                   unique: bool = False) -> list[str]:
    """`count` sentences of `language`, none of them in `exclude`, optionally all distinct.

    Raises:
        ValueError: the grammar cannot give `count` distinct sentences outside `exclude`.
    """
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} is not a demo language; choose from {sorted(LANGUAGES)}")
    banned = set(exclude)
    out: list[str] = []
    misses = 0
    while len(out) < count:
        s = make_sentence(language, rng)
        if s in banned:
            misses += 1
            if misses > 10_000:  # consecutive: the grammar is exhausted
                raise ValueError(f"could only draw {len(out)} of {count} {'distinct ' if unique else ''}"
                                 f"{language} sentences outside the {len(banned)} excluded ones")
            continue
        misses = 0
        if unique:
            banned.add(s)
        out.append(s)
    return out


# ----------------------------------------------------------------------------- corpus plan
@dataclass(frozen=True)
class SynthJob:
    """One espeak-ng call: the words and how they are spoken."""

    text: str
    voice: str  # espeak voice, optionally "+variant"
    speed: int  # words per minute
    pitch: int  # 0-99


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

    asr: int = 4000  # train/asr_{en,ru}, each
    instruct: int = 300  # train/instruct, per language
    text: int = 300  # train/text, per language
    bench: int = 150  # bench/demo_{en,ru} (and demo_en_noisy), each
    noise: int = 12  # shards/noise clips per noise type (not scaled: < 1 s to build in all)
    ir: int = 40  # shards/ir impulse responses (not scaled)

    def scaled(self, factor: float) -> Counts:
        """Speech and text counts times `factor` (at least 1 each); the noise and IR counts stay."""
        scaled = ("asr", "instruct", "text", "bench")
        return replace(self, **{k: max(1, round(getattr(self, k) * factor)) for k in scaled})


@dataclass
class Clip:
    """One noise or impulse-response clip to synthesise: its key, metadata (every planned
    parameter) and duration; a babble clip also lists the training speech it mixes."""

    key: str
    meta: dict
    seconds: float
    talkers: tuple[SynthJob, ...] = ()


@dataclass
class CorpusPlan:
    """Every pool's samples, in write order, before any audio exists."""

    pools: dict[str, list[Sample]] = field(default_factory=dict)  # "train/asr_en" -> samples
    clip_pools: dict[str, list[Clip]] = field(default_factory=dict)  # "noise", "ir" -> clips
    bench_sentences: dict[str, set[str]] = field(default_factory=dict)
    train_texts: list[str] = field(default_factory=list)  # everything the tokenizer should see


def voice_name(base: str, variant: str) -> str:
    return f"{base}+{variant}" if variant else base


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


def _chat_example(lang: Language, rng: np.random.Generator, sentence: str) -> tuple[str, str]:
    """A text-only question and its answer: digit order, counting, or a word question."""
    task = ("after", "before", "range", "first", "last", "count")[rng.integers(6)]
    if task == "after":
        i = int(rng.integers(0, 9))
        return lang.chat[task].format(x=lang.digits[i]), lang.digits[i + 1]
    if task == "before":
        i = int(rng.integers(1, 10))
        return lang.chat[task].format(x=lang.digits[i]), lang.digits[i - 1]
    if task == "range":
        a = int(rng.integers(0, 9))
        b = int(rng.integers(a + 1, min(a + 5, 9) + 1))
        return lang.chat[task].format(a=lang.genitive[a], b=lang.genitive[b]), " ".join(lang.digits[a:b + 1])
    return lang.chat[task].format(s=sentence), answer(lang, task, sentence)


def answer(lang: Language, task: str, sentence: str) -> str:
    """The answer to an instruction task ("first", "last", "count") about `sentence`."""
    words = sentence.split()
    if task == "first":
        return words[0]
    if task == "last":
        return words[-1]
    if task == "count":
        return lang.digits[len(words)]
    raise ValueError(f"unknown instruction task {task!r}; choose from first, last, count")


def plan_corpus(seed: int, counts: Counts) -> CorpusPlan:
    """Sentences, voices, prosody, prompts and noise of every sample, for `seed`.

    Benchmark sentences are drawn first (distinct within a language); every training pool
    then rejects them, so no benchmark sentence is heard or read in training.
    """
    plan = CorpusPlan()
    bench: dict[str, list[str]] = {}
    for code in LANGUAGES:
        bench[code] = make_sentences(code, counts.bench, rng_for(seed, f"bench_sentences_{code}"), unique=True)
        plan.bench_sentences[code] = set(bench[code])

    for code in LANGUAGES:
        rng = rng_for(seed, f"asr_{code}")
        texts = make_sentences(code, counts.asr, rng, exclude=plan.bench_sentences[code])
        plan.pools[f"train/asr_{code}"] = [
            Sample(f"asr_{code}-{i:06d}", _speech_meta(job, code, f"asr_{code}", "asr"), job)
            for i, job in enumerate(draw_job(t, code, rng, bench=False) for t in texts)]
        plan.train_texts += texts

    instruct: list[Sample] = []
    for code, lang in LANGUAGES.items():
        rng = rng_for(seed, f"instruct_{code}")
        for text in make_sentences(code, counts.instruct, rng, exclude=plan.bench_sentences[code]):
            task = ("first", "last", "count")[rng.integers(3)]
            job = draw_job(text, code, rng, bench=False)
            meta = _speech_meta(job, code, "instruct", "instruct")
            meta["messages"] = [{"role": "user", "content": f"{lang.instruct[task]} {AUDIO_PLACEHOLDER}"},
                                {"role": "assistant", "content": answer(lang, task, text)}]
            instruct.append(Sample(f"instruct_{code}-{len(instruct):06d}", meta, job))
            plan.train_texts += [text, lang.instruct[task]]
    plan.pools["train/instruct"] = instruct

    chats: list[Sample] = []
    for code, lang in LANGUAGES.items():
        rng = rng_for(seed, f"text_{code}")
        for sentence in make_sentences(code, counts.text, rng, exclude=plan.bench_sentences[code]):
            question, reply = _chat_example(lang, rng, sentence)
            meta = {"task": "chat", "language": code, "source": "text",
                    "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]}
            chats.append(Sample(f"text_{code}-{len(chats):06d}", meta))
            plan.train_texts += [question, reply]
    plan.pools["train/text"] = chats

    for code in LANGUAGES:
        rng = rng_for(seed, f"bench_voices_{code}")
        plan.pools[f"bench/demo_{code}"] = [
            Sample(f"demo_{code}-{i:06d}", _speech_meta(job, code, f"demo_{code}", "asr"), job)
            for i, job in enumerate(draw_job(t, code, rng, bench=True) for t in bench[code])]
    rng = rng_for(seed, "bench_noise_en")
    noisy = []
    for clean in plan.pools["bench/demo_en"]:  # same clips as demo_en, plus noise
        kind = ("white", "pink")[rng.integers(2)]
        snr = round(float(rng.uniform(*NOISE_SNR_DB)), 2)
        meta = dict(clean.meta, source="demo_en_noisy", noise=kind, snr_db=snr)
        noisy.append(Sample(clean.key.replace("demo_en", "demo_en_noisy"), meta, clean.job, (kind, snr)))
    plan.pools["bench/demo_en_noisy"] = noisy
    plan.clip_pools["noise"] = plan_noise(seed, counts.noise, plan.pools["train/asr_en"] + plan.pools["train/asr_ru"])
    plan.clip_pools["ir"] = plan_irs(seed, counts.ir)

    for code in LANGUAGES:  # internal invariants: the benchmarks are held out
        train = {s.meta["text"] for p, ss in plan.pools.items() if p.startswith("train/")
                 for s in ss if s.meta.get("language") == code and "text" in s.meta}
        assert not train & plan.bench_sentences[code], f"{code}: benchmark sentences leaked into training"
    train_voices = {s.job.voice for p, ss in plan.pools.items() if p.startswith("train/") for s in ss if s.job}
    bench_voices = {s.job.voice for p, ss in plan.pools.items() if p.startswith("bench/") for s in ss}
    assert not train_voices & bench_voices, "benchmark voices leaked into training"
    bench_jobs = {s.job for p, ss in plan.pools.items() if p.startswith("bench/") for s in ss}
    assert not bench_jobs & {j for c in plan.clip_pools["noise"] for j in c.talkers}, "benchmark speech in babble"
    return plan


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
            if kind == "hum":
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
        frames = 1 + round(predelay * CLIP_RATE / 1000) + round(rt60 * CLIP_RATE)  # as `impulse_response` makes it
        clips.append(Clip(f"ir-{i:06d}", meta, frames / CLIP_RATE))
    return clips


# ----------------------------------------------------------------------------- speech
def check_espeak(variants: Sequence[str] = TRAIN_VARIANTS + BENCH_VARIANTS) -> None:
    """Fail early when espeak-ng or one of the variants is missing (espeak would fall back
    silently to the plain voice, and the held-out voices would no longer be held out)."""
    if shutil.which(ESPEAK) is None:
        raise RuntimeError(f"{ESPEAK} is not on PATH; install the Debian package: apt-get install espeak-ng "
                           "(or `make espeak`)")
    listing = subprocess.run([ESPEAK, "--voices=variant"], capture_output=True, text=True, check=True).stdout
    known = {line.split("!v/", 1)[1].strip() for line in listing.splitlines() if "!v/" in line}
    missing = sorted(v for v in variants if v and v not in known)
    if missing:
        raise RuntimeError(f"{ESPEAK} lacks the voice variants {missing}; the demo needs espeak-ng >= 1.50 "
                           "with its standard voices/!v data")


def synthesize(text: str, voice: str, speed: int = 160, pitch: int = 50, *, max_seconds: float = 5.5,
               keep_silence: float = 0.1) -> np.ndarray:
    """Speak `text` with espeak-ng; mono float32 at 22050 Hz (`ESPEAK_RATE`).

    Leading and trailing silence beyond `keep_silence` seconds is cut (espeak appends ~0.5 s),
    and the peak is set to `PEAK` (espeak peaks at full scale; resampling would then clip).
    A clip longer than `max_seconds` is spoken again 25% faster, up to three times.

    Raises:
        RuntimeError: espeak-ng failed, or the text cannot be said within `max_seconds`.
    """
    import soundfile as sf

    for _ in range(4):
        cmd = [ESPEAK, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
        proc = subprocess.run(cmd, capture_output=True)
        if proc.returncode != 0 or not proc.stdout:
            raise RuntimeError(f"{ESPEAK} failed on {text!r} with voice {voice!r} (rc {proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace').strip()}")
        audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"{ESPEAK} wrote {rate} Hz for voice {voice!r}, expected {ESPEAK_RATE}")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        loud = np.flatnonzero(np.abs(audio) > 2e-3)
        if loud.size == 0:
            raise RuntimeError(f"{ESPEAK} produced silence for {text!r} with voice {voice!r}")
        pad = int(keep_silence * rate)
        audio = audio[max(0, loud[0] - pad):loud[-1] + pad + 1] * (PEAK / float(np.abs(audio).max()))
        if audio.size <= max_seconds * rate:
            return np.ascontiguousarray(audio)
        speed = int(speed * 1.25)
    raise RuntimeError(f"{text!r} with voice {voice!r} is longer than {max_seconds} s even at {speed} wpm")


def synthesize_many(jobs: Sequence[SynthJob], workers: int, *, max_seconds: float = 5.5) -> Iterator[np.ndarray]:
    """Audio of `jobs`, in order, from `workers` concurrent espeak-ng processes.

    At most `8 * workers` clips are in flight, so memory stays flat when writing is slower.
    """
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque[cf.Future] = collections.deque()
        todo = iter(jobs)
        for job in todo:
            pending.append(pool.submit(synthesize, job.text, job.voice, job.speed, job.pitch, max_seconds=max_seconds))
            if len(pending) >= 8 * workers:
                break
        while pending:
            audio = pending.popleft().result()
            job = next(todo, None)
            if job is not None:
                pending.append(pool.submit(synthesize, job.text, job.voice, job.speed, job.pitch,
                                           max_seconds=max_seconds))
            yield audio


def coloured_noise(n: int, colour: str, rng: np.random.Generator, *, floor_bin: float = 1.0) -> np.ndarray:
    """`n` samples (float64) of white, pink (power ~ 1/f) or brown (~ 1/f^2) Gaussian noise.

    Shaped in the frequency domain; bins below `floor_bin` (at least bin 1) get the gain of
    `floor_bin`, so a floor of 20 Hz keeps brown noise from turning into a slow drift.
    """
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    if colour not in ("pink", "brown"):
        raise ValueError(f"noise colour {colour!r} is not one of white, pink, brown")
    spectrum = np.fft.rfft(white)
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    f = np.maximum(f, floor_bin)
    return np.fft.irfft(spectrum / (np.sqrt(f) if colour == "pink" else f), n)


def add_noise(audio: np.ndarray, kind: str, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus white or pink (1/f power) noise at `snr_db` dB relative to its mean power."""
    if kind not in BENCH_NOISE:
        raise ValueError(f"noise kind {kind!r} is not one of {', '.join(BENCH_NOISE)}")
    noise = coloured_noise(audio.size, kind, rng)
    signal_power = float(np.mean(audio.astype(np.float64) ** 2))
    noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / max(float(np.mean(noise ** 2)), 1e-20))
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def _power(x: np.ndarray) -> float:
    return max(float(np.mean(np.square(x, dtype=np.float64))), 1e-20)


def mains_hum(n: int, hz: float, harmonics: int, noise_db: float, rng: np.random.Generator) -> np.ndarray:
    """Mains hum at `CLIP_RATE`: `harmonics` partials of `hz` (amplitudes ~ U(0.3, 1)/k, random
    phases) over pink noise `noise_db` dB below the hum's power."""
    k = np.arange(1, harmonics + 1)
    amplitudes = rng.uniform(0.3, 1.0, harmonics) / k
    phases = rng.uniform(0.0, 2 * np.pi, harmonics)
    t = np.arange(n)[:, None] / CLIP_RATE
    hum = np.sin(2 * np.pi * hz * k * t + phases) @ amplitudes  # (n, harmonics) @ (harmonics,) -> (n,)
    noise = coloured_noise(n, "pink", rng, floor_bin=NOISE_FLOOR_HZ * n / CLIP_RATE)
    return hum + noise * np.sqrt(_power(hum) / _power(noise) / 10 ** (noise_db / 10))


def babble(talkers: Sequence[np.ndarray], levels_db: Sequence[float], seconds: float,
           rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Sum of speech clips (at `ESPEAK_RATE`), each at unit RMS times its level, looped to fill
    `seconds` and rotated by a random offset, so every talker speaks throughout (placed once,
    4-6 clips of ~2 s leave most of a 4-8 s clip to one talker or none); returns the mix and
    the offsets in seconds."""
    n = round(seconds * ESPEAK_RATE)
    mix = np.zeros(n)
    offsets = []
    for speech, level in zip(talkers, levels_db):
        x = speech.astype(np.float64) * (10 ** (level / 20) / np.sqrt(_power(speech)))
        start = int(rng.integers(x.size))
        mix += np.tile(x, n // x.size + 2)[start:start + n]  # this talker's clip repeats from `start`
        offsets.append(round(start / ESPEAK_RATE, 3))
    return mix, offsets


def impulse_response(rt60: float, predelay_ms: float, reverb_peak: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room IR at `CLIP_RATE`: a direct-path impulse (`IR_DIRECT`) at t=0, silence
    for the pre-delay, then Gaussian noise decaying 60 dB over `rt60` seconds, whose peak is
    `reverb_peak` of the direct path (so `ImpulseResponse`'s peak alignment finds t=0)."""
    pre, tail_n = round(predelay_ms * CLIP_RATE / 1000), round(rt60 * CLIP_RATE)
    t = np.arange(tail_n) / CLIP_RATE
    tail = rng.standard_normal(tail_n) * 10 ** (-3 * t / rt60)  # amplitude -60 dB at rt60
    ir = np.zeros(1 + pre + tail_n)
    ir[0] = IR_DIRECT
    ir[1 + pre:] = tail * (reverb_peak * IR_DIRECT / np.abs(tail).max())
    return ir


def render_clip(clip: Clip, seed: int, speech: dict[SynthJob, np.ndarray]) -> tuple[dict, np.ndarray, int]:
    """The metadata (with what was drawn here), audio and its rate of a planned noise/IR clip.

    Waveforms draw from their own generator (seed, key), so a clip does not depend on the
    others; `speech` holds the babble talkers' synthesised audio.
    """
    rng = rng_for(seed, f"clip_{clip.key}")
    meta, rate = dict(clip.meta), CLIP_RATE
    n = round(clip.seconds * CLIP_RATE)
    kind = meta.get("noise")
    if meta["kind"] == "ir":
        return meta, impulse_response(meta["rt60_s"], meta["predelay_ms"], meta["reverb_peak"], rng), rate
    if kind == "hum":
        audio = mains_hum(n, meta["hum_hz"], meta["harmonics"], meta["noise_db"], rng)
    elif kind == "babble":
        audio, meta["offsets_s"] = babble([speech[j] for j in clip.talkers], meta["levels_db"], clip.seconds, rng)
        rate = ESPEAK_RATE
    else:
        audio = coloured_noise(n, kind, rng, floor_bin=NOISE_FLOOR_HZ * n / CLIP_RATE)
    return meta, audio * (PEAK / np.abs(audio).max()), rate


# ----------------------------------------------------------------------------- models
def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A Qwen-style byte-level BPE tokenizer trained on `texts`, as `PreTrainedTokenizerFast`.

    Same pre-tokenizer split as Qwen3 and the ChatML special tokens `<|endoftext|>` (pad),
    `<|im_start|>`, `<|im_end|>` (eos); the ChatML role names are added to `texts`. With
    ~100 word types per language every word ends up a single token, which is what a 2-layer
    LM can learn in minutes.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    roles = ["system\n", "user\n", "assistant\n"] * 10  # ChatML headers: one token per role name
    tok.train_from_iterator([*texts, *roles], trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT,
                                 additional_special_tokens=[IM_START, IM_END], model_max_length=1024)
    hf.chat_template = CHATML_TEMPLATE
    return hf


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_tiny_whisper(out_dir: Path, *, dim: int = 128, layers: int = 4, heads: int = 4, ffn: int = 512,
                       mel_bins: int = 80, max_source_positions: int = 150, seed: int = 0) -> dict[str, int]:
    """Save a random Whisper (`WhisperModel`) and its `WhisperFeatureExtractor` to `out_dir`.

    Only the encoder matters to Borealis; the decoder is one minimal layer with a 64-token
    vocabulary so it costs nothing. `max_source_positions` positions cover twice as many mel
    frames (10 ms each): 150 -> 3 s, the window every demo clip fits in (the longest is ~2.7 s;
    a tighter window wastes less encoder work on padding).

    Returns:
        Parameter counts: {"encoder": ..., "total": ...}.
    """
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    chunk_seconds, rest = divmod(2 * max_source_positions * 160, 16_000)
    problems = []
    if rest:
        problems.append(f"max_source_positions={max_source_positions} must be a multiple of 50 "
                        "(the feature extractor's window is whole seconds)")
    if dim % heads:
        problems.append(f"encoder dim {dim} is not divisible by {heads} heads")
    if problems:
        raise ValueError("; ".join(problems))
    config = WhisperConfig(
        num_mel_bins=mel_bins, d_model=dim, encoder_layers=layers, encoder_attention_heads=heads,
        encoder_ffn_dim=ffn, max_source_positions=max_source_positions,
        decoder_layers=1, decoder_attention_heads=heads, decoder_ffn_dim=dim,  # unused by Borealis
        vocab_size=64, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, suppress_tokens=None, begin_suppress_tokens=None,
        # Whisper's default init_std (0.02) makes a random encoder's output ~98% position
        # embedding: clips differ by 2% of the output std, and a from-scratch demo spends its
        # whole budget escaping that. At 0.3 they differ by ~60%, and a tone-classification probe
        # learns through the LLM within 250 steps (it did not at 0.02 or 0.1).
        init_std=0.3)
    torch.manual_seed(seed)
    model = WhisperModel(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=mel_bins, sampling_rate=16_000, hop_length=160, n_fft=400,
                            chunk_length=chunk_seconds).save_pretrained(out_dir)
    return {"encoder": _params(model.encoder), "total": _params(model)}


def build_tiny_qwen3(out_dir: Path, tokenizer, *, dim: int = 256, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, head_dim: int = 64, ffn: int = 768, max_positions: int = 1024,
                     seed: int = 0) -> dict[str, int]:
    """Save a random `Qwen3ForCausalLM` sized to `len(tokenizer)`, and the tokenizer, to `out_dir`.

    Tied embeddings, GQA (`heads` query / `kv_heads` key-value heads) and ChatML ids as in
    Qwen3: eos = `<|im_end|>`, pad and bos = `<|endoftext|>`.

    Returns:
        Parameter counts: {"total": ..., "embedding": ...}.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    if heads % kv_heads:
        raise ValueError(f"llm heads ({heads}) must be a multiple of llm kv heads ({kv_heads})")
    eos, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(out_dir)
    return {"total": _params(model), "embedding": model.get_input_embeddings().weight.numel()}


# ----------------------------------------------------------------------------- writing
def _write_samples(pool_dir: Path, rows: Iterable[tuple[str, dict, np.ndarray | None, int]], shard_size: int) -> dict:
    """Write (key, meta, audio, rate) rows as one pool; returns its samples, hours, shards and tasks."""
    from borealis.shards import ShardWriter

    with ShardWriter(pool_dir, max_samples=shard_size) as writer:
        for key, meta, audio, rate in rows:
            writer.write(key, meta, audio, sample_rate=rate)
    index = writer.close()  # idempotent: the index written on exit
    return {"samples": index["num_samples"], "hours": round(index["duration"] / 3600, 4),
            "shards": len(index["shards"]), "tasks": index["tasks"]}


def write_pool(pool_dir: Path, samples: Sequence[Sample], *, seed: int, workers: int, shard_size: int,
               cache: dict[SynthJob, np.ndarray], retain: Container[SynthJob] = (), max_seconds: float = 5.5) -> dict:
    """Synthesise (or reuse from `cache`) and write one pool; returns its summary entry.

    The audio of jobs in `retain` is kept in `cache` for later pools (demo_en_noisy, babble).
    """
    known = set(cache)
    stream = synthesize_many([s.job for s in samples if s.job is not None and s.job not in known], workers,
                             max_seconds=max_seconds)

    def rows() -> Iterator[tuple[str, dict, np.ndarray | None, int]]:
        for s in samples:
            audio = None
            if s.job is not None:
                audio = cache[s.job] if s.job in known else next(stream)
                if s.job in retain:
                    cache[s.job] = audio
                if s.noise is not None:
                    audio = add_noise(audio, *s.noise, rng_for(seed, f"noise_{s.key}"))
            yield s.key, s.meta, audio, ESPEAK_RATE

    summary = _write_samples(pool_dir, rows(), shard_size)
    summary["languages"] = dict(sorted(collections.Counter(s.meta["language"] for s in samples).items()))
    return summary


def write_clip_pool(pool_dir: Path, clips: Sequence[Clip], *, seed: int, shard_size: int,
                    speech: dict[SynthJob, np.ndarray]) -> dict:
    """Synthesise and write a noise or IR pool; returns its summary entry (with the noise types)."""
    summary = _write_samples(pool_dir, ((c.key, *render_clip(c, seed, speech)) for c in clips), shard_size)
    del summary["tasks"]  # noise/IR samples have none
    types = collections.Counter(c.meta["noise"] for c in clips if "noise" in c.meta)
    return {**summary, "types": dict(types)} if types else summary


def _prepare_out(out: Path, overwrite: bool) -> None:
    generated = [out / "models", out / "shards", out / "corpus.json"]
    present = [p for p in generated if p.exists()]
    if present and not overwrite:
        raise FileExistsError(f"{out} already holds a demo corpus ({', '.join(p.name for p in present)}); "
                              "pass --overwrite to replace it, or choose another --out")
    for p in present:  # only what this script writes; e.g. training runs under OUT/ stay
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (models/, shards/, corpus.json)")
    p.add_argument("--seed", type=int, default=0, help="seeds sentences, voices, noise and model weights")
    p.add_argument("--workers", type=int, default=2, help="concurrent espeak-ng processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo corpus in --out")
    g = p.add_argument_group("corpus size")
    g.add_argument("--scale", type=float, default=1.0, help="multiplies every count below (min 1); 0.01 for tests")
    g.add_argument("--asr-per-language", type=int, default=Counts.asr, help="clips in train/asr_en and asr_ru each")
    g.add_argument("--instruct-per-language", type=int, default=Counts.instruct,
                   help="spoken-instruction clips per language in train/instruct")
    g.add_argument("--text-per-language", type=int, default=Counts.text,
                   help="text-only chats per language in train/text")
    g.add_argument("--bench-per-language", type=int, default=Counts.bench,
                   help="clips in bench/demo_en, demo_ru (and demo_en_noisy)")
    g.add_argument("--shard-size", type=int, default=500, help="samples per tar shard")
    g = p.add_argument_group("augmentation pools (shards/noise, shards/ir; not scaled by --scale, < 1 s to build)")
    g.add_argument("--noise-per-type", type=int, default=Counts.noise,
                   help=f"noise clips ({NOISE_SECONDS[0]:g}-{NOISE_SECONDS[1]:g} s) per type: {', '.join(NOISE_TYPES)}")
    g.add_argument("--irs", type=int, default=Counts.ir,
                   help=f"impulse responses, RT60 {IR_RT60[0]:g}-{IR_RT60[1]:g} s")
    g = p.add_argument_group("tiny Whisper (encoder ~0.9M params at the defaults)")
    g.add_argument("--encoder-dim", type=int, default=128, help="d_model")
    g.add_argument("--encoder-layers", type=int, default=4, help="transformer layers")
    g.add_argument("--encoder-heads", type=int, default=4, help="attention heads (divide --encoder-dim)")
    g.add_argument("--encoder-ffn", type=int, default=512, help="feed-forward width (4x d_model)")
    g.add_argument("--mel-bins", type=int, default=80, help="80 as Whisper <= v2")
    g.add_argument("--max-source-positions", type=int, default=150,
                   help="encoder positions; 2 mel frames each, 150 -> 3 s window (multiple of 50)")
    g = p.add_argument_group("tiny Qwen3 (~1.9M params at the defaults)")
    g.add_argument("--llm-dim", type=int, default=256, help="hidden size")
    g.add_argument("--llm-layers", type=int, default=2, help="decoder layers")
    g.add_argument("--llm-heads", type=int, default=4, help="query heads")
    g.add_argument("--llm-kv-heads", type=int, default=2, help="key/value heads (GQA)")
    g.add_argument("--llm-head-dim", type=int, default=64, help="per-head width (Qwen3 sets it apart from hidden)")
    g.add_argument("--llm-ffn", type=int, default=768, help="MLP width (3x hidden)")
    g.add_argument("--llm-max-positions", type=int, default=1024, help="38 audio slots (3 s) + prompt fit easily")
    g.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary cap (the corpus needs fewer)")
    args = p.parse_args(argv)
    problems = [f"--{k.replace('_', '-')} must be >= 1, got {v}" for k, v in vars(args).items()
                if isinstance(v, int) and not isinstance(v, bool) and k != "seed" and v < 1]
    if args.scale <= 0:
        problems.append(f"--scale must be > 0, got {args.scale}")
    if args.vocab_size < 256 + len(SPECIAL_TOKENS):
        problems.append(f"--vocab-size must cover the 256 bytes + {len(SPECIAL_TOKENS)} special tokens, "
                        f"got {args.vocab_size}")
    if args.max_source_positions % 50:
        problems.append("--max-source-positions must be a multiple of 50 (a whole-second window), "
                        f"got {args.max_source_positions}")
    if args.encoder_heads and args.encoder_dim % args.encoder_heads:
        problems.append(f"--encoder-dim {args.encoder_dim} is not divisible by --encoder-heads {args.encoder_heads}")
    if args.llm_kv_heads and args.llm_heads % args.llm_kv_heads:
        problems.append(f"--llm-heads {args.llm_heads} is not a multiple of --llm-kv-heads {args.llm_kv_heads}")
    if problems:
        p.error("; ".join(problems))
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Build the demo corpus; returns the summary also written to `OUT/corpus.json`."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.monotonic()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file "Writing model shards" bars drown the pool log
    check_espeak()
    _prepare_out(args.out, args.overwrite)
    counts = Counts(args.asr_per_language, args.instruct_per_language, args.text_per_language,
                    args.bench_per_language, args.noise_per_type, args.irs).scaled(args.scale)
    plan = plan_corpus(args.seed, counts)

    texts = plan.train_texts + [DEFAULT_SYSTEM_PROMPT, *ASR_PROMPTS.values()]
    for lang in LANGUAGES.values():
        texts += lang.vocabulary + list(lang.instruct.values()) + list(lang.genitive)
    tokenizer = train_tokenizer(texts, args.vocab_size)
    whisper = build_tiny_whisper(args.out / "models" / "whisper", dim=args.encoder_dim, layers=args.encoder_layers,
                                 heads=args.encoder_heads, ffn=args.encoder_ffn, mel_bins=args.mel_bins,
                                 max_source_positions=args.max_source_positions, seed=args.seed)
    qwen3 = build_tiny_qwen3(args.out / "models" / "qwen3", tokenizer, dim=args.llm_dim, layers=args.llm_layers,
                             heads=args.llm_heads, kv_heads=args.llm_kv_heads, head_dim=args.llm_head_dim,
                             ffn=args.llm_ffn, max_positions=args.llm_max_positions, seed=args.seed)
    log.info("models: whisper encoder %d params, qwen3 %d params, tokenizer %d tokens",
             whisper["encoder"], qwen3["total"], len(tokenizer))

    max_seconds = 0.95 * 2 * args.max_source_positions * 160 / 16_000
    if max_seconds < 5.5:
        log.info("utterances longer than %.2f s are re-spoken faster to fit the %.1f s encoder window",
                 max_seconds, max_seconds / 0.95)
    pools: dict[str, dict] = {}
    cache: dict[SynthJob, np.ndarray] = {}
    retain = {s.job for s in plan.pools["bench/demo_en"]} | {j for c in plan.clip_pools["noise"] for j in c.talkers}
    for name, samples in plan.pools.items():
        t0 = time.monotonic()
        pools[name] = write_pool(args.out / "shards" / name, samples, seed=args.seed, workers=args.workers,
                                 shard_size=args.shard_size, cache=cache, retain=retain, max_seconds=max_seconds)
        log.info("%-22s %5d samples, %.3f h, %.1f s", name, len(samples), pools[name]["hours"],
                 time.monotonic() - t0)
    for name, clips in plan.clip_pools.items():
        t0 = time.monotonic()
        pools[name] = write_clip_pool(args.out / "shards" / name, clips, seed=args.seed, shard_size=args.shard_size,
                                      speech=cache)
        log.info("%-22s %5d clips,   %.3f h, %.1f s", name, len(clips), pools[name]["hours"], time.monotonic() - t0)

    def voices(prefix: str, code: str) -> list[str]:
        return sorted({s.job.voice for n, ss in plan.pools.items() if n.startswith(prefix)
                       for s in ss if s.job and s.meta["language"] == code})

    summary = {
        "seed": args.seed,
        "pools": pools,
        "total": {"samples": sum(p["samples"] for p in pools.values()),
                  "hours": round(sum(p["hours"] for p in pools.values()), 4)},
        "vocabulary": {code: {"words": len(lang.vocabulary), "list": lang.vocabulary}
                       for code, lang in LANGUAGES.items()},
        "tokenizer_vocab_size": len(tokenizer),
        "voices": {"train": {c: voices("train/", c) for c in LANGUAGES},
                   "bench": {c: voices("bench/", c) for c in LANGUAGES},
                   "train_variants": list(TRAIN_VARIANTS), "bench_variants": list(BENCH_VARIANTS)},
        "prosody": {"train_speed_wpm": list(TRAIN_SPEED), "bench_speed_wpm": list(BENCH_SPEED),
                    "train_pitch": list(TRAIN_PITCH), "bench_pitch": list(BENCH_PITCH),
                    "noise_snr_db": list(NOISE_SNR_DB)},
        "augmentation": {  # shards/noise and shards/ir, for augmentations.BackgroundNoise / ImpulseResponse
            "noise": {"pool": "shards/noise", "types": list(NOISE_TYPES), "per_type": counts.noise,
                      "seconds": list(NOISE_SECONDS), "floor_hz": NOISE_FLOOR_HZ, "hum_hz": list(HUM_HZ),
                      "hum_harmonics": list(HUM_HARMONICS), "hum_noise_db": list(HUM_NOISE_DB),
                      "babble_talkers": list(BABBLE_TALKERS), "babble_level_db": list(BABBLE_LEVEL_DB),
                      "babble_speech": ["train/asr_en", "train/asr_ru"], "peak": PEAK},
            "ir": {"pool": "shards/ir", "count": counts.ir, "rt60_s": list(IR_RT60),
                   "predelay_ms": list(IR_PREDELAY_MS), "reverb_peak": list(IR_REVERB_PEAK), "direct": IR_DIRECT},
        },
        "parameters": {"whisper_encoder": whisper["encoder"], "whisper_total": whisper["total"],
                       "qwen3": qwen3["total"], "qwen3_embedding": qwen3["embedding"]},
        "models": {"whisper": "models/whisper", "qwen3": "models/qwen3"},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    (args.out / "corpus.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    log.info("demo corpus in %s: %d samples, %.2f h of audio, %.0f s", args.out,
             summary["total"]["samples"], summary["total"]["hours"], time.monotonic() - start)
    return summary


if __name__ == "__main__":
    main()
