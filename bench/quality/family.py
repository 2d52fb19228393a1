"""Tiers a preset needs but that are not on disk yet: train them with `disrouter train family` when the preset says how."""

from __future__ import annotations

import hashlib
import shutil
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


STAMP = ".bench-family-config.sha256"
"""In the family's output folder: the hash of the config it was built from (another config rebuilds it)."""


def _stamp(config: Path) -> str:
    return hashlib.sha256(config.read_bytes()).hexdigest()


def ensure_family(preset: Preset, console: Console) -> None:
    """Build the preset's family (``family.config``) when a tier is missing or the config changed since
    the last build; without a ``family`` section a missing tier fails, naming its folder."""
    missing = missing_models(preset)
    family = preset.family
    if family is None:
        if missing:
            raise ValueError(f"preset {preset.name}: model folder {missing[0]} does not exist (train the tiers first)")
        return
    stamp = family.out / STAMP if family.out is not None else None
    ours = stamp is not None and stamp.is_file()  # built here before (a folder built elsewhere is trusted as is)
    if not missing and not (ours and stamp.read_text() != _stamp(family.config)):
        return
    if ours:
        shutil.rmtree(family.out)  # the family run resumes the tiers it finds: a changed config starts clean
    command = [*_disrouter(), "train", "family", "--config", str(family.config), "--no-progress"]
    if family.out is not None:
        command += ["--out", str(family.out)]
    console.print(f"building the family: {' '.join(command)}")
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(no output)"
        raise ValueError(f"building the family failed ({done.returncode}): {last}")
    still = missing_models(preset)
    if still:
        raise ValueError(f"preset {preset.name}: `disrouter train family` ran but {still[0]} is still missing")
    if stamp is not None:
        stamp.write_text(_stamp(family.config))
