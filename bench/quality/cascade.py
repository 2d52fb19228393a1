"""A FrugalGPT-style cascade: tiers answer cheapest first; a learned scorer reads (question, answer)
and the answer is returned when its score clears the tier's threshold for alpha (thresholds chosen
on the val split by utility). Every tier asked spends its compute; the scorer's time counts."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from disrouter.mesh.objective import system_utility
from disrouter.training.tasks import Task

from .centralized import CorrectnessModel, correctness_matrix
from .embed import Embedder
from .labels import Labels
from .metrics import Outcome
from .preset import Tier
from .queries import question_text

THRESHOLDS = (*np.round(np.linspace(0.0, 1.0, 11), 2), 1.01)
"""Candidate thresholds per tier (1.01: never accept this tier's answer)."""


def answer_text(task: Task, output: str) -> str:
    """What the scorer reads: the question and one tier's answer."""
    return f"{question_text(task)}\nAnswer: {output}"


def scorer_inputs(vectors: np.ndarray, tier_index: int, tiers: int) -> np.ndarray:
    """Answer embeddings with a one-hot of the tier that wrote them (the scorer is shared by all tiers)."""
    onehot = np.zeros((len(vectors), tiers), dtype=np.float32)
    onehot[:, tier_index] = 1.0
    return np.concatenate([vectors, onehot], axis=1)


class AnswerScores:
    """Scorer outputs (n x tiers) on one split, and the ms one score takes (embedding one answer included)."""

    def __init__(self, scorer: CorrectnessModel, embedder: Embedder, tasks: Sequence[Task], labels: Labels, tiers: Sequence[Tier]) -> None:
        columns, texts = [], []
        for index, tier in enumerate(tiers):
            texts = [answer_text(task, labels[tier.key][task.id].output) for task in tasks]
            columns.append(scorer.predict(scorer_inputs(embedder.encode(texts), index, len(tiers)))[:, 0])
        self.scores = np.stack(columns, axis=1)
        self.ms = embedder.single_ms(texts)


def train_scorer(scorer: CorrectnessModel, embedder: Embedder, tasks: Sequence[Task], labels: Labels, tiers: Sequence[Tier]) -> CorrectnessModel:
    """Fit the scorer on every tier's answers to the training queries, labelled correct or not."""
    xs, ys = [], []
    for index, tier in enumerate(tiers):
        vectors = embedder.encode([answer_text(task, labels[tier.key][task.id].output) for task in tasks])
        xs.append(scorer_inputs(vectors, index, len(tiers)))
        ys.append([[labels[tier.key][task.id].correct] for task in tasks])
    return scorer.fit(np.concatenate(xs), np.concatenate(ys).astype(np.float32))


def stops(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Per query, the first column whose score clears its threshold; the last column always answers."""
    cleared = np.concatenate([scores[:, :-1] >= np.asarray(thresholds)[None, :], np.ones((len(scores), 1), bool)], axis=1)
    return np.argmax(cleared, axis=1)


def choose_thresholds(scores: np.ndarray, correct: np.ndarray, costs: Sequence[float], alpha: float) -> tuple[float, ...]:
    """The thresholds (one per tier but the last) with the best utility on these (val) queries."""
    best, best_utility = (), -np.inf
    for thresholds in itertools.product(THRESHOLDS, repeat=scores.shape[1] - 1):
        stop = stops(scores, thresholds)
        accuracy = correct[np.arange(len(stop)), stop].mean()
        value = system_utility(float(accuracy), float(np.asarray(costs)[stop].mean()), alpha)
        if value > best_utility + 1e-12:
            best, best_utility = thresholds, value
    return tuple(float(t) for t in best)


def run_cascade(tasks: Sequence[Task], scores: AnswerScores, labels: Labels, tiers: Sequence[Tier], pool: Sequence[Tier], thresholds: Sequence[float]) -> list[Outcome]:
    """Walk the pool's tiers per query until a score clears its threshold."""
    columns = [tiers.index(tier) for tier in pool]
    stop = stops(scores.scores[:, columns], thresholds)
    outcomes = []
    for task, k in zip(tasks, stop):
        asked = pool[: k + 1]
        label = labels[asked[-1].key][task.id]
        latency = sum(labels[t.key][task.id].ms for t in asked) + scores.ms * min(k + 1, len(pool) - 1)
        outcomes.append(Outcome(task.id, label.correct, asked[-1].key, asked[-1].cost, sum(t.cost for t in asked), latency, len(asked)))
    return outcomes


def val_thresholds(scores: AnswerScores, tasks: Sequence[Task], labels: Labels, tiers: Sequence[Tier], pool: Sequence[Tier], alpha: float) -> tuple[float, ...]:
    """Thresholds for ``pool`` at ``alpha``, chosen on the val split's scores."""
    columns = [tiers.index(tier) for tier in pool]
    correct = correctness_matrix(tasks, labels, pool)
    return choose_thresholds(scores.scores[:, columns], correct, [t.cost for t in pool], alpha)
