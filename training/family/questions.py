"""Questions about the world and arithmetic, and the splits built from them.

Splits (every one a task file in the project's format, see ``disrouter.training.tasks``):

- ``corpus``: pretraining examples. Each person fact ``exposure`` times per pass, phrased with
  one of the trained phrasings drawn at random; every city's country; and additions.
- ``sa``: self-awareness queries (in-domain): one per one-hop fact (a trained phrasing) and
  additions of 1-5 digits never in the corpus. Their ``split`` (train / val / test) is the one
  ``disrouter.training.splits.split_of`` gives their id, so ``disrouter train`` splits them the same.
- ``ood``: out-of-domain test: the two-hop family (the country a person lives in), held-out
  phrasings of one-hop facts and of additions; none of it in ``sa``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..splits import Split, split_of
from ..tasks import Task
from .world import PERSON_RELATIONS, TWO_HOP, Fact, World

PHRASINGS: dict[str, tuple[str, ...]] = {
    "city": ("Where does {s} live?", "In which city does {s} live?", "What is the home city of {s}?", "Which city is home to {s}?"),
    "job": ("What is the job of {s}?", "What does {s} do for a living?", "What work does {s} do?", "Which trade does {s} follow?"),
    "colour": ("What is the favourite colour of {s}?", "Which colour does {s} like best?", "What colour does {s} love?", "Name the colour {s} prefers."),
    "year": ("In which year was {s} born?", "What is the birth year of {s}?", "When was {s} born?", "Give the year of birth of {s}."),
    TWO_HOP: ("In which country does {s} live?", "Which country is {s} living in?", "What country is home to {s}?", "Name the country where {s} lives."),
    "in_country": ("In which country is {s}?", "Which country is {s} in?", "What country contains {s}?", "Name the country of {s}."),
    "add": ("What is {a} + {b}?", "Compute {a} + {b}.", "What is the sum of {a} and {b}?", "Add {a} to {b}. What do you get?"),
}
"""Question templates per relation: all but the last are trained; the last is held out (OOD)."""
HELD_OUT = -1
ADD_LEVELS = (1, 2, 3, 4, 5)

GRADER = {"city": "exact", "job": "exact", "colour": "exact", "year": "numeric", TWO_HOP: "exact", "in_country": "exact", "add": "numeric"}


def trained_phrasings(relation: str) -> tuple[str, ...]:
    return PHRASINGS[relation][:HELD_OUT]


@dataclass(frozen=True)
class QA:
    """One question and its answer, with the labels reports group by."""

    question: str
    answer: str
    family: str  # fact | add | two_hop
    relation: str
    level: int  # digits for additions, 1 for facts
    exposure: int  # copies per corpus pass (0: never in the corpus)


def fact_qa(fact: Fact, template: str) -> QA:
    family = "two_hop" if fact.relation == TWO_HOP else "fact"
    return QA(template.format(s=fact.subject), fact.answer, family, fact.relation, 1, fact.exposure)


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def add_qa(rng: random.Random, digits: int, template: str) -> QA:
    a, b = _operand(rng, digits), _operand(rng, digits)
    return QA(template.format(a=a, b=b), str(a + b), "add", "add", digits, 0)


def corpus_examples(world: World, additions_per_level: dict[int, int], seed: int, exclude: set[str]) -> list[QA]:
    """One pass of the pretraining corpus, shuffled; additions whose sum is written as in
    ``exclude`` (evaluation sums, "a+b") are left out from two digits up."""
    rng = random.Random(f"corpus/{seed}")
    rows: list[QA] = []
    for fact in (*world.facts, *world.base_facts):
        rows += [fact_qa(fact, rng.choice(trained_phrasings(fact.relation))) for _ in range(fact.exposure)]
    for level, count in additions_per_level.items():
        added = 0
        while added < count:
            qa = add_qa(rng, level, rng.choice(trained_phrasings("add")))
            if level > 1 and sum_key(qa.question) in exclude:
                continue
            rows.append(qa)
            added += 1
    rng.shuffle(rows)
    return rows


_OPERANDS = re.compile(r"\d+")


def sum_key(question: str) -> str:
    """The operands of an addition question, "a+b", whatever the phrasing."""
    return "+".join(_OPERANDS.findall(question))


def to_task(qa: QA, task_id: str, split: str | None = None) -> Task:
    meta = {"family": qa.family, "relation": qa.relation, "exposure": qa.exposure}
    if split is not None:
        meta["split"] = split
    return Task(id=task_id, question=qa.question, answer=qa.answer, task=GRADER[qa.relation], difficulty=qa.level, meta=meta)


def sa_tasks(world: World, additions: dict[int, int], seed: int, fractions: dict[Split, float]) -> list[Task]:
    """In-domain self-awareness queries: one per one-hop fact, plus ``additions[digits]`` fresh additions, each labelled
    with the split ``split_of`` assigns its id (the split ``disrouter train`` will use)."""
    rng = random.Random(f"sa/{seed}")
    rows = [(f"fact-{f.relation}-{i:04d}", fact_qa(f, rng.choice(trained_phrasings(f.relation))))
            for i, f in enumerate(world.facts) if f.relation in PERSON_RELATIONS]
    seen: set[str] = set()
    for level, count in sorted(additions.items()):
        rows += [(f"add-{level}-{i:04d}", qa) for i, qa in enumerate(_unique_sums(rng, level, count, trained_phrasings("add"), seen))]
    return [to_task(qa, task_id, split_of(task_id, fractions, seed)) for task_id, qa in rows]


def ood_tasks(world: World, per_family: int, seed: int, exclude: list[Task] = ()) -> list[Task]:  # type: ignore[assignment]
    """Out-of-domain test queries: two-hop facts, held-out phrasings of facts and of additions
    (sums not among ``exclude``'s)."""
    rng = random.Random(f"ood/{seed}")
    two_hop = [f for f in world.facts if f.relation == TWO_HOP]
    one_hop = [f for f in world.facts if f.relation in PERSON_RELATIONS]
    tasks = [to_task(fact_qa(f, rng.choice(trained_phrasings(TWO_HOP))), f"ood-twohop-{i:04d}")
             for i, f in enumerate(rng.sample(two_hop, min(per_family, len(two_hop))))]
    for i, f in enumerate(rng.sample(one_hop, min(per_family, len(one_hop)))):
        qa = fact_qa(f, PHRASINGS[f.relation][HELD_OUT])
        tasks.append(to_task(QA(qa.question, qa.answer, "phrasing", qa.relation, 1, qa.exposure), f"ood-phrasing-{i:04d}"))
    seen = {sum_key(t.question) for t in exclude}
    for level in ADD_LEVELS:
        count = per_family // len(ADD_LEVELS) + (level <= per_family % len(ADD_LEVELS))
        for i, qa in enumerate(_unique_sums(rng, level, count, (PHRASINGS["add"][HELD_OUT],), seen)):
            tasks.append(to_task(QA(qa.question, qa.answer, "add_phrasing", "add", level, 0), f"ood-addphrasing-{level}-{i:04d}"))
    return tasks


def _unique_sums(rng: random.Random, level: int, count: int, templates: tuple[str, ...], seen: set[str]) -> list[QA]:
    """``count`` additions of ``level`` digits whose operands are not in ``seen`` (which grows)."""
    rows: list[QA] = []
    for _ in range(count * 50):
        if len(rows) == count:
            break
        qa = add_qa(rng, level, rng.choice(templates))
        if sum_key(qa.question) not in seen:
            seen.add(sum_key(qa.question))
            rows.append(qa)
    return rows
