"""The trivial policies a trained model must beat, per alpha, on the same test queries.

- ``always_reject``: forward everything (utility (1 - alpha) ** gamma, whatever the queries).
- ``always_answer``: the base model answers every plain question greedily (the node's ``always``
  policy); correctness from its graded answers (``evaluate.base_answers``).
- ``random``: answers a random share of queries equal to the trained model's answer rate at that
  alpha, with the base model's answers; the figures are the exact expectation, not one draw.
- ``oracle``: answers exactly the queries the base model gets right, rejects the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from disrouter.mesh.objective import reject_reward

from .evaluate import AlphaMetrics, EvalRow, decision_metrics

BASELINES = ("always_reject", "always_answer", "random", "oracle")


def baseline_metrics(
    rows: Sequence[EvalRow], correct: Mapping[str, bool], alpha: float, gamma: float, answer_rate: float
) -> dict[str, AlphaMetrics]:
    """Each baseline's metrics on the queries of ``rows`` (one alpha); ``correct`` is the base model's
    graded answer per query id, ``answer_rate`` the trained model's at this alpha."""
    queries = [(row.id, row.should_reject) for row in rows if row.id in correct]

    def policy(rejects: bool | None) -> AlphaMetrics:  # None: reject exactly the queries the base gets wrong
        decisions = ((not correct[i] if rejects is None else rejects, label, float(correct[i])) for i, label in queries)
        return decision_metrics(decisions, alpha, gamma)

    return {
        "always_reject": policy(True),
        "always_answer": policy(False),
        "random": random_metrics(queries, correct, alpha, gamma, answer_rate),
        "oracle": policy(None),
    }


def random_metrics(
    queries: Sequence[tuple[str, bool]], correct: Mapping[str, bool], alpha: float, gamma: float, answer_rate: float
) -> AlphaMetrics:
    """The expected metrics of answering each query with probability ``answer_rate``, independently."""
    n = len(queries)
    accuracy = sum(correct[i] for i, _ in queries) / n if n else 0.0
    positives = sum(label for _, label in queries)
    rate = answer_rate if n else 0.0
    precision = positives / n if n and rate < 1 else 0.0
    recall = 1.0 - rate if positives else 0.0
    return AlphaMetrics(
        n=n,
        answer_rate=rate,
        accuracy_answered=accuracy if rate > 0 else None,
        accuracy_overall=rate * accuracy,
        reject_precision=precision,
        reject_recall=recall,
        reject_f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        utility=rate * accuracy + (1.0 - rate) * reject_reward(alpha, gamma) if n else 0.0,
    )
