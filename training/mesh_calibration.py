"""Mesh-utility calibration: each tier's probe thresholds chosen by the utility of the whole mesh.

Node-level calibration (``calibrate.py``) scores a tier alone, a reject worth (1 - alpha) ** gamma.
Here a reject is worth what the tiers above it then do: per alpha, top-down, the strongest tier
always answers; for each lower tier, with the thresholds of the tiers above it already chosen, the
answer threshold (reject when P(reject) > it) and the skip threshold (above it, go straight to the
strongest tier; 1 = never) are the pair that maximises ``objective.system_utility`` (accuracy -
alpha * cost, cost the answering tier's) of the mesh from that tier up, on validation queries.
Correctness is the tier's OWN answer as its node serves it (``TierOutcome``, measured by
``mesh_measure``). Candidates: 0, 1 and the midpoints between neighbouring observed P(reject)
(``calibrate.candidate_thresholds``). Ties go to the higher skip threshold, then the higher answer
threshold (fewer hops, more answered low in the mesh). 0 or 1 is flagged degenerate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from disrouter.mesh.objective import system_utility
from disrouter.node.calibration import Calibration

from .calibrate import candidate_thresholds
from .config import TrainingConfigError

NEVER = 1.0
"""A skip threshold that never skips (P(reject) is never above 1)."""


@dataclass(frozen=True)
class TierOutcome:
    """One tier on one query under one alpha: its P(reject) (None for the strongest, which always
    answers) and whether its own answer is right."""

    p_reject: float | None
    correct: bool


@dataclass(frozen=True)
class TierRows:
    """A tier's cost and its outcome per query id, for one alpha."""

    key: str
    cost: float
    outcomes: Mapping[str, TierOutcome]


@dataclass(frozen=True)
class Thresholds:
    """A lower tier's probe thresholds for one alpha."""

    answer: float
    skip: float = NEVER

    @property
    def degenerate(self) -> bool:
        return self.answer in (0.0, 1.0)


def node_calibration(chosen: Mapping[float, Thresholds], policy: str, demonstrations: bool = True) -> Calibration:
    """A lower tier's thresholds per alpha (``chosen``) in the node's calibration format, for ``policy``."""
    return Calibration(thresholds={a: t.answer for a, t in chosen.items()}, skip_thresholds={a: t.skip for a, t in chosen.items()},
                       demonstrations=demonstrations, policy=policy)


@dataclass(frozen=True)
class MeshResult:
    """What the mesh does on a set of queries under one alpha."""

    alpha: float
    n: int
    accuracy: float
    cost: float
    share: dict[str, float]  # tier key -> share of queries it answered

    @property
    def utility(self) -> float:
        return system_utility(self.accuracy, self.cost, self.alpha)


def answering_tier(tiers: Sequence[TierRows], thresholds: Sequence[Thresholds], query_id: str) -> int:
    """Index of the tier that answers ``query_id``: the first lower tier whose P(reject) is at most its
    answer threshold, the strongest when a tier's P(reject) passes its skip threshold, else the strongest."""
    for index, (tier, chosen) in enumerate(zip(tiers[:-1], thresholds)):
        p = tier.outcomes[query_id].p_reject
        if p is None:
            raise TrainingConfigError(f"tier {tier.key}: no P(reject) for {query_id}; a lower tier needs a backend that scores")
        if p <= chosen.answer:
            return index
        if p > chosen.skip:
            break
    return len(tiers) - 1


def mesh_result(tiers: Sequence[TierRows], thresholds: Sequence[Thresholds], alpha: float, ids: Sequence[str]) -> MeshResult:
    """Accuracy, cost (the answering tier's) and shares of the mesh ``tiers`` (cheapest first) on ``ids``."""
    if len(thresholds) != len(tiers) - 1:
        raise ValueError(f"{len(tiers)} tiers need {len(tiers) - 1} thresholds, got {len(thresholds)}")
    if not ids:
        raise TrainingConfigError("mesh calibration: no validation queries")
    return routed_result(tiers, [answering_tier(tiers, thresholds, query_id) for query_id in ids], alpha, ids)


def routed_result(tiers: Sequence[TierRows], answered: Sequence[int], alpha: float, ids: Sequence[str]) -> MeshResult:
    """The mesh result when tier ``answered[n]`` (an index into ``tiers``) answers ``ids[n]``."""
    correct = sum(tiers[i].outcomes[query_id].correct for i, query_id in zip(answered, ids))
    share = {tier.key: answered.count(i) / len(ids) for i, tier in enumerate(tiers)}
    return MeshResult(alpha, len(ids), correct / len(ids), sum(tiers[i].cost for i in answered) / len(ids), share)


def choose_tier(tiers: Sequence[TierRows], above: Sequence[Thresholds], alpha: float, ids: Sequence[str]) -> tuple[Thresholds, MeshResult]:
    """The thresholds of ``tiers[0]`` that maximise the utility of the mesh ``tiers`` (the tiers above
    it with thresholds ``above``)."""
    answers = candidate_thresholds(tiers[0].outcomes[i].p_reject for i in ids)  # type: ignore[misc]
    best: tuple[tuple[float, float, float], Thresholds, MeshResult] | None = None
    for answer in answers:
        skips = [NEVER] if len(tiers) == 2 else [skip for skip in answers if skip >= answer]  # next tier up is the strongest: skipping changes nothing
        for skip in skips:
            chosen = Thresholds(answer, skip)
            result = mesh_result(tiers, [chosen, *above], alpha, ids)
            key = (round(result.utility, 12), skip, answer)
            if best is None or key > best[0]:
                best = (key, chosen, result)
    assert best is not None
    return best[1], best[2]


def calibrate_mesh(tiers: Sequence[TierRows], alpha: float, ids: Sequence[str]) -> tuple[list[Thresholds], list[MeshResult]]:
    """Top-down: thresholds of every tier but the strongest (cheapest first), and the mesh result from
    each tier up once its thresholds are chosen (the first is the whole mesh)."""
    if len(tiers) < 2:
        raise TrainingConfigError("mesh calibration needs at least two tiers (the strongest always answers)")
    chosen: list[Thresholds] = []
    results: list[MeshResult] = []
    for start in range(len(tiers) - 2, -1, -1):
        thresholds, result = choose_tier(tiers[start:], chosen, alpha, ids)
        chosen.insert(0, thresholds)
        results.insert(0, result)
    return chosen, results


def oracle_result(tiers: Sequence[TierRows], alpha: float, ids: Sequence[str]) -> MeshResult:
    """The cheapest tier that answers right (the cheapest when none does, as bench quality's oracle): the ceiling for the mesh."""
    def pick(query_id: str) -> int:
        return next((i for i, tier in enumerate(tiers) if tier.outcomes[query_id].correct), 0)

    return routed_result(tiers, [pick(query_id) for query_id in ids], alpha, ids)
