"""Paired bootstrap over queries: a 95% interval for each row's utility, and for how far DiSRouter's probe
arms are from the best centralized router and from Largest-only on the same queries.

Every method of a (split, pool) is resampled with the same query draws (positions in the list of query
ids, sorted), so a difference between two methods is measured query by query: a query both get right
cancels out instead of adding noise. Utility is ``disrouter.mesh.objective.system_utility`` of the
resampled accuracy and cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from disrouter.mesh.objective import system_utility

from .headline import CENTRALIZED
from .metrics import Outcome

RESAMPLES = 2000
"""Bootstrap resamples of the queries."""
SEED = 0
"""Seed of the query draws: the same draws for every method, every run."""
COMPARED = ("untrained_confidence", "sft_probe", "sftrl_probe")
"""The DiSRouter arms compared against the best centralized router and Largest-only."""
REFERENCE = "largest"
"""The fixed baseline every compared arm also faces."""


def draws(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Resampled query positions, shape (resamples, n): the same for every method over the same n queries."""
    if n < 1:
        raise ValueError("no queries to resample")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _columns(outcomes: Sequence[Outcome], ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Correctness (0/1) and the answering tier's cost per query, in the order of ``ids``."""
    by_id = {o.query_id: o for o in outcomes}
    if len(by_id) != len(outcomes):
        raise ValueError("a query id occurs twice among one method's outcomes")
    return np.array([float(by_id[i].correct) for i in ids]), np.array([by_id[i].cost for i in ids])


def utilities(outcomes: Sequence[Outcome], ids: Sequence[str], alpha: float, picks: np.ndarray) -> tuple[float, np.ndarray]:
    """The utility over ``ids`` and its value in each resample (``picks``: positions in ``ids``)."""
    correct, cost = _columns(outcomes, ids)
    point = system_utility(float(correct.mean()), float(cost.mean()), alpha)
    return point, system_utility(correct[picks].mean(axis=1), cost[picks].mean(axis=1), alpha)


def interval(values: np.ndarray) -> list[float]:
    """The percentile bootstrap's 95% interval [2.5th, 97.5th percentile]."""
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def utility_ci95(outcomes: Sequence[Outcome], alpha: float, resamples: int = RESAMPLES, seed: int = SEED) -> list[float]:
    """A row's 95% interval for its utility."""
    ids = sorted(o.query_id for o in outcomes)
    return interval(utilities(outcomes, ids, alpha, draws(len(ids), resamples, seed))[1])


def compare(method: Sequence[Outcome], baseline: Sequence[Outcome], alpha: float, resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """``method``'s utility minus ``baseline``'s on the queries both have, with its paired 95% interval and
    ``p_better``, the share of resamples in which ``method``'s utility is the higher one."""
    ids = sorted({o.query_id for o in method} & {o.query_id for o in baseline})
    picks = draws(len(ids), resamples, seed)
    mine, mine_resampled = utilities(method, ids, alpha, picks)
    theirs, theirs_resampled = utilities(baseline, ids, alpha, picks)
    gaps = mine_resampled - theirs_resampled
    return {"n": len(ids), "difference": mine - theirs, "ci95": interval(gaps), "p_better": float(np.mean(gaps > 0))}


def verdict(ci95: Sequence[float]) -> str:
    """How a difference reads: ``above`` or ``below`` when its interval excludes 0, else ``within noise``."""
    return "above" if ci95[0] > 0 else "below" if ci95[1] < 0 else "within noise"


def annotate(rows: list[dict[str, Any]], resamples: int = RESAMPLES, seed: int = SEED) -> list[dict[str, Any]]:
    """Replace each row's transient ``outcomes`` by ``utility_ci95`` and return results.json's ``comparisons``:
    per (split, pool, alpha), each arm of COMPARED against the best centralized router there (by utility)
    and against Largest-only."""
    def key(r: dict[str, Any]) -> tuple[str, str, float, str]:
        return r["split"], r["pool"], r["alpha"], r["method"]

    outcomes = {key(r): r.pop("outcomes", None) for r in rows}
    measured = {key(r): r for r in rows if outcomes[key(r)] is not None}
    for (split, pool, alpha, name), r in measured.items():
        r["utility_ci95"] = utility_ci95(outcomes[(split, pool, alpha, name)], alpha, resamples, seed)
    comparisons = []
    for split, pool, alpha in dict.fromkeys(k[:3] for k in measured):
        here = {k[3]: r for k, r in measured.items() if k[:3] == (split, pool, alpha)}
        central = [name for name in CENTRALIZED if name in here]
        best = max(central, key=lambda name: here[name]["utility"]) if central else None
        for name in (m for m in COMPARED if m in here):
            for baseline in (b for b in (best, REFERENCE) if b in here):
                found = compare(outcomes[(split, pool, alpha, name)], outcomes[(split, pool, alpha, baseline)], alpha, resamples, seed)
                comparisons.append({"split": split, "pool": pool, "alpha": alpha, "method": name, "baseline": baseline, **found})
    return comparisons
