"""Calibration for the node's ``probe`` policy: per alpha, the P(reject) thresholds chosen on the
validation split and written next to the model as ``disrouter-calibration.json``.

The policy rejects when P(reject) > threshold. Per alpha the threshold maximises the validation
utility (``objective.utility``: an answered query is worth its competence, the expected
correctness, and a reject (1 - alpha) ** gamma); ties go to the higher reject F1 against the
paper's label (a diagnostic, not the objective), then to the higher threshold. Candidates are the midpoints between neighbouring observed P(reject) values, plus
0 (reject all) and 1 (reject none), so a threshold never sits exactly on a validation value. The
skip threshold is the smallest candidate at or above the threshold whose rejects are at least 95%
right (over at least ``min_skip_support`` rejects), else max(threshold, 0.95). A threshold of 0
(reject everything) or 1 (answer everything) is degenerate: logged here, flagged in the report,
and logged again by the node that loads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from disrouter.mesh.objective import DEFAULT_GAMMA
from disrouter.node.calibration import CALIBRATION_FILENAME, DEFAULT_SKIP_THRESHOLD, Calibration

from .config import TrainingConfigError
from .evaluate import AlphaMetrics, EvalRow, ModelEval, decision_metrics

log = structlog.get_logger("disrouter.training.calibrate")

SKIP_PRECISION = 0.95
MIN_SKIP_SUPPORT = 5


@dataclass(frozen=True)
class ThresholdChoice:
    """The thresholds picked for one alpha and how the reject threshold did on the rows it was picked on."""

    alpha: float
    threshold: float
    skip_threshold: float
    metrics: AlphaMetrics


def threshold_metrics(rows: Iterable[EvalRow], alpha: float, threshold: float, gamma: float = DEFAULT_GAMMA) -> AlphaMetrics:
    """Metrics of the probe policy's decisions (reject when P(reject) > ``threshold``) on the scored
    rows of ``alpha``; an answered query is worth its competence (expected correctness)."""
    scored = [row for row in rows if math.isclose(row.alpha, alpha) and row.p_reject is not None]
    decisions = ((row.p_reject > threshold, row.should_reject, row.competence) for row in scored)  # type: ignore[operator]
    return decision_metrics(decisions, alpha, gamma)


def candidate_thresholds(probabilities: Iterable[float]) -> list[float]:
    """0, the midpoints between neighbouring distinct values, and 1: one threshold per distinct decision."""
    values = sorted(set(probabilities))
    midpoints = [(low + high) / 2 for low, high in zip(values, values[1:])]
    return sorted({0.0, *midpoints, 1.0})


def choose_thresholds(
    rows: Sequence[EvalRow], alpha: float, gamma: float = DEFAULT_GAMMA, min_skip_support: int = MIN_SKIP_SUPPORT
) -> ThresholdChoice:
    """The reject and skip thresholds for ``alpha`` from scored validation ``rows``."""
    scored = [row for row in rows if math.isclose(row.alpha, alpha) and row.p_reject is not None]
    if not scored:
        raise TrainingConfigError(
            f"calibration: no validation rows with P(reject) for alpha {alpha} (empty split, or a backend that cannot score)"
        )
    candidates = candidate_thresholds(row.p_reject for row in scored)  # type: ignore[misc]
    results = [(threshold, threshold_metrics(scored, alpha, threshold, gamma)) for threshold in candidates]
    threshold, metrics = max(results, key=lambda item: (round(item[1].utility, 12), item[1].reject_f1, item[0]))
    skip = _skip_threshold(scored, threshold, candidates, min_skip_support)
    return ThresholdChoice(alpha, threshold, skip, metrics)


def _skip_threshold(scored: Sequence[EvalRow], threshold: float, candidates: list[float], min_support: int) -> float:
    for candidate in (c for c in candidates if c >= threshold):
        picked = [row.should_reject for row in scored if row.p_reject > candidate]  # type: ignore[operator]
        if len(picked) >= max(1, min_support) and sum(picked) / len(picked) >= SKIP_PRECISION:
            return candidate
    return max(threshold, DEFAULT_SKIP_THRESHOLD)


def calibrate(
    rows_val: ModelEval | Sequence[EvalRow], alphas: Sequence[float], gamma: float | None = None, min_skip_support: int = MIN_SKIP_SUPPORT
) -> Calibration:
    """The calibration file's content for a trained model: thresholds per alpha from validation
    rows (P(reject) measured without demonstrations, as the trained node prompts)."""
    if isinstance(rows_val, ModelEval):
        gamma = rows_val.gamma if gamma is None else gamma
        rows: Sequence[EvalRow] = rows_val.rows
    else:
        rows = rows_val
    gamma = DEFAULT_GAMMA if gamma is None else gamma
    choices = [choose_thresholds(rows, float(alpha), gamma, min_skip_support) for alpha in alphas]
    for choice in choices:
        log.info(
            "calibration_alpha", alpha=choice.alpha, threshold=round(choice.threshold, 4), skip_threshold=round(choice.skip_threshold, 4),
            val_utility=round(choice.metrics.utility, 4), val_reject_f1=round(choice.metrics.reject_f1, 4), val_rows=choice.metrics.n,
        )
        if choice.threshold in (0.0, 1.0):
            log.warning("calibration_degenerate_threshold", alpha=choice.alpha, threshold=choice.threshold,
                        meaning="reject every query" if choice.threshold == 0.0 else "answer every query")
    return Calibration(
        thresholds={choice.alpha: choice.threshold for choice in choices},
        skip_thresholds={choice.alpha: choice.skip_threshold for choice in choices},
        demonstrations=False,
        policy="probe",  # thresholds on P(reject phrase)
    )


def write_calibration(calibration: Calibration, model_folder: Path) -> Path:
    """Write ``model_folder/disrouter-calibration.json`` (what ``node.calibration.load_calibration`` reads)."""
    path = Path(model_folder) / CALIBRATION_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration.model_dump(mode="json"), indent=2) + "\n")
    log.info("calibration_written", path=str(path))
    return path
