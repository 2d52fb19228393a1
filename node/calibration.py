"""Reject thresholds for the `probe` and `confidence` policies, per scenario alpha, from a model's calibration file.

The file is JSON, written by training next to the model as ``disrouter-calibration.json``:

```json
{"version": 1,
 "thresholds": {"0.2": 0.35, "0.5": 0.5, "0.8": 0.65},
 "skip_thresholds": {"0.2": 0.9, "0.5": 0.95, "0.8": 0.98},
 "demonstrations": false,
 "policy": "probe"}
```

``policy`` names the policy whose score the thresholds are on (``probe``: P(reject phrase);
``confidence``: 1 - P(own answer)); a node running the other thresholded policy refuses the file.
Files without it (from before the field) are read as made for ``probe`` / ``generate``.

``demonstrations`` says whether the node prompts with the few-shot turns that teach untrained
models the reject phrase (default true); training writes false, since a trained model learned
the phrase and was trained without them, and both `generate` and `probe` then prompt likewise.

A node forwards when P(reject phrase | prompt) exceeds ``threshold(alpha)`` and skips straight
to the strongest live peer when it exceeds ``skip_threshold(alpha)``. Between the listed alphas
thresholds are interpolated linearly; outside them the nearest is used. Without a file the
defaults below apply. A reject threshold of 0 (reject every query) or 1 (answer every query) is
degenerate: loading such a file logs a warning naming the alphas.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, Field, ValidationError, field_validator

log = structlog.get_logger("disrouter.node.calibration")

CALIBRATION_FILENAME = "disrouter-calibration.json"
DEFAULT_THRESHOLD = 0.5
DEFAULT_SKIP_THRESHOLD = 0.95


class CalibrationError(Exception):
    """A calibration file that cannot be used."""


def _interpolate(points: dict[float, float], alpha: float) -> float:
    alphas = sorted(points)
    if alpha <= alphas[0]:
        return points[alphas[0]]
    if alpha >= alphas[-1]:
        return points[alphas[-1]]
    i = bisect_left(alphas, alpha)
    lo, hi = alphas[i - 1], alphas[i]
    return points[lo] + (points[hi] - points[lo]) * (alpha - lo) / (hi - lo)


class Calibration(BaseModel):
    version: int = 1
    thresholds: dict[float, float] = Field(default_factory=lambda: {0.5: DEFAULT_THRESHOLD})
    skip_thresholds: dict[float, float] = Field(default_factory=lambda: {0.5: DEFAULT_SKIP_THRESHOLD})
    demonstrations: bool = True
    policy: Literal["probe", "confidence"] | None = None  # whose score the thresholds are on; None: a file from before, made for probe

    @field_validator("thresholds", "skip_thresholds")
    @classmethod
    def _probabilities(cls, value: dict[float, float]) -> dict[float, float]:
        if not value:
            raise ValueError("needs at least one alpha")
        for alpha, threshold in value.items():
            if not (0.0 <= alpha <= 1.0 and 0.0 <= threshold <= 1.0):
                raise ValueError("alphas and thresholds must be within [0, 1]")
        return value

    def threshold(self, alpha: float) -> float:
        return _interpolate(self.thresholds, alpha)

    def skip_threshold(self, alpha: float) -> float:
        return _interpolate(self.skip_thresholds, alpha)

    def degenerate(self) -> dict[float, float]:
        """The alphas whose reject threshold is 0 (reject everything) or 1 (answer everything)."""
        return {alpha: threshold for alpha, threshold in self.thresholds.items() if threshold in (0.0, 1.0)}


def load_calibration(path: str | Path | None, model_folder: Path | None = None) -> Calibration:
    """The file at ``path``, else ``<model_folder>/disrouter-calibration.json``, else defaults."""
    if path is None and model_folder is not None and (model_folder / CALIBRATION_FILENAME).is_file():
        path = model_folder / CALIBRATION_FILENAME
    if path is None:
        return Calibration()
    try:
        calibration = Calibration.model_validate(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise CalibrationError(f"calibration file {path} does not exist") from None
    except (json.JSONDecodeError, ValidationError) as exc:
        raise CalibrationError(f"{path}: not a valid calibration file: {str(exc).splitlines()[0]}") from None
    if calibration.degenerate():
        log.warning("calibration_degenerate_thresholds", path=str(path), thresholds=calibration.degenerate(),
                    meaning="0 rejects every query, 1 answers every query at that alpha")
    return calibration
