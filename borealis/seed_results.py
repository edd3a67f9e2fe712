"""The seed's published results: average WER over its six Russian benchmarks, per run.

One table in one place: the ablation overlays quote these figures in their comments
(`tests/test_configs.py` checks that they match) and the ablation grid prints them beside a
run's own figures. The benchmarks are LibriSpeech-RU, Common Voice, Tone Books, Tone Speak,
Tone Webinars and Sova RuDevices (`configs/it_fresh.yaml` `data.val_sets`).

The rows: every ablation started from the seed's ASR pretrain (`SEED_PRETRAIN`, ~90k samples
of plain ASR) except `it_fresh`, the seed's one run without it, which failed; `whisper_large_v3`
is plain Whisper-large-v3 on the same benchmarks.
"""

from __future__ import annotations

SEED_PRETRAIN = "AlexWortega/Borealis5b_90k"  # the seed's released stage-1 (ASR) pretrain, a hub id

SEED_AVG_WER: dict[str, float] = {
    "ru_only": 19.32,           # Russian audio only
    "en_only": 20.88,           # English audio only
    "mixed_large": 22.11,       # Russian + English audio
    "ru_text_10pct": 19.17,     # Russian audio + 10% text-only chats: the best row
    "ru_text_25pct": 24.02,     # Russian audio + 25% text-only chats
    "it_fresh": 68.18,          # instruction tuning without the pretrain
    "whisper_large_v3": 11.03,  # the baseline: Whisper-large-v3 alone
}
