"""Graders, registered by name, that judge a model output against a task's reference answer.

A task's ``task`` field names its grader: ``numeric`` (the final number), ``choice`` (the option
letter), ``exact`` (normalised exact match) or ``contains`` (the normalised answer appears as whole
words). The reject phrase is never a correct answer.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING

from disrouter.node.prompts import is_reject

if TYPE_CHECKING:
    from .tasks import Task

Grader = Callable[[str, "Task"], bool]
"""(model output, task) -> whether the output answers the task correctly."""

GRADERS: dict[str, Grader] = {}


def register(name: str) -> Callable[[Grader], Grader]:
    """Decorator that registers a grader under ``name`` (the value of a task's ``task`` field)."""

    def add(grader: Grader) -> Grader:
        GRADERS[name] = grader
        return grader

    return add


def grade(task: Task, output: str) -> bool:
    """Whether ``output`` answers ``task`` correctly, judged by the grader its ``task`` kind names."""
    grader = GRADERS.get(task.task)
    if grader is None:
        raise ValueError(f"no grader called {task.task!r}; choose from {', '.join(sorted(GRADERS))}")
    if not output.strip() or is_reject(output):
        return False
    return grader(output, task)


# --- numbers ------------------------------------------------------------------------------------

_NUMBER = r"[-+]?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)"
_NUMBER_RE = re.compile(rf"(?<![\w.]){_NUMBER}")
_MARKED_NUMBER_RE = re.compile(
    rf"(?:(?i:final answer|answer)\s*(?:(?i:is|was)|[:=])?\s*[:=]?|####|\\boxed\{{)\s*(?:\*\*)?\s*(?<![\w.])({_NUMBER})"
)
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})


_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_WORD_VALUES = {word: value for value, word in enumerate(_UNITS)} | _TENS | {"once": 1, "twice": 2, "thrice": 3}
_NUMBER_WORD_RE = re.compile(
    rf"\b(?:({'|'.join(_TENS)})[- ]({'|'.join(_UNITS[1:10])})|({'|'.join(_WORD_VALUES)}))\b", re.IGNORECASE
)


def _number_word(match: re.Match[str]) -> float:
    tens, unit, word = (g.lower() if g else g for g in match.groups())
    return float(_TENS[tens] + _WORD_VALUES[unit]) if tens else float(_WORD_VALUES[word])


def parse_number(text: str) -> float | None:
    """The number a whole string spells (``"1,234"``, ``"$5"``, ``"42."``, ``"-3.5"``), else None."""
    cleaned = text.translate(_MINUS_SIGNS).strip().rstrip(".").replace(",", "").replace("$", "").replace(" ", "")
    cleaned = cleaned.removesuffix("%")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def extract_number(output: str) -> float | None:
    """The final answer number in a model output: the last "answer is N" / "#### N" / boxed N,
    else the last number in the text, else the last number word ("twice", "twenty-one")."""
    text = output.translate(_MINUS_SIGNS)
    marked = list(_MARKED_NUMBER_RE.finditer(text))
    if marked:
        return parse_number(marked[-1].group(1))
    numbers = _NUMBER_RE.findall(text)
    if numbers:
        return parse_number(numbers[-1])
    words = list(_NUMBER_WORD_RE.finditer(text))  # "appears twice": only when no digits are written
    return _number_word(words[-1]) if words else None


@register("numeric")
def numeric(output: str, task: Task) -> bool:
    """The output's final number equals the reference (to 1e-6, relative)."""
    got, want = extract_number(output), parse_number(task.answer)
    return got is not None and want is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)


# --- multiple choice ----------------------------------------------------------------------------

UNLISTED_CHOICES = 10
"""Letters (A..J) a choice task may use when its options are written in the question, not listed."""
_MARKED_LETTER_RE = re.compile(
    r"(?i:answer|option|choice)\s*(?:(?i:is)|[:=])?\s*[:=]?\s*(?:\*\*)?\s*(?:\(([A-Za-z])\)|([A-Z])(?![\w']))"
)
_ONLY_LETTER_RE = re.compile(r"^\W*\(?([A-Za-z])\)?\W*$")
_LEADING_LETTER_RE = re.compile(r"^\s*(?:\*\*)?\(?([A-Z])(?:[.):]|\*\*| is\b)(?:\s|$)")
_ENCLOSED_LETTER_RE = re.compile(r"\(([A-Z])\)|\*\*([A-Z])\*\*")
_LONE_LETTER_RE = re.compile(r"(?<![\w'])([A-Z])(?![\w'])(?! [a-z])|(?<![\w'])([B-HJ-Z])(?![\w'])")
"""A capital letter standing alone; "A" and "I" before a lower-case word read as an article or pronoun."""


def extract_choice(output: str, choices: tuple[str, ...] | None = None) -> str | None:
    """The option letter an output picks: "Answer: B", "B", "B. Paris", "(B)", one option's text,
    or the only option letter standing alone in it."""
    valid = string.ascii_uppercase[: len(choices) if choices else UNLISTED_CHOICES]

    def last_valid(matches: list[re.Match[str]]) -> str | None:
        for match in reversed(matches):
            letter = next(g for g in match.groups() if g).upper()
            if letter in valid:
                return letter
        return None

    for pattern in (_MARKED_LETTER_RE, _ONLY_LETTER_RE, _LEADING_LETTER_RE, _ENCLOSED_LETTER_RE):
        letter = last_valid(list(pattern.finditer(output)))
        if letter is not None:
            return letter
    by_text = _choice_by_text(output, choices) if choices else None
    if by_text is not None:
        return by_text
    lone = {next(g for g in m.groups() if g) for m in _LONE_LETTER_RE.finditer(output)} & set(valid)
    return lone.pop() if len(lone) == 1 else None


def _choice_by_text(output: str, choices: tuple[str, ...]) -> str | None:
    """The letter of the one option whose text the output is, or the only one it mentions."""
    said = normalise(output)
    options = [normalise(choice) for choice in choices]
    for index, option in enumerate(options):
        if option and said == option:
            return string.ascii_uppercase[index]
    mentioned = [i for i, option in enumerate(options) if option and f" {option} " in f" {said} "]
    return string.ascii_uppercase[mentioned[0]] if len(mentioned) == 1 else None


@register("choice")
def choice(output: str, task: Task) -> bool:
    """The letter the output picks is the reference letter."""
    return extract_choice(output, task.choices) == task.answer.strip().upper()


# --- text ---------------------------------------------------------------------------------------

_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation + "\u2018\u2019\u201c\u201d")
_MARKED_TEXT_RE = re.compile(r"(?i:answer)\s*(?:(?i:is)|:)\s*(.+)")


def normalise(text: str) -> str:
    """Lower case, no accents, punctuation or articles (a, an, the), single spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES_RE.sub(" ", text).split())


def _answer_spans(output: str) -> list[str]:
    """Parts of an output that may be the whole answer: all of it, its first and last lines,
    and what follows the last "answer is" / "Answer:"."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    spans = [output, lines[0], lines[-1]] if lines else [output]
    marked = list(_MARKED_TEXT_RE.finditer(output))
    if marked:
        spans.append(marked[-1].group(1))
    return spans


@register("exact")
def exact(output: str, task: Task) -> bool:
    """The normalised output (or its marked final answer, or its first or last line) equals the reference."""
    want = normalise(task.answer)
    return any(normalise(span) == want for span in _answer_spans(output))


@register("contains")
def contains(output: str, task: Task) -> bool:
    """The normalised reference appears in the normalised output as whole words."""
    want = normalise(task.answer)
    return bool(want) and f" {want} " in f" {normalise(output)} "
