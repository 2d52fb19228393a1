"""Stage settings from a config file's sections: dataclasses built from mappings, one error type."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


class TrainingConfigError(Exception):
    """A training stage cannot run: a bad config, no usable examples, or a stale output folder."""


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
