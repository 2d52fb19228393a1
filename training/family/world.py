"""A made-up world, deterministic by seed: people with attributes, cities in countries.

Every person has a home city, a job, a favourite colour and a birth year; every city lies in
a country, so "the country a person lives in" composes two facts. Each fact gets an exposure
rank drawn by a random permutation, independent of names and ids, so how often a fact occurs
in the corpus cannot be read from the question's surface.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "pl", "st", "th", "tr", "sh")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ea")
CODAS = ("", "", "n", "r", "l", "s", "k", "m", "th", "x")

JOBS = ("baker", "pilot", "farmer", "doctor", "painter", "sailor", "teacher", "miner", "tailor",
        "singer", "weaver", "potter", "hunter", "guard", "cook", "judge")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown", "grey", "gold")
YEARS = (1800, 1999)

PERSON_RELATIONS = ("city", "job", "colour", "year")
"""One-hop facts about a person (in-domain)."""
TWO_HOP = "country"
"""The country a person lives in: their city's country (a held-out task family, out-of-domain)."""


def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(_syllable(rng) for _ in range(syllables)).capitalize()


def _unique_words(rng: random.Random, count: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = _word(rng, rng.randint(*syllables))
        if word not in taken and 4 <= len(word) <= 10:
            taken.add(word)
            words.append(word)
    return words


@dataclass(frozen=True)
class Fact:
    """One fact: ``subject``'s ``relation`` is ``answer``; ``exposure`` copies per corpus pass."""

    subject: str
    relation: str
    answer: str
    exposure: int

    @property
    def key(self) -> str:
        return f"{self.relation}:{self.subject}"


@dataclass
class World:
    seed: int
    people: list[str]
    cities: dict[str, str]  # city -> country
    attributes: dict[str, dict[str, str]]  # person -> relation -> value
    facts: list[Fact] = field(default_factory=list)  # person facts (one-hop and two-hop), with exposure
    base_facts: list[Fact] = field(default_factory=list)  # city -> country, shown often

    def fact(self, subject: str, relation: str) -> Fact:
        return next(f for f in self.facts if f.subject == subject and f.relation == relation)


def exposure_counts(count: int, top: int, exponent: float, floor: int) -> list[int]:
    """Copies per pass for exposure ranks 1..count: ``max(floor, round(top * rank ** -exponent))``."""
    return [max(floor, round(top * rank ** -exponent)) for rank in range(1, count + 1)]


def build_world(seed: int = 0, people: int = 200, cities: int = 24, countries: int = 8,
                top: int = 64, exponent: float = 1.0, floor: int = 1, city_exposure: int = 40) -> World:
    """The world for ``seed``: ``people`` people, ``cities`` cities in ``countries`` countries,
    and every person fact's exposure drawn from a Zipf-like curve by a random permutation."""
    if people < 2 or cities < 2 or not 2 <= countries <= cities:
        raise ValueError("a world needs at least 2 people, 2 cities and 2 <= countries <= cities")
    rng = random.Random(f"world/{seed}")
    taken: set[str] = set()
    country_names = _unique_words(rng, countries, (2, 3), taken)
    city_names = _unique_words(rng, cities, (2, 3), taken)
    city_country = {city: country_names[i % countries] for i, city in enumerate(city_names)}
    firsts = _unique_words(rng, people, (1, 2), set(taken))
    lasts = _unique_words(rng, people, (2, 2), set(taken))
    rng.shuffle(lasts)
    names = [f"{first} {last}" for first, last in zip(firsts, lasts)]
    attributes = {
        name: {
            "city": rng.choice(city_names),
            "job": rng.choice(JOBS),
            "colour": rng.choice(COLOURS),
            "year": str(rng.randint(*YEARS)),
        }
        for name in names
    }
    for values in attributes.values():
        values[TWO_HOP] = city_country[values["city"]]
    keys = [(name, relation) for name in names for relation in (*PERSON_RELATIONS, TWO_HOP)]
    order = list(range(len(keys)))
    random.Random(f"exposure/{seed}").shuffle(order)  # rank of keys[i] is order[i] + 1
    counts = exposure_counts(len(keys), top, exponent, floor)
    facts = [Fact(name, relation, attributes[name][relation], counts[order[i]]) for i, (name, relation) in enumerate(keys)]
    base = [Fact(city, "in_country", country, city_exposure) for city, country in city_country.items()]
    return World(seed, names, city_country, attributes, facts, base)
