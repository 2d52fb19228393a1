"""Routers that need no training, computed from the tiers' correctness labels: oracle, smallest, largest, random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from disrouter.training.tasks import Task

from .labels import Labels
from .metrics import Outcome
from .preset import Tier


def answered_by(query_id: str, tier: Tier, labels: Labels, *, spent: float = 0.0, waited_ms: float = 0.0, hops: int = 1) -> Outcome:
    """The outcome when ``tier``'s labelled answer is returned, after ``spent`` cost and ``waited_ms`` elsewhere."""
    label = labels[tier.key][query_id]
    return Outcome(query_id, label.correct, tier.key, tier.cost, tier.cost + spent, label.ms + waited_ms, hops)


def oracle(tasks: Sequence[Task], labels: Labels, pool: Sequence[Tier]) -> list[Outcome]:
    """The cheapest tier that answers correctly (the cheapest tier when none does)."""
    def pick(task: Task) -> Tier:
        return next((tier for tier in pool if labels[tier.key][task.id].correct), pool[0])

    return [answered_by(task.id, pick(task), labels) for task in tasks]


def fixed(tasks: Sequence[Task], labels: Labels, tier: Tier) -> list[Outcome]:
    """Every query to one tier (smallest only, largest only)."""
    return [answered_by(task.id, tier, labels) for task in tasks]


def random_tier(tasks: Sequence[Task], labels: Labels, pool: Sequence[Tier], seed: int) -> list[Outcome]:
    """Each query to a tier drawn uniformly (seeded, so every alpha sees the same draws)."""
    rng = random.Random(seed)
    return [answered_by(task.id, rng.choice(list(pool)), labels) for task in tasks]


def oracle_frontier(tasks: Sequence[Task], labels: Labels, pool: Sequence[Tier], steps: int = 201) -> list[tuple[float, float]]:
    """The best accuracy reachable at each mean cost, knowing every tier's correctness: per query the
    tier maximising correct - lam * cost, for lam swept from 0 to 10 (points of (cost, accuracy))."""
    points = set()
    for step in range(steps):
        lam = 10.0 * step / (steps - 1)
        picks = [max(pool, key=lambda t: (labels[t.key][task.id].correct - lam * t.cost, -t.cost)) for task in tasks]
        accuracy = sum(labels[t.key][task.id].correct for t, task in zip(picks, tasks)) / len(tasks)
        points.add((round(sum(t.cost for t in picks) / len(tasks), 6), round(accuracy, 6)))
    return sorted(points)
