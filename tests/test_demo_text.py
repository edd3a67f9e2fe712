"""Tests for borealis/demo/text.py: the demo's vocabulary, sentences and task answers."""

from __future__ import annotations

import re

import pytest

from borealis.demo import text
from borealis.demo.plan import rng_for


@pytest.mark.parametrize("language", ["en", "ru"])
def test_sentences_are_seeded_short_lowercase_and_in_vocabulary(language):
    a = text.make_sentences(language, 300, rng_for(0, "x"))
    assert a == text.make_sentences(language, 300, rng_for(0, "x"))
    assert a != text.make_sentences(language, 300, rng_for(1, "x"))
    vocab = set(text.LANGUAGES[language].vocabulary)
    for s in a:
        assert re.fullmatch(r"[a-zа-яё]+( [a-zа-яё]+)*", s), s
        assert text.MIN_WORDS <= len(s.split()) <= text.MAX_WORDS, s
        assert set(s.split()) <= vocab, s
    assert len(vocab) >= 250  # numbers, nouns, verbs, adjectives and function words


@pytest.mark.parametrize("language", ["en", "ru"])
def test_grammar_and_random_sentences_differ_in_order_not_words(language):
    """Random-order sentences draw known words in any order, grammar sentences hold at most one
    verb (every pattern has one verb slot): two verbs side by side occur only in random ones."""
    grammar = text.make_sentences(language, 2000, rng_for(0, "g"), kind="grammar")
    random = text.make_sentences(language, 2000, rng_for(0, "r"), kind="random")
    lang = text.LANGUAGES[language]
    assert all(set(s.split()) <= set(lang.vocabulary) for s in grammar + random)
    verbs = set(lang.words["verbs"]) - set(lang.words["nouns"]) - set(lang.words["adjectives"])
    two_verbs = lambda ss: sum(any(a in verbs and b in verbs for a, b in zip(s.split(), s.split()[1:]))  # noqa: E731
                               for s in ss)
    assert two_verbs(grammar) == 0 and two_verbs(random) > 20
    with pytest.raises(ValueError, match="'poem'"):
        text.make_sentence(language, rng_for(0, "x"), kind="poem")


def test_make_sentences_errors_name_the_problem(monkeypatch):
    with pytest.raises(ValueError, match="'de'"):
        text.make_sentences("de", 1, rng_for(0, "x"))
    monkeypatch.setattr(text, "make_sentence", lambda language, rng, kind=None: "go left")  # an exhausted grammar
    with pytest.raises(ValueError, match="1 of 2 distinct en"):
        text.make_sentences("en", 2, rng_for(0, "x"), unique=True)


def test_answers_follow_the_sentence():
    en, ru = text.LANGUAGES["en"], text.LANGUAGES["ru"]
    assert text.answer(en, "first", "open the door") == "open"
    assert text.answer(en, "last", "open the door") == "door"
    assert text.answer(en, "count", "open the door") == "three"
    assert text.answer(ru, "count", "включи свет на кухне") == "четыре"
    with pytest.raises(ValueError, match="'middle'"):
        text.answer(en, "middle", "open the door")
