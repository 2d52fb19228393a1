"""Synthetic tasks with graded difficulty, for CPU runs and tests: deterministic by seed.

Kinds (levels): ``addition`` (1-6: digits per operand), ``multiplication`` (1-6: 1x1 up to 4x4
digits), ``capitals`` (1-3: famous, known, obscure countries from a built-in table),
``letters`` (1-4: counting a letter in longer and longer words), ``comparison`` (1-4: which of
two numbers is larger, ending with decimal traps such as 9.11 vs 9.9), ``facts`` (1-2: everyday
facts a child knows, then school facts), ``opposites`` (1-2: everyday words, then longer ones),
``copy`` (1-2: repeat one word, then two). The last three give small models easy queries, so
their competence spreads over [0, 1]. Every row carries its ``difficulty`` level and
``meta.generator``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .tasks import Task, write_tasks


@dataclass(frozen=True)
class Item:
    question: str
    answer: str
    task: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SyntheticKind:
    levels: int
    draw: Callable[[random.Random, int], Item]  # (rng, level) -> one random item of that level
    pool: Callable[[int], int | None] = lambda level: None  # distinct items a level has, when few


def _digits(rng: random.Random, count: int) -> int:
    return rng.randint(1 if count == 1 else 10 ** (count - 1), 10**count - 1)


def _addition(rng: random.Random, level: int) -> Item:
    a, b = _digits(rng, level), _digits(rng, level)
    return Item(f"What is {a} + {b}?", str(a + b), "numeric")


_PRODUCT_DIGITS = {1: (1, 1), 2: (2, 1), 3: (2, 2), 4: (3, 2), 5: (3, 3), 6: (4, 4)}


def _multiplication(rng: random.Random, level: int) -> Item:
    left, right = _PRODUCT_DIGITS[level]
    a, b = _digits(rng, left), _digits(rng, right)
    return Item(f"What is {a} * {b}?", str(a * b), "numeric")


CAPITALS: dict[int, dict[str, str]] = {
    1: {
        "France": "Paris", "Japan": "Tokyo", "Germany": "Berlin", "Spain": "Madrid",
        "the United Kingdom": "London", "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo",
        "Greece": "Athens", "Ireland": "Dublin", "Portugal": "Lisbon", "Norway": "Oslo",
        "Austria": "Vienna", "Mexico": "Mexico City", "Denmark": "Copenhagen",
    },
    2: {
        "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasília", "Turkey": "Ankara",
        "Switzerland": "Bern", "Argentina": "Buenos Aires", "Kenya": "Nairobi", "Poland": "Warsaw",
        "Sweden": "Stockholm", "Finland": "Helsinki", "Thailand": "Bangkok", "Peru": "Lima",
        "Hungary": "Budapest", "South Korea": "Seoul", "Vietnam": "Hanoi", "India": "New Delhi",
    },
    3: {
        "Burkina Faso": "Ouagadougou", "Kyrgyzstan": "Bishkek", "Bhutan": "Thimphu", "Eritrea": "Asmara",
        "Suriname": "Paramaribo", "Tajikistan": "Dushanbe", "Vanuatu": "Port Vila", "Lesotho": "Maseru",
        "Moldova": "Chișinău", "Palau": "Ngerulmud", "Malawi": "Lilongwe", "Turkmenistan": "Ashgabat",
        "Comoros": "Moroni", "Mauritania": "Nouakchott", "Laos": "Vientiane", "Tuvalu": "Funafuti",
    },
}
"""Country -> capital by difficulty. Italy is left out: the node's few-shot demonstrations ask for it."""


def _capitals(rng: random.Random, level: int) -> Item:
    country = rng.choice(sorted(CAPITALS[level]))
    return Item(f"What is the capital of {country}?", CAPITALS[level][country], "contains")


WORDS: dict[int, tuple[str, ...]] = {
    1: ("cat", "tree", "apple", "moon", "hello", "book", "river", "sheep", "paper", "green", "letter", "coffee"),
    2: ("banana", "strawberry", "balloon", "mississippi", "committee", "bookkeeper", "parallel",
        "occurrence", "assessment", "tomorrow", "successful", "butterfly"),
    3: ("accommodation", "independence", "possessiveness", "onomatopoeia", "bookkeeping",
        "embarrassment", "entrepreneurship", "disappointment", "unconditionally", "supercalifragilistic"),
}
_LETTER_STRING_LENGTH = (14, 20)


