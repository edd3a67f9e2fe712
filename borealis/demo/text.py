"""The demo's languages: vocabulary, sentence grammar, and the questions asked about a sentence.

What: `LANGUAGES` holds English and Russian, each 10 digits plus 6 command words, 5 command
templates, espeak base voices and the prompts of the instruction and text-only tasks;
`make_sentences` draws 2-5 word utterances from a seeded generator, and `answer` /
`chat_example` give the questions and answers of the instruction and chat pools.

Why: a 2-layer model trained from scratch on 2 CPU cores learns 10 spoken digits within
minutes but not 200 words, so the vocabulary stays close to the digits (16 words per
language).

Cost: pure Python over a seeded numpy generator; drawing the default corpus's ~9k
sentences takes well under a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

MIN_WORDS, MAX_WORDS = 2, 5  # words per utterance: under 5 s of speech at the demo's speaking rates


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


def make_sentence(language: str, rng: np.random.Generator) -> str:
    """One lower-case utterance of 2-5 words: a digit string (50%), a command (40%) or a
    random word sequence from the vocabulary (10%, so the acoustics, not the grammar, decide).

    The vocabulary is 16 words per language (digits + 6 command words): a 2-layer model
    trained from scratch on 2 CPU cores learns 10 spoken digits in minutes but not 200 words;
    at ~25 words per language it reached only ~1.0 nats/token in the demo's 9-minute budget,
    so the demo stays close to the digits end."""
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
        ValueError: the language is unknown, or the grammar cannot give `count` distinct
            sentences outside `exclude`.
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


def chat_example(lang: Language, rng: np.random.Generator, sentence: str) -> tuple[str, str]:
    """A text-only question and its answer: digit order, counting, or a word question about `sentence`."""
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
