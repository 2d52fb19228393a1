"""Stage settings from a config file's sections: dataclasses built from mappings, one error type."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from disrouter.mesh.yamlfile import read_yaml_mapping

C = TypeVar("C")


class TrainingConfigError(Exception):
    """A training stage cannot run: a bad config, no usable examples, or a stale output folder."""


def read_settings_file(path: Path, known: set[str]) -> dict[str, Any]:
    """A YAML mapping of settings whose keys are all in ``known``; errors name the file and the keys."""
    data = read_yaml_mapping(path, "config file", TrainingConfigError, "expected a mapping of settings")
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrainingConfigError(f"{path}: unknown keys {unknown}; known: {', '.join(sorted(known))}")
    return data


def config_from_dict(cls: type[C], data: Mapping[str, Any] | None, section: str) -> C:
    """A dataclass config from a mapping (e.g. a YAML section); unknown keys are refused, listing the known ones."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise TrainingConfigError(f"{section} config: unknown keys {unknown}; known keys: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise TrainingConfigError(f"{section} config: {exc}") from None
