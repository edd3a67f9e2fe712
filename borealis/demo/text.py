"""The demo's languages: a vocabulary of ~270 words each, a sentence grammar, and task prompts.

What: `LANGUAGES` holds English and Russian, each with numbers, nouns, verbs, adjectives and
function words (`Language.words`), espeak base voices and the prompts of the instruction and
text-only tasks. `make_sentence` draws a 2-5 word utterance from a seeded generator, either
from the grammar (`GRAMMAR_SHARE`: commands, statements, number strings, in varying orders)
or as known words in random order; `make_sentences` draws many, optionally distinct and
outside an excluded set; `answer` / `chat_example` give the instruction and chat pools'
questions and answers.

Why: a demo that trains the recipe must hear a real vocabulary, and a model that learnt the
grammar rather than the words must show it: the benchmarks hold out grammar sentences
(`kind="grammar"`) and random orders of known words (`kind="random"`). Russian nouns are
all masculine inanimate, so one adjective form agrees with every noun and the accusative of
the commands equals the dictionary form; Russian numbers stand alone (a number before a noun
would need a case the grammar does not model), as English ones do.

Cost: pure Python over a seeded numpy generator; the default corpus's ~14k sentences take
well under a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

MIN_WORDS, MAX_WORDS = 2, 5  # words per utterance: under 3 s of speech at the demo's speaking rates
GRAMMAR_SHARE = 0.75  # training sentences from the grammar; the rest are known words in random order
KINDS = ("grammar", "random")


@dataclass(frozen=True)
class Language:
    """Vocabulary, sentence grammar, voices and task prompts of one demo language.

    `words[category]` lists the words of each category (numbers, nouns, verbs, adjectives,
    determiners, prepositions, adverbs); `digits[i]` is the word for i (0-9) and `genitive[i]`
    its genitive (Russian counting prompts need it). `copula` joins a statement's noun and
    adjective ("is"; Russian needs none).
    """

    code: str
    words: dict[str, tuple[str, ...]]
    genitive: tuple[str, ...]
    copula: str
    voices: tuple[str, ...]
    instruct: dict[str, str]  # task -> spoken-instruction prompt
    chat: dict[str, str]  # task -> text-only prompt with {x}, {a}, {b}, {s} fields

    @property
    def digits(self) -> tuple[str, ...]:
        return self.words["numbers"][:10]

    @property
    def vocabulary(self) -> list[str]:
        words = {w for ws in self.words.values() for w in ws}
        if self.copula:
            words.add(self.copula)
        return sorted(words)


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_EN = {
    "numbers": _split("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                      "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
                      "eighty ninety hundred"),
    "nouns": _split("door window table chair lamp light phone screen radio music song movie book letter page "
                    "picture camera clock alarm timer kettle coffee tea water milk bread cheese apple orange "
                    "lemon banana tomato potato soup cake dinner lunch breakfast kitchen garden house room office "
                    "school shop market bank station airport museum theatre park forest river lake beach "
                    "mountain island bridge road street city village car bus train plane boat bike ticket "
                    "passport wallet key bag box bottle glass cup plate knife spoon fork bed sofa carpet mirror "
                    "shower towel printer computer file message email password number volume channel signal "
                    "battery heater fan oven fridge dog cat bird horse"),
    "verbs": _split("open close turn start stop pause play find show bring take put give send call buy sell "
                    "check save delete copy move lift drop clean wash fix paint read write draw count choose "
                    "add remove print load charge wait begin finish hold push pull keep leave carry cook "
                    "order book set"),
    "adjectives": _split("red blue green yellow white black grey brown big small large little new old warm "
                         "cold hot cool quiet loud fast slow long short tall low heavy light clean dirty empty "
                         "full bright dark soft hard sweet fresh cheap simple main upper lower left right "
                         "first second third last next"),
    "determiners": _split("the a my your this that every some our their"),
    "prepositions": _split("in on under over near behind with without to from for into"),
    "adverbs": _split("now then today tomorrow tonight here there again please very quickly slowly up down "
                      "also only always never soon later"),
}
_RU = {
    "numbers": _split("ноль один два три четыре пять шесть семь восемь девять десять одиннадцать двенадцать "
                      "тринадцать четырнадцать пятнадцать шестнадцать семнадцать восемнадцать девятнадцать "
                      "двадцать тридцать сорок пятьдесят шестьдесят семьдесят восемьдесят девяносто сто"),
    "nouns": _split("стол стул диван шкаф дом сад парк лес город мост поезд автобус самолёт корабль мяч ключ "
                    "нож экран звонок сигнал свет звук голос ветер дождь снег день вечер час год месяц завтрак "
                    "обед ужин чай сок хлеб сыр суп торт банан апельсин лимон огурец помидор магазин рынок "
                    "банк офис завод вокзал аэропорт музей театр стадион бассейн кабинет коридор балкон гараж "
                    "лифт замок портфель рюкзак карандаш блокнот журнал билет паспорт документ конверт подарок "
                    "цветок камень песок берег остров холм адрес номер код пароль файл сервер принтер монитор "
                    "датчик фонарь холодильник чайник утюг пылесос кран душ ковёр телефон компьютер"),
    "verbs": _split("возьми положи открой закрой включи выключи найди покажи принеси купи продай проверь "
                    "запиши удали сохрани отправь подними опусти поверни запусти останови начни закончи помой "
                    "почини нарисуй прочитай напиши сделай убери поставь повесь измерь посчитай выбери добавь "
                    "переведи настрой скачай загрузи очисти спрячь брось поймай толкни держи оставь"),
    "adjectives": _split("красный синий зелёный жёлтый белый чёрный серый большой маленький новый старый тёплый "
                         "холодный горячий тихий громкий быстрый медленный длинный короткий высокий низкий "
                         "тяжёлый лёгкий чистый грязный пустой полный светлый тёмный мягкий твёрдый сладкий "
                         "свежий дорогой дешёвый простой важный главный верхний нижний левый правый первый "
                         "второй третий последний"),
    "determiners": _split("этот тот мой твой наш ваш каждый другой"),
    "prepositions": _split("в на под за через про"),
    "adverbs": _split("сейчас потом сегодня завтра вчера здесь там снова пожалуйста очень быстро медленно вверх "
                      "вниз туда сюда уже ещё тоже только всегда никогда скоро"),
}

LANGUAGES: dict[str, Language] = {
    "en": Language(
        code="en", words=_EN, genitive=_EN["numbers"][:10], copula="is",
        voices=("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-us-nyc"),
        instruct={"first": "What is the first word?", "last": "What is the last word?",
                  "count": "How many words?"},
        chat={"after": "What comes after {x}?", "before": "What comes before {x}?",
              "range": "Count from {a} to {b}.", "first": 'What is the first word in "{s}"?',
              "last": 'What is the last word in "{s}"?', "count": 'How many words are in "{s}"?'},
    ),
    "ru": Language(
        code="ru", words=_RU, copula="",
        genitive=("нуля", "одного", "двух", "трех", "четырех", "пяти", "шести", "семи", "восьми", "девяти"),
        voices=("ru", "ru-lv"),
        instruct={"first": "Какое первое слово?", "last": "Какое последнее слово?", "count": "Сколько слов?"},
        chat={"after": "Что идет после числа {x}?", "before": "Что идет перед числом {x}?",
              "range": "Посчитай от {a} до {b}.", "first": 'Какое первое слово во фразе "{s}"?',
              "last": 'Какое последнее слово во фразе "{s}"?', "count": 'Сколько слов во фразе "{s}"?'},
    ),
}


# Grammar patterns: category names, "?" marks an optional slot (kept with probability 1/2),
# a literal word is written in quotes. A drawn pattern may also be said in another order
# (`REORDER_SHARE`): Russian word order is free, and English commands move their adverb.
_PATTERNS = {
    "en": (
        "verbs determiners adjectives? nouns", "verbs determiners nouns adverbs", "adverbs verbs determiners nouns",
        "verbs determiners adjectives nouns adverbs?", "verbs determiners nouns prepositions nouns",
        "determiners nouns 'is' adjectives", "determiners adjectives nouns 'is' adjectives",
        "prepositions determiners adjectives? nouns", "nouns numbers numbers? numbers?", "numbers numbers numbers? numbers?",
        "verbs nouns numbers numbers?", "adjectives nouns prepositions determiners nouns",
    ),
    "ru": (
        "verbs determiners? adjectives? nouns", "verbs nouns adverbs", "adverbs verbs adjectives? nouns",
        "verbs nouns prepositions adjectives? nouns", "determiners? nouns adjectives", "adjectives nouns adverbs?",
        "prepositions adjectives? nouns", "nouns numbers numbers? numbers?", "numbers numbers numbers? numbers?",
        "verbs nouns numbers numbers?", "adverbs determiners? nouns adjectives",
    ),
}
REORDER_SHARE = {"en": 0.1, "ru": 0.3}  # grammar sentences said in a shuffled order


def _grammar_sentence(lang: Language, rng: np.random.Generator) -> list[str]:
    pattern = _PATTERNS[lang.code][rng.integers(len(_PATTERNS[lang.code]))]
    words = []
    for slot in pattern.split():
        if slot.endswith("?"):
            if rng.random() < 0.5:
                continue
            slot = slot[:-1]
        if slot.startswith("'"):
            words.append(lang.copula)
            continue
        choices = lang.words[slot]
        words.append(choices[rng.integers(len(choices))])
    if rng.random() < REORDER_SHARE[lang.code]:
        words = [words[i] for i in rng.permutation(len(words))]
    return words


def make_sentence(language: str, rng: np.random.Generator, kind: str | None = None) -> str:
    """One lower-case utterance of 2-5 words: from the grammar, or known words in random order.

    `kind` None draws the kind too (grammar with probability `GRAMMAR_SHARE`), as training
    sentences are; the benchmarks ask for one kind. A random-order sentence draws its words
    uniformly from the whole vocabulary, so the acoustics, not the grammar, decide.
    """
    lang = LANGUAGES[language]
    if kind is None:
        kind = "grammar" if rng.random() < GRAMMAR_SHARE else "random"
    if kind not in KINDS:
        raise ValueError(f"sentence kind {kind!r} is not one of {', '.join(KINDS)}")
    while True:
        if kind == "grammar":
            words = _grammar_sentence(lang, rng)
        else:
            vocab = lang.vocabulary
            words = [vocab[i] for i in rng.integers(0, len(vocab), size=rng.integers(MIN_WORDS, MAX_WORDS + 1))]
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return " ".join(words)


def make_sentences(language: str, count: int, rng: np.random.Generator, *, exclude: Iterable[str] = (),
                   unique: bool = False, kind: str | None = None) -> list[str]:
    """`count` sentences of `language` (of `kind`, see `make_sentence`), none in `exclude`,
    optionally all distinct.

    Raises:
        ValueError: the language or kind is unknown, or the grammar cannot give `count`
            distinct sentences outside `exclude`.
    """
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} is not a demo language; choose from {sorted(LANGUAGES)}")
    banned = set(exclude)
    out: list[str] = []
    misses = 0
    while len(out) < count:
        s = make_sentence(language, rng, kind)
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
    """A text-only question and its answer: number order, counting, or a word question about `sentence`."""
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