def _letters(rng: random.Random, level: int) -> Item:
    if level <= len(WORDS):
        word = rng.choice(WORDS[level])
    else:  # random strings over a few letters: no memorised spelling helps
        alphabet = rng.sample(string.ascii_lowercase, 4)
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(*_LETTER_STRING_LENGTH)))
    present = sorted(set(word))
    absent = sorted(set(string.ascii_lowercase) - set(word))
    letter = rng.choice(present) if rng.random() < 0.85 or not absent else rng.choice(absent)
    question = f'How many times does the letter "{letter}" appear in "{word}"?'
    return Item(question, str(word.count(letter)), "numeric")


def _comparison(rng: random.Random, level: int) -> Item:
    if level == 1:
        a, b = rng.sample(range(10), 2)
        pair = (str(a), str(b))
    elif level == 2:
        a, b = rng.sample(range(10, 100), 2)
        pair = (str(a), str(b))
    elif level == 3:  # same leading digits: only the tail decides
        head = _digits(rng, 2) * 100
        a, b = rng.sample(range(100), 2)
        pair = (str(head + a), str(head + b))
    else:  # 9.11 vs 9.9: fewer decimals can be the larger number
        whole, short, long_tail = rng.randint(1, 20), rng.randint(2, 9), rng.randint(10, 99)
        while long_tail // 10 == short:
            long_tail = rng.randint(10, 99)
        pair = (f"{whole}.{short}", f"{whole}.{long_tail}")
    if rng.random() < 0.5:
        pair = pair[::-1]
    larger = max(range(2), key=lambda i: float(pair[i]))
    return Item("Which number is larger?", "AB"[larger], "choice", choices=pair)


FACTS: dict[int, dict[str, tuple[str, str]]] = {
    1: {
        "How many legs does a dog have?": ("4", "numeric"), "What color is the sky on a clear day?": ("blue", "contains"),
        "What do bees make?": ("honey", "contains"), "Which animal says moo?": ("cow", "contains"),
        "What is frozen water called?": ("ice", "contains"), "How many hours are in a day?": ("24", "numeric"),
        "What color is grass?": ("green", "contains"), "How many months are in a year?": ("12", "numeric"),
        "What planet do we live on?": ("Earth", "contains"), "What color is a ripe banana?": ("yellow", "contains"),
        "How many sides does a triangle have?": ("3", "numeric"),
        "What color is snow?": ("white", "contains"), "How many wheels does a bicycle have?": ("2", "numeric"),
        "What do cows drink?": ("water", "contains"),
    },
    2: {
        "Who wrote Romeo and Juliet?": ("Shakespeare", "contains"), "What is the chemical symbol for gold?": ("Au", "contains"),
        "How many continents are there?": ("7", "numeric"), "What is the largest planet in the solar system?": ("Jupiter", "contains"),
        "What is the tallest mountain in the world?": ("Everest", "contains"), "How many legs does a spider have?": ("8", "numeric"),
        "What is the hardest natural substance?": ("diamond", "contains"), "What is the currency of Japan?": ("yen", "contains"),
        "What language is spoken in Brazil?": ("Portuguese", "contains"), "What is the smallest prime number?": ("2", "numeric"),
        "At what temperature in Celsius does water boil at sea level?": ("100", "numeric"),
        "Which planet is known as the Red Planet?": ("Mars", "contains"), "What is the largest ocean on Earth?": ("Pacific", "contains"),
        "How many minutes are in an hour?": ("60", "numeric"), "What gas do humans need to breathe to live?": ("oxygen", "contains"),
        "On which continent is Egypt?": ("Africa", "contains"), "How many strings does a standard guitar have?": ("6", "numeric"),
    },
}
"""Question -> (answer, grader) by difficulty: facts nearly every small chat model knows, then school
facts. The node's demonstrations (days in a week) and the opposites are left out."""


def _facts(rng: random.Random, level: int) -> Item:
    question = rng.choice(sorted(FACTS[level]))
    answer, grader = FACTS[level][question]
    return Item(question, answer, grader)


