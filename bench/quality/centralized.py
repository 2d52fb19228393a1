"""Centralized routers (RouteLLM / LLMRouter style): predict each tier's correctness from the query's
MiniLM embedding, then send the query to the tier with the best predicted utility for alpha."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from disrouter.training.tasks import Task

from .baselines import answered_by
from .labels import Labels
from .metrics import Outcome
from .preset import Tier


class CorrectnessModel(ABC):
    """Maps embeddings (n x d) to P(correct) per column of the training targets (n x t)."""

    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray) -> "CorrectnessModel": ...

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray: ...


class KnnModel(CorrectnessModel):
    """Mean correctness of the k most similar training queries (cosine similarity)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def fit(self, x: np.ndarray, y: np.ndarray) -> "KnnModel":
        self.x, self.y = x, y.astype(np.float32)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        k = min(self.k, len(self.x))
        nearest = np.argsort(-(x @ self.x.T), axis=1)[:, :k]
        return self.y[nearest].mean(axis=1)


class MlpModel(CorrectnessModel):
    """A one-hidden-layer network with one sigmoid output per target, trained with binary cross-entropy."""

    def __init__(self, epochs: int, seed: int, hidden: int = 64) -> None:
        self.epochs, self.seed, self.hidden = epochs, seed, hidden

    def fit(self, x: np.ndarray, y: np.ndarray) -> "MlpModel":
        torch.manual_seed(self.seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], self.hidden), torch.nn.ReLU(), torch.nn.Linear(self.hidden, y.shape[1]))
        optimiser = torch.optim.Adam(self.net.parameters(), lr=1e-2, weight_decay=1e-4)
        inputs, targets = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        for _ in range(self.epochs):
            optimiser.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(self.net(inputs), targets).backward()
            optimiser.step()
        return self

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        return torch.sigmoid(self.net(torch.from_numpy(x).float())).numpy()


def correctness_matrix(tasks: Sequence[Task], labels: Labels, tiers: Sequence[Tier]) -> np.ndarray:
    """1/0 per (query, tier)."""
    return np.array([[labels[t.key][task.id].correct for t in tiers] for task in tasks], dtype=np.float32)


def best_utility(predicted: np.ndarray, costs: Sequence[float], alpha: float) -> np.ndarray:
    """Per query, the column with the highest predicted correctness - alpha * cost (cheapest on ties)."""
    return np.argmax(predicted - alpha * np.asarray(costs)[None, :], axis=1)


def route(
    model: CorrectnessModel, tasks: Sequence[Task], vectors: np.ndarray, embed_ms: float,
    labels: Labels, tiers: Sequence[Tier], pool: Sequence[Tier], alpha: float,
) -> list[Outcome]:
    """Send each query to the pool tier with the best predicted utility; embedding and prediction time count as latency."""
    columns = [tiers.index(tier) for tier in pool]
    started = time.perf_counter()
    choice = best_utility(model.predict(vectors)[:, columns], [t.cost for t in pool], alpha)
    predict_ms = (time.perf_counter() - started) * 1000 / max(len(tasks), 1)
    return [answered_by(task.id, pool[int(c)], labels, waited_ms=embed_ms + predict_ms) for task, c in zip(tasks, choice)]
