"""Training tasks: the JSONL task format, its strict loader, and converters from GSM8K, MMLU and ARC.

One task per line, a JSON object with these keys:

- ``id`` (string, unique in the file): names the query in every later stage (probe, SFT, RL, eval).
- ``question`` (string) *or* ``messages`` (a chat: ``[{"role": "system"|"user"|"assistant",
  "content": ...}]`` ending with a user turn): what the model is asked. Exactly one of the two.
- ``answer`` (string): the reference answer. For ``task: numeric`` a number (``"42"``,
  ``"-3.5"``, ``"1,234"``); for ``task: choice`` a letter (``"B"``).
- ``task`` (string): the grader that judges outputs: ``numeric``, ``choice``, ``exact`` or
  ``contains`` (see ``disrouter.training.graders``).
- ``choices`` (optional list of strings): the options of a multiple-choice question, shown to the
  model as ``A. ...``, ``B. ...`` after the question; the answer letter must name one of them.
- ``difficulty`` (optional integer >= 1) and ``meta`` (optional object): labels kept for reports.

Example: ``{"id": "add-1", "question": "What is 2 + 3?", "answer": "5", "task": "numeric"}``.
A file with bad rows is refused as a whole, with every bad row's line number and reason.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .graders import GRADERS, UNLISTED_CHOICES, parse_number

LETTERS = string.ascii_uppercase
CHOICE_INSTRUCTION = "Answer with the letter of the correct option."
MAX_LISTED_PROBLEMS = 20


class TaskFileError(Exception):
    """A task file with unusable rows; ``problems`` holds every ``(line number, reason)``."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]) -> None:
        self.path = path
        self.problems = problems
        listed = [f"  line {line}: {reason}" for line, reason in problems[:MAX_LISTED_PROBLEMS]]
        more = len(problems) - MAX_LISTED_PROBLEMS
        if more > 0:
            listed.append(f"  ... and {more} more bad rows")
        noun = "row" if len(problems) == 1 else "rows"
        super().__init__(f"{path}: {len(problems)} bad {noun}:\n" + "\n".join(listed))


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class Task(BaseModel):
    """One query with its reference answer and the grader that judges outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    question: str | None = None
    messages: tuple[ChatTurn, ...] | None = None
    answer: str
    task: str
    choices: tuple[str, ...] | None = None
    difficulty: int | None = Field(default=None, ge=1)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("answer", mode="before")
    @classmethod
    def _number_as_text(cls, value: object) -> object:
        """Accept ``"answer": 42`` as ``"42"``."""
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> Task:
        if (self.question is None) == (self.messages is None):
            raise ValueError("give exactly one of 'question' and 'messages'")
        if self.question is not None and not self.question.strip():
            raise ValueError("'question' is empty")
        if self.messages is not None and (not self.messages or self.messages[-1].role != "user"):
            raise ValueError("'messages' must end with a user turn")
        if self.task not in GRADERS:
            raise ValueError(f"unknown task {self.task!r}; choose from {', '.join(sorted(GRADERS))}")
        if not self.answer.strip():
            raise ValueError("'answer' is empty")
        if self.choices is not None and not 2 <= len(self.choices) <= len(LETTERS):
            raise ValueError(f"'choices' needs 2 to {len(LETTERS)} options")
        if self.task == "numeric" and parse_number(self.answer) is None:
            raise ValueError(f"answer {self.answer!r} of a numeric task is not a number")
        if self.task == "choice":
            letter = self.answer.strip().upper()
            count = len(self.choices) if self.choices is not None else UNLISTED_CHOICES
            if len(letter) != 1 or letter not in LETTERS[:count]:
                raise ValueError(f"answer {self.answer!r} of a choice task is not one of the letters {LETTERS[0]}..{LETTERS[count - 1]}")
        return self

    def prompt_messages(self) -> list[dict[str, str]]:
        """The chat that asks this task: the user's question (with lettered choices), no scenario.

        Every stage builds its prompt from this, so probe, SFT, RL and eval ask the same question.
        """
        if self.messages is not None:
            turns = [turn.model_dump() for turn in self.messages]
            if self.choices:
                turns[-1]["content"] = _with_choices(turns[-1]["content"], self.choices)
            return turns
        assert self.question is not None
        content = _with_choices(self.question, self.choices) if self.choices else self.question
        return [{"role": "user", "content": content}]


def _with_choices(question: str, choices: Iterable[str]) -> str:
    options = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(choices))
    return f"{question}\n\n{options}\n\n{CHOICE_INSTRUCTION}"


# --- reading JSONL ------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any | Exception]]:
    """``(line number, parsed object or the JSON error)`` for every non-blank line of ``path``."""
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, exc


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


Converter = Callable[[dict[str, Any]], Task]
"""Turns one parsed row into a Task; raises ValueError, KeyError or ValidationError on a bad row."""


def _load(path: str | Path, convert: Converter, dedupe: bool = False) -> list[Task]:
    """Convert every row; collect bad rows; ``dedupe`` suffixes repeated ids instead of refusing them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    tasks: list[Task] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for number, row in read_jsonl(path):
        if isinstance(row, Exception):
            problems.append((number, f"not valid JSON ({row.msg})"))
            continue
        if not isinstance(row, dict):
            problems.append((number, f"expected a JSON object, got {type(row).__name__}"))
            continue
        try:
            task = convert(row)
        except ValidationError as exc:
            problems.append((number, _validation_reason(exc)))
            continue
        except (ValueError, KeyError, TypeError) as exc:
            problems.append((number, _reason(exc)))
            continue
        if task.id in seen and dedupe:
            suffix = 2
            while f"{task.id}-{suffix}" in seen:
                suffix += 1
            task = task.model_copy(update={"id": f"{task.id}-{suffix}"})
        if task.id in seen:
            problems.append((number, f"duplicate id {task.id!r} (first on line {seen[task.id]})"))
            continue
        seen[task.id] = number
        tasks.append(task)
    if problems:
        raise TaskFileError(path, problems)
    return tasks


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}"
    return str(exc)