OPPOSITES: dict[int, dict[str, str]] = {
    1: {"hot": "cold", "up": "down", "big": "small", "day": "night", "yes": "no", "fast": "slow", "happy": "sad",
        "black": "white", "left": "right", "wet": "dry", "full": "empty", "open": "closed", "light": "dark", "win": "lose",
        "in": "out", "old": "young", "hard": "soft", "rich": "poor"},
    2: {"ancient": "modern", "generous": "stingy", "expand": "contract", "victory": "defeat", "optimist": "pessimist",
        "scarce": "abundant", "arrive": "depart", "ascend": "descend", "permanent": "temporary", "maximum": "minimum",
        "visible": "invisible", "include": "exclude", "majority": "minority", "accept": "reject", "artificial": "natural",
        "horizontal": "vertical"},
}
"""Word -> its usual opposite by difficulty: everyday words, then longer ones."""


def _opposites(rng: random.Random, level: int) -> Item:
    word = rng.choice(sorted(OPPOSITES[level]))
    return Item(f"What is the opposite of {word}?", OPPOSITES[level][word], "contains")


COPY_WORDS = ("apple", "river", "window", "garden", "yellow", "pencil", "rabbit", "castle", "summer", "orange",
              "silver", "forest", "bridge", "candle", "planet", "guitar", "doctor", "button", "jacket", "pillow")


def _copy(rng: random.Random, level: int) -> Item:
    if level == 1:
        word = rng.choice(COPY_WORDS)
        return Item(f"Repeat this word exactly: {word}", word, "contains")
    words = " ".join(rng.sample(COPY_WORDS, 2))
    return Item(f"Repeat these two words exactly: {words}", words, "contains")


KINDS: dict[str, SyntheticKind] = {
    "addition": SyntheticKind(6, _addition, lambda level: 81 if level == 1 else None),
    "multiplication": SyntheticKind(6, _multiplication, lambda level: 81 if level == 1 else None),
    "capitals": SyntheticKind(len(CAPITALS), _capitals, lambda level: len(CAPITALS[level])),
    "letters": SyntheticKind(len(WORDS) + 1, _letters),
    "comparison": SyntheticKind(4, _comparison, lambda level: 45 if level == 1 else None),
    "facts": SyntheticKind(len(FACTS), _facts, lambda level: len(FACTS[level])),
    "opposites": SyntheticKind(len(OPPOSITES), _opposites, lambda level: len(OPPOSITES[level])),
    "copy": SyntheticKind(2, _copy, lambda level: len(COPY_WORDS) if level == 1 else None),
}
"""Generators by name; ``pool`` bounds how many distinct items a level can give."""

_ATTEMPTS_PER_ROW = 50


def synthetic_tasks(
    kinds: Sequence[str] | None = None, per_level: int = 20, seed: int = 0, max_level: int | None = None
) -> list[Task]:
    """``per_level`` distinct tasks for every level (up to ``max_level``) of every kind (default all).

    The same arguments always give the same tasks. A level with fewer distinct items than
    ``per_level`` (capitals, one-digit sums) gives all it has.
    """
    names = list(kinds) if kinds is not None else list(KINDS)
    unknown = [name for name in names if name not in KINDS]
    if unknown:
        raise ValueError(f"unknown synthetic kinds {unknown}; choose from {', '.join(KINDS)}")
    if per_level < 1:
        raise ValueError("per_level must be at least 1")
    tasks: list[Task] = []
    for name in names:
        kind = KINDS[name]
        for level in range(1, min(kind.levels, max_level or kind.levels) + 1):
            rng = random.Random(f"{seed}/{name}/{level}")  # str seeds hash stably across processes
            wanted = min(per_level, kind.pool(level) or per_level)
            seen: set[tuple[str, tuple[str, ...] | None]] = set()
            for _ in range(wanted * _ATTEMPTS_PER_ROW):
                if len(seen) == wanted:
                    break
                item = kind.draw(rng, level)
                key = (item.question, item.choices and tuple(sorted(item.choices)))
                if key in seen:
                    continue
                seen.add(key)
                tasks.append(
                    Task(
                        id=f"{name}-{level}-{len(seen):04d}",
                        question=item.question,
                        answer=item.answer,
                        task=item.task,
                        choices=item.choices,
                        difficulty=level,
                        meta={"generator": name},
                    )
                )
    return tasks


def write_synthetic(
    path: str | Path, kinds: Sequence[str] | None = None, per_level: int = 20, seed: int = 0, max_level: int | None = None
) -> Path:
    """Generate synthetic tasks (see ``synthetic_tasks``) and write them as task JSONL to ``path``."""
    return write_tasks(synthetic_tasks(kinds, per_level, seed, max_level), path)
