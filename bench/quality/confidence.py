"""The ``untrained_confidence`` arm's thresholds: base tiers that score their own answers (node policy
``confidence``), thresholds chosen on the val split by the mesh's utility, no training at all.

Each lower tier is measured on val through the node's own policy code (``training.mesh_measure``), the
strongest tier's correctness comes from its labels (it always answers, as in the mesh), and per alpha
``training.mesh_calibration.calibrate_mesh`` picks the thresholds top-down. One calibration file per
lower tier (the node's format) is what its node loads with ``--calibration``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.progress import Progress

from disrouter.training.mesh_calibration import TierOutcome, TierRows, Thresholds, calibrate_mesh, node_calibration
from disrouter.training.mesh_measure import Outcomes, measure_tier
from disrouter.training.tasks import Task

from .labels import Labels
from .preset import Preset, Tier

POLICY = "confidence"


def measure(preset: Preset, val: Sequence[Task], progress: Progress) -> dict[str, Outcomes]:
    """Every lower tier's doubt in its own answer, and the answer's correctness, on ``val`` per alpha."""
    measured = {}
    for tier in preset.tiers[:-1]:
        job = progress.add_task(f"{POLICY} on val: {tier.key}", total=len(val) * len(preset.alphas))
        measured[tier.key] = asyncio.run(measure_tier(
            tier.model, val, preset.alphas, strongest=False, demonstrations=False, max_tokens=preset.max_tokens,
            in_flight=preset.in_flight, backend="transformers", progress=progress, job=job, policy=POLICY))
    return measured


def choose(preset: Preset, val: Sequence[Task], labels: Labels, measured: dict[str, Outcomes]) -> dict[float, tuple[list[Thresholds], float]]:
    """Per alpha: the lower tiers' thresholds (cheapest first) and the val utility of the mesh they make."""
    top = preset.tiers[-1]
    strongest = {task.id: TierOutcome(None, labels[top.key][task.id].correct) for task in val}
    ids = [task.id for task in val]
    chosen = {}
    for alpha in preset.alphas:
        rows = [TierRows(t.key, float(t.cost), measured[t.key][alpha]) for t in preset.tiers[:-1]]
        thresholds, results = calibrate_mesh([*rows, TierRows(top.key, float(top.cost), strongest)], alpha, ids)
        chosen[alpha] = (thresholds, results[0].utility)
    return chosen


def write(tiers: Sequence[Tier], chosen: dict[float, tuple[list[Thresholds], float]], folder: Path) -> dict[str, Path]:
    """``folder/<tier key>.json`` per lower tier: the node's calibration format plus where it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for index, tier in enumerate(tiers[:-1]):
        picked = {alpha: thresholds[index] for alpha, (thresholds, _) in chosen.items()}
        calibration = node_calibration(picked, POLICY)
        document = calibration.model_dump(mode="json") | {
            "objective": "mesh", "tiers": [t.key for t in tiers],
            "val_utility": {str(a): round(utility, 4) for a, (_, utility) in chosen.items()},
            "degenerate": {str(a): t.answer for a, t in picked.items() if t.degenerate},
        }
        files[tier.key] = folder / f"{tier.key}.json"
        files[tier.key].write_text(json.dumps(document, indent=2) + "\n")
    return files


def calibrate(preset: Preset, val: Sequence[Task], labels: Labels, folder: Path, progress: Progress) -> tuple[dict[str, Path], dict[str, Any]]:
    """The lower tiers' calibration files (tier key -> path) and the thresholds for the results' details."""
    chosen = choose(preset, val, labels, measure(preset, val, progress))
    details = {f"{alpha:g}": {"val_utility": round(utility, 4),
                              **{t.key: {"answer": th.answer, "skip": th.skip} for t, th in zip(preset.tiers, thresholds)}}
               for alpha, (thresholds, utility) in chosen.items()}
    return write(preset.tiers, chosen, folder), details