def load_tasks(path: str | Path) -> list[Task]:
    """Tasks from a file in the task format; raises TaskFileError listing every bad row."""
    return _load(path, Task.model_validate)


def write_tasks(tasks: Iterable[Task], path: str | Path) -> Path:
    """Write tasks as JSONL (unset optional keys left out) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for task in tasks:
            handle.write(task.model_dump_json(exclude_none=True, exclude_defaults=True) + "\n")
    return path


# --- converters from public benchmark layouts ---------------------------------------------------


def _text(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string")
    return value.strip()


def _content_id(prefix: str, row: dict[str, Any], *parts: object) -> str:
    """The row's own ``id`` when it has one, else a stable hash of its content."""
    given = row.get("id")
    if isinstance(given, (str, int)) and str(given).strip():
        return f"{prefix}-{given}"
    digest = hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def _gsm8k(row: dict[str, Any]) -> Task:
    question, solution = _text(row, "question"), _text(row, "answer")
    match = _GSM8K_FINAL.search(solution)
    if match is None:
        raise ValueError("'answer' has no final '#### <number>' line")
    value = parse_number(match.group(1))
    if value is None:
        raise ValueError(f"final answer {match.group(1)!r} is not a number")
    return Task(
        id=_content_id("gsm8k", row, question),
        question=question,
        answer=match.group(1).replace(",", "").replace("$", "").strip(),
        task="numeric",
        meta={"source": "gsm8k"},
    )


def _letter(answer: object, count: int, labels: list[str] | None = None) -> str:
    """The letter for an answer given as an index, a letter, or one of ``labels``."""
    if isinstance(answer, bool):
        raise ValueError(f"answer {answer!r} is neither an index nor a letter")
    if labels is not None and str(answer).strip() in labels:
        return LETTERS[labels.index(str(answer).strip())]
    if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit()):
        index = int(answer)
        if not 0 <= index < count:
            raise ValueError(f"answer index {index} is outside the {count} choices")
        return LETTERS[index]
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS[:count]:
        return answer.strip().upper()
    raise ValueError(f"answer {answer!r} is neither an index nor a letter of the {count} choices")


def _choice_texts(values: object) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, (str, int, float)) for v in values):
        raise ValueError("'choices' must be a list of strings")
    return [str(v).strip() for v in values]


def _mmlu(row: dict[str, Any]) -> Task:
    question = _text(row, "question")
    choices = _choice_texts(row["choices"])
    meta = {"source": "mmlu"} | ({"subject": row["subject"]} if isinstance(row.get("subject"), str) else {})
    return Task(
        id=_content_id("mmlu", row, question, choices),
        question=question,
        choices=tuple(choices),
        answer=_letter(row["answer"], len(choices)),
        task="choice",
        meta=meta,
    )


def _arc(row: dict[str, Any]) -> Task:
    question, raw_choices = row["question"], row.get("choices")
    if isinstance(question, dict):  # the original ARC layout: {"stem": ..., "choices": [{text, label}]}
        raw_choices = question.get("choices")
        question = question.get("stem")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string (or an object with a 'stem')")
    if isinstance(raw_choices, dict):  # the Hugging Face layout: {"text": [...], "label": [...]}
        texts, labels = _choice_texts(raw_choices.get("text")), _choice_texts(raw_choices.get("label"))
    elif isinstance(raw_choices, list) and all(isinstance(c, dict) for c in raw_choices):
        texts = _choice_texts([c.get("text") for c in raw_choices])
        labels = _choice_texts([c.get("label") for c in raw_choices])
    else:
        raise ValueError("'choices' must be {text: [...], label: [...]} or a list of {text, label}")
    if len(texts) != len(labels):
        raise ValueError(f"'choices' has {len(texts)} texts but {len(labels)} labels")
    key = row["answerKey"]
    if str(key).strip() not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the labels {labels}")
    return Task(
        id=_content_id("arc", row, question.strip(), texts),
        question=question.strip(),
        choices=tuple(texts),
        answer=_letter(key, len(texts), labels),
        task="choice",
        meta={"source": "arc"},
    )


FORMATS: dict[str, Converter] = {
    "tasks": Task.model_validate,
    "gsm8k": _gsm8k,
    "mmlu": _mmlu,
    "arc": _arc,
}
"""Input layouts ``load_task_file`` reads, by name."""


def load_gsm8k(path: str | Path) -> list[Task]:
    """GSM8K-style rows (``question``, ``answer`` ending in ``#### 42``) as numeric tasks."""
    return _load(path, _gsm8k, dedupe=True)


def load_mmlu(path: str | Path) -> list[Task]:
    """MMLU-style rows (``question``, ``choices`` list, ``answer`` index or letter) as choice tasks."""
    return _load(path, _mmlu, dedupe=True)


def load_arc(path: str | Path) -> list[Task]:
    """ARC-style rows (``question``, ``choices`` {text, label}, ``answerKey``) as choice tasks."""
    return _load(path, _arc, dedupe=True)


def load_task_file(path: str | Path, fmt: str = "tasks") -> list[Task]:
    """Tasks from ``path`` read in layout ``fmt`` (one of FORMATS); bad rows raise TaskFileError."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown task file format {fmt!r}; choose from {', '.join(FORMATS)}")
    return _load(path, FORMATS[fmt], dedupe=fmt != "tasks")
