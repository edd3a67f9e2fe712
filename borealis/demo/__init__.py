"""The embedded CPU demo: espeak-ng speech, noise and IR pools, tiny Whisper and Qwen3 bases.

What: `borealis demo --out demo` (`build.main`) writes, deterministically for `--seed`,
    demo/models/whisper/   random Whisper (~1.4M-param encoder, 3 s window) + feature extractor
    demo/models/qwen3/     random 2-layer Qwen3 + a byte-level BPE tokenizer trained here (ChatML)
    demo/shards/train/{asr_en,asr_ru,instruct,text}/   training pools (ShardWriter format)
    demo/shards/bench/{demo_en,demo_ru,demo_en_random,demo_ru_random,demo_en_noisy}/ benchmarks
    demo/shards/noise/     48 noise clips, 4-8 s: brown, band, mains hum, babble (12 each)
    demo/shards/ir/        40 room impulse responses, RT60 0.15-0.9 s
    demo/corpus.json       summary: counts, hours, vocabularies, voices, noise/IR parameters,
                           parameter counts
`borealis demo bases --corpus demo --out models/demo` (`bases.main`) pretrains those random
models on the training pools into the bases the repository ships in models/demo;
`borealis demo pretrain` saves the demo's stage-1 run (the ASR pretrain,
configs/demo_pretrain.yaml) beside them, in models/demo/pretrain.
The modules, one job each: `text` (vocabulary and sentences), `speech` (espeak-ng),
`noise` (noise and impulse responses), `plan` (every sample decided before any audio),
`models` (tokenizer and tiny models, also built by the tests' fixtures), `build` (the
options, the pool writers and the summary), `bases` (the bases' pretraining) and `pretrain`
(stage 1's weights, saved for stage 2).

Why: the demo trains the flagship recipe (frozen pretrained encoder, adapter + LoRA on a
pretrained LLM) on a real vocabulary (~270 words per language, 2-5 word utterances), where
nothing can be downloaded.

Cost: ~14k espeak-ng calls (~11 ms each); the default run (13,850 speech samples, 5.1 h of
audio) writes 363 MB in ~90 s on two cores. The noise and IR pools take < 1 s.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """`borealis demo --out DIR` builds the corpus (`build.main`); `borealis demo bases ...`
    pretrains the bases on it (`bases.main`); `borealis demo pretrain ...` saves a stage-1 run as
    the pretrain the demo's stage 2 starts from (`pretrain.main`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bases"]:
        from borealis.demo.bases import main as bases_main

        return bases_main(argv[1:])
    if argv[:1] == ["pretrain"]:
        from borealis.demo.pretrain import main as pretrain_main

        return pretrain_main(argv[1:])
    from borealis.demo.build import main as build_main

    return build_main(argv)


__all__ = ["main"]
