"""One method's outcomes on one (split, pool, alpha) turned into a results row: accuracy, costs, utility, latency."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from disrouter.mesh.objective import system_utility


@dataclass(frozen=True)
class Outcome:
    """What one method did with one query."""

    query_id: str
    correct: bool
    tier: str | None  # the tier whose answer was returned; None when the query failed
    cost: float  # the paper's: the answering tier's cost
    full_cost: float  # plus the compute spent by tiers that did not answer (rejecting hops, cascade steps)
    latency_ms: float  # decision time included
    hops: int  # tiers that handled the query
    error: str | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation), None for no values."""
    return float(np.percentile(values, q)) if len(values) else None


def summarise(outcomes: Sequence[Outcome], alpha: float, tiers: Sequence[str]) -> dict[str, object]:
    """The row's figures: means over queries, utility = accuracy - alpha * cost (both costs), share answered per tier."""
    n = len(outcomes)
    if n == 0:
        raise ValueError("no outcomes to summarise")
    accuracy = sum(o.correct for o in outcomes) / n
    cost = sum(o.cost for o in outcomes) / n
    full_cost = sum(o.full_cost for o in outcomes) / n
    latencies = [o.latency_ms for o in outcomes]
    return {
        "n": n,
        "accuracy": accuracy,
        "cost": cost,
        "full_cost": full_cost,
        "utility": system_utility(accuracy, cost, alpha),
        "full_utility": system_utility(accuracy, full_cost, alpha),
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p95": percentile(latencies, 95),
        "hops": sum(o.hops for o in outcomes) / n,
        "share_by_tier": {tier: sum(o.tier == tier for o in outcomes) / n for tier in tiers},
        "errors": sum(o.error is not None for o in outcomes),
    }
