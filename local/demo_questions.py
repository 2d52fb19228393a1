"""The demo's questions, each with its known answer: the model family's own test questions when the
topology serves the family, general knowledge (for SmolLM2) otherwise."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import disrouter.training
from disrouter.mesh.topology import Topology
from disrouter.node.backends.sources import FAMILY_PREFIX
from disrouter.training.tasks import Task, load_tasks

FAMILY_TEST = Path(disrouter.training.__file__).parent / "family" / "weights" / "data" / "sa-test.jsonl"
"""The family's in-domain test split (sa-test): no tier was trained on it."""
FAMILY_COUNT, FAMILY_SEED = 10, 0
"""How many sa-test questions the demo asks, and the seed that picks them (every relation and an addition)."""

# Shaped like none of the few-shot demonstrations in node/prompts.py (a product of big numbers, a
# capital, a sports winner, a "how many"), so a rejection is the model's own and not a copied pattern.
GENERAL = [
    Task(id="red-planet", question="Which planet is known as the Red Planet?", answer="Mars", task="contains"),
    Task(id="gold", question="What is the chemical symbol for gold?", answer="Au", task="contains"),
    Task(id="mona-lisa", question="Who painted the Mona Lisa?", answer="Leonardo", task="contains"),
    Task(id="romeo", question="Who wrote Romeo and Juliet?", answer="Shakespeare", task="contains"),
    Task(id="chancellor", question="Who was the first Chancellor of the German Empire?", answer="Bismarck", task="contains"),
    Task(id="berlin-wall", question="In which year did the Berlin Wall fall?", answer="1989", task="numeric"),
]


@dataclass(frozen=True)
class QuestionSet:
    """What the demo asks and how long an answer may be."""

    name: str
    tasks: list[Task]
    max_tokens: int


def serves_family(topology: Topology) -> bool:
    """Whether every tier of ``topology`` serves a model of the committed family (``family-...``)."""
    return all(entry.model.lower().startswith(FAMILY_PREFIX) for entry in topology.models)


def family_questions(count: int = FAMILY_COUNT, seed: int = FAMILY_SEED) -> list[Task]:
    """A seeded sample of the family's sa-test questions, in file order."""
    tasks = load_tasks(FAMILY_TEST)
    keep = set(random.Random(seed).sample(range(len(tasks)), min(count, len(tasks))))
    return [task for i, task in enumerate(tasks) if i in keep]


def questions_for(topology: Topology) -> QuestionSet:
    """The family's test questions (answers of a few tokens) for the family, else general knowledge."""
    if serves_family(topology):
        return QuestionSet("the model family's sa-test split", family_questions(), max_tokens=16)
    return QuestionSet("general knowledge", GENERAL, max_tokens=48)
