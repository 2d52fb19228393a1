"""Reading a YAML settings file (topologies, training configs) with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml_mapping(path: Path, kind: str, error: type[Exception], expected: str) -> dict[str, Any]:
    """The mapping in ``path``; ``error`` when the file is missing, not YAML, or not a mapping."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{kind} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: {expected}")
    return data
