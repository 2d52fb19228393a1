"""Mesh-aware labels: the strongest tier's probed competence per task, the ceiling a lower tier's
reject label and reward compare with (``objective.should_reject_in_mesh``, ``objective.mesh_reward``)."""

from __future__ import annotations

from pathlib import Path

from .config import TrainingConfigError
from .probe import ProbeRecord, load_records


def load_ceiling(folder: str | Path, records: list[ProbeRecord]) -> dict[str, float]:
    """Competence by task id from the probe folder of the tier above (``ceiling_probe``); every one of
    ``records`` must be covered, else TrainingConfigError names the folder and what is missing."""
    done = load_records(folder)
    if not done:
        raise TrainingConfigError(f"ceiling_probe {folder}: no probe results; run `disrouter train probe` on the strongest tier first")
    missing = sorted(record.id for record in records if record.id not in done)
    if missing:
        raise TrainingConfigError(f"ceiling_probe {folder}: {len(missing)} training tasks not probed there (e.g. {missing[0]}); probe them first")
    return {record.id: done[record.id].competence for record in records}
