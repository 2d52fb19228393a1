"""Does each trained tier pay its way in the mesh? Its decisions against trivial ones, judged by the mesh's utility.

For a lower tier of a calibrated mesh, the queries that reach it (the tiers below keep their thresholds) are
decided another way, every other tier keeping its thresholds, and the whole mesh is scored on all queries
(``mesh_calibration.routed_result``, utility ``objective.system_utility``):

- ``always_reject``: forward every one to the next tier up (no skip);
- ``always_answer``: answer every one;
- ``random``: answer each with the trained tier's own answer rate on those queries: the exact expectation
  (per query r * the answer's outcome + (1 - r) * the forward's), not a draw;
- ``oracle``: answer exactly where its own answer's utility (correct - alpha * cost) beats the forward's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from disrouter.mesh.objective import system_utility

from .config import TrainingConfigError
from .mesh_calibration import NEVER, MeshResult, Thresholds, TierRows, answering_tier, mesh_result, routed_result

BASELINES = ("always_reject", "always_answer", "random", "oracle")
TRIVIAL = ("always_reject", "always_answer")
"""The baselines a trained tier must beat (issue 11's target)."""
ANSWER_ALL = Thresholds(1.0, NEVER)
TOLERANCE = 1e-9


@dataclass(frozen=True)
class TierComparison:
    """One lower tier under one alpha: the mesh with its trained decisions and with each baseline's."""

    key: str
    reach: float  # share of the queries that reach the tier
    answer_rate: float  # the trained tier's share answered of those that reach it
    trained: MeshResult
    baselines: dict[str, MeshResult]

    def loses_to(self) -> list[str]:
        """The trivial baselines whose mesh utility is above the trained tier's."""
        return [name for name in TRIVIAL if self.baselines[name].utility > self.trained.utility + TOLERANCE]


def _mix(a: MeshResult, b: MeshResult, weight: float) -> MeshResult:
    """The expected result of ``a`` with probability ``weight``, else ``b`` (both on the same queries)."""
    share = {key: weight * a.share[key] + (1 - weight) * b.share[key] for key in a.share}
    return MeshResult(a.alpha, a.n, weight * a.accuracy + (1 - weight) * b.accuracy, weight * a.cost + (1 - weight) * b.cost, share)


def compare_tier(tiers: Sequence[TierRows], thresholds: Sequence[Thresholds], alpha: float, ids: Sequence[str], index: int) -> TierComparison:
    """The mesh ``tiers`` (cheapest first, ``thresholds`` for all but the strongest) with tier ``index``'s
    decisions replaced by each baseline's, next to the trained ones, on ``ids``."""
    if not 0 <= index < len(tiers) - 1:
        raise ValueError(f"tier index {index}: only the {len(tiers) - 1} lower tiers decide")
    if not ids:
        raise TrainingConfigError("mesh baselines: no queries")
    tier = tiers[index]
    trained = [answering_tier(tiers, thresholds, query_id) for query_id in ids]
    answer_all = [*thresholds[:index], ANSWER_ALL, *thresholds[index + 1:]]
    reached = [answering_tier(tiers, answer_all, query_id) == index for query_id in ids]
    forward = [index + 1 + answering_tier(tiers[index + 1:], thresholds[index + 1:], query_id) for query_id in ids]

    def routed(answers: Callable[[int], bool]) -> MeshResult:  # answers(n): does the tier answer ids[n] when it reaches it
        return routed_result(tiers, [(index if answers(n) else forward[n]) if reached[n] else trained[n] for n in range(len(ids))], alpha, ids)

    def own_pays(n: int) -> bool:
        other = tiers[forward[n]]
        return (system_utility(float(tier.outcomes[ids[n]].correct), tier.cost, alpha)
                > system_utility(float(other.outcomes[ids[n]].correct), other.cost, alpha))

    reaching = sum(reached)
    rate = sum(reached[n] and trained[n] == index for n in range(len(ids))) / reaching if reaching else 0.0
    always_answer, always_reject = routed(lambda n: True), routed(lambda n: False)
    baselines = {"always_reject": always_reject, "always_answer": always_answer,
                 "random": _mix(always_answer, always_reject, rate), "oracle": routed(own_pays)}
    return TierComparison(tier.key, reaching / len(ids), rate, mesh_result(tiers, thresholds, alpha, ids), baselines)


def compare_mesh(tiers: Sequence[TierRows], thresholds: Sequence[Thresholds], alpha: float, ids: Sequence[str]) -> list[TierComparison]:
    """``compare_tier`` for every lower tier, cheapest first."""
    return [compare_tier(tiers, thresholds, alpha, ids, index) for index in range(len(tiers) - 1)]


def _numbers(result: MeshResult) -> dict[str, float]:
    return {"utility": round(result.utility, 4), "accuracy": round(result.accuracy, 4), "cost": round(result.cost, 4)}


def comparison_figures(comparison: TierComparison) -> dict[str, Any]:
    """A comparison as JSON: reach, answer rate, the trained and each baseline's utility / accuracy / cost, losses."""
    return {"reach": round(comparison.reach, 4), "answer_rate": round(comparison.answer_rate, 4), "n": comparison.trained.n,
            "trained": _numbers(comparison.trained), **{name: _numbers(comparison.baselines[name]) for name in BASELINES},
            "loses_to": comparison.loses_to()}


TITLE = "Does each trained tier pay its way in the mesh?"


def table(figures: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]]]) -> list[str]:
    """Markdown of ``figures`` (split -> arm -> alpha -> tier key -> ``comparison_figures``): mesh utility per row."""
    lines = [f"## {TITLE}", "",
             "Mesh utility (all queries of the split) with one trained tier's decisions replaced by a baseline's on the "
             "queries that reach it, every other tier keeping its calibrated thresholds (chosen on val: val is optimistic, "
             "test is held out). Random answers at the trained tier's own rate there (exact expectation); the oracle answers "
             "where its own answer's utility beats the forward's. **LOSES** marks trained below always-reject or always-answer.",
             "", "| split | arm | alpha | tier | reaches | answer rate | trained | always-reject | always-answer | random @ rate | oracle | trained loses to |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for split, arms in figures.items():
        for arm, per_alpha in arms.items():
            for alpha, tiers in per_alpha.items():
                for key, f in tiers.items():
                    losses = ", ".join(f"**LOSES** to {name.replace('_', '-')} ({f['trained']['utility'] - f[name]['utility']:+.3f})"
                                       for name in f["loses_to"]) or "-"
                    cells = " | ".join(f"{f[name]['utility']:.3f}" for name in ("trained", *BASELINES))
                    lines.append(f"| {split} ({f['n']}) | {arm} | {alpha} | {key} | {f['reach']:.2f} | {f['answer_rate']:.2f} | {cells} | {losses} |")
    return lines
