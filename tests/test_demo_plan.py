"""Tests for borealis/demo/plan.py: held-out benchmark sentences and voices, the prompts and
answers of the instruction and chat pools, and the noise/IR clip plans."""

from __future__ import annotations

import pytest

from borealis.demo.noise import BENCH_NOISE, NOISE_TYPES
from borealis.demo.plan import Counts, plan_corpus, word_coverage
from borealis.demo.speech import BENCH_VARIANTS
from borealis.demo.text import LANGUAGES


def test_plan_holds_out_benchmark_sentences_and_voices():
    plan = plan_corpus(0, Counts(asr=400, instruct=50, text=50, bench=60))
    assert plan == plan_corpus(0, Counts(asr=400, instruct=50, text=50, bench=60))
    train = [s for p, ss in plan.pools.items() if p.startswith("train/") for s in ss]
    bench = [s for p, ss in plan.pools.items() if p.startswith("bench/") for s in ss]
    for code in ("en", "ru"):
        held = plan.bench_sentences[code]
        assert len(held) == 60 + Counts.bench_random
        assert {s.meta["text"] for s in plan.pools[f"bench/demo_{code}_random"]} <= held
        assert not held & {s.meta["text"] for s in train if "text" in s.meta and s.meta["language"] == code}
        quoted = [m["content"] for s in train if s.meta["task"] == "chat" for m in s.meta["messages"]]
        assert not any(f'"{h}"' in q for h in held for q in quoted)
    train_variants = {s.job.voice.partition("+")[2] for s in train if s.job}
    bench_variants = {s.job.voice.partition("+")[2] for s in bench}
    assert bench_variants <= set(BENCH_VARIANTS) and not bench_variants & train_variants
    assert len(train_variants) > 10  # voices do vary in training
    clean, noisy = plan.pools["bench/demo_en"], plan.pools["bench/demo_en_noisy"]
    assert [s.job for s in clean] == [s.job for s in noisy] and all(s.noise for s in noisy)


def test_instruction_and_chat_answers_follow_the_transcript():
    en = LANGUAGES["en"]
    plan = plan_corpus(3, Counts(asr=1, instruct=40, text=40, bench=1))
    for s in plan.pools["train/instruct"]:
        prompt, reply = (m["content"] for m in s.meta["messages"])
        assert prompt.endswith(" <|start_of_audio|><|end_of_audio|>")
        words = s.meta["text"].split()
        assert reply in (words[0], words[-1], LANGUAGES[s.meta["language"]].digits[len(words)])
    after = [s for s in plan.pools["train/text"] if s.meta["messages"][0]["content"].startswith("What comes after")]
    for s in after:
        q, a = (m["content"] for m in s.meta["messages"])
        assert en.digits.index(a) == en.digits.index(q.split()[-1].rstrip("?")) + 1


def test_plan_noise_and_irs_use_training_speech_only():
    counts = Counts(asr=40, instruct=3, text=3, bench=5)
    assert counts.scaled(0.01).noise == counts.noise == 12 and counts.scaled(0.01).ir == 40  # not scaled
    plan = plan_corpus(0, counts)
    assert plan == plan_corpus(0, counts)
    noise, irs = plan.clip_pools["noise"], plan.clip_pools["ir"]
    assert len(noise) == 12 * len(NOISE_TYPES) and len(irs) == 40
    assert {t: sum(c.meta["noise"] == t for c in noise) for t in NOISE_TYPES} == dict.fromkeys(NOISE_TYPES, 12)
    assert all(4.0 <= c.seconds <= 8.0 and c.meta["kind"] == "noise" for c in noise)
    train = {s.key: s.job for p in ("train/asr_en", "train/asr_ru") for s in plan.pools[p]}
    bench = {s.job for p, ss in plan.pools.items() if p.startswith("bench/") for s in ss}
    babble = [c for c in noise if c.meta["noise"] == "babble"]
    for c in babble:
        assert 4 <= len(c.talkers) <= 6 and len(set(c.meta["talkers"])) == len(c.talkers)
        assert [train[k] for k in c.meta["talkers"]] == list(c.talkers)  # training clips, by key and job
        assert not set(c.talkers) & bench
        assert all(-8.0 <= x <= 0.0 for x in c.meta["levels_db"])
    assert {c.meta["hum_hz"] for c in noise if c.meta["noise"] == "hum"} == {50.0, 60.0}
    for c in irs:
        assert 0.15 <= c.meta["rt60_s"] <= 0.9 and 3.0 <= c.meta["predelay_ms"] <= 20.0
        assert c.seconds == pytest.approx(c.meta["rt60_s"] + c.meta["predelay_ms"] / 1000, abs=1e-3)
    assert max(c.meta["rt60_s"] for c in irs) - min(c.meta["rt60_s"] for c in irs) > 0.5  # rooms to halls


def test_the_default_plan_speaks_every_word_and_holds_out_the_noise_kinds():
    """The full corpus: every vocabulary word is heard in training, every word a benchmark says
    at least 10 times; the noisy benchmark's noise kinds are not in the training noise pool."""
    plan = plan_corpus(0, Counts())
    for code, cov in word_coverage(plan).items():
        assert cov["vocabulary"] >= 250 and cov["heard"] == cov["vocabulary"], code
        assert cov["bench_word_min"] >= 10, code
    assert not set(BENCH_NOISE) & {c.meta["noise"] for c in plan.clip_pools["noise"]}
    assert {s.noise[0] for s in plan.pools["bench/demo_en_noisy"]} == set(BENCH_NOISE)
