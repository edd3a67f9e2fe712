"""The embedded CPU demo: espeak-ng speech, noise and IR pools, a tiny Whisper and a tiny Qwen3.

What: `borealis demo --out demo` (`main`) writes, deterministically for `--seed`,
    demo/models/whisper/   random Whisper (~0.9M-param encoder, 3 s window) + feature extractor
    demo/models/qwen3/     random 2-layer Qwen3 + a byte-level BPE tokenizer trained here (ChatML)
    demo/shards/train/{asr_en,asr_ru,instruct,text}/   training pools (ShardWriter format)
    demo/shards/bench/{demo_en,demo_ru,demo_en_noisy}/ held-out benchmarks
    demo/shards/noise/     60 noise clips, 4-8 s: white, pink, brown, mains hum, babble (12 each)
    demo/shards/ir/        40 room impulse responses, RT60 0.15-0.9 s
    demo/corpus.json       summary: counts, hours, vocabularies, voices, noise/IR parameters,
                           parameter counts
The modules, one job each: `text` (vocabulary and sentences), `speech` (espeak-ng),
`noise` (noise and impulse responses), `plan` (every sample decided before any audio),
`models` (tokenizer and tiny models, also built by the tests' fixtures) and `build` (the
options, the pool writers and the summary).

Why: the end-to-end CPU demo must show a model that really learns ASR in ~8 minutes on two
cores. On such a machine a ~1M-param Whisper-style encoder with a 2-layer Qwen3 reached 1.2%
WER on held-out spoken digit strings after 7 minutes, while the same model on a 200-word
vocabulary had not started to learn after 8. So the corpus is spoken digits plus a few
command words per language (English, Russian), 2-5 words per utterance (< 5 s of audio).

Cost: ~9k espeak-ng calls (~11 ms each); the default run (9650 speech samples, 3.0 h of
audio) writes 263 MB in 60-100 s on two cores. The noise and IR pools take < 1 s.
"""

from borealis.demo.build import main

__all__ = ["main"]
