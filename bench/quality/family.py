"""Tiers a preset needs but that are not on disk yet: train them with `disrouter train family` when the preset says how."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from .preset import Preset


def _disrouter() -> list[str]:
    script = Path(sys.executable).with_name("disrouter")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "disrouter.cli.main"]


def missing_models(preset: Preset) -> list[str]:
    """Base model folders of tiers that do not exist (missing checkpoints only leave their arm out)."""
    return [str(t.model) for t in preset.tiers if not (t.model / "config.json").is_file()]


def ensure_family(preset: Preset, console: Console) -> None:
    """Build the preset's family when a tier is missing (the preset's ``family.config``), else fail naming the folder."""
    missing = missing_models(preset)
    if not missing:
        return
    if preset.family is None:
        raise ValueError(f"preset {preset.name}: model folder {missing[0]} does not exist (train the tiers first)")
    command = [*_disrouter(), "train", "family", "--config", str(preset.family.config), "--no-progress"]
    if preset.family.out is not None:
        command += ["--out", str(preset.family.out)]
    console.print(f"building the family: {' '.join(command)}")
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(no output)"
        raise ValueError(f"building the family failed ({done.returncode}): {last}")
    still = missing_models(preset)
    if still:
        raise ValueError(f"preset {preset.name}: `disrouter train family` ran but {still[0]} is still missing")
