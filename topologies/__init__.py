"""Topology files shipped with DiSRouter (YAML beside this file)."""

from pathlib import Path

FOLDER = Path(__file__).parent


def topology_path(name: str) -> Path:
    """Path of a shipped topology, e.g. ``topology_path("demo")``."""
    return FOLDER / f"{name}.yaml"
