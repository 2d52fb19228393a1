"""Deterministic train / validation / test splits of probed queries, by a hash of each query id.

A query keeps its split when the task file grows or is reordered, so SFT and RL never see the
queries that calibration (validation) and evaluation (test) are measured on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Literal, TypeVar

Split = Literal["train", "val", "test"]
DEFAULT_FRACTIONS: Mapping[Split, float] = {"train": 0.7, "val": 0.15, "test": 0.15}

T = TypeVar("T")


def split_of(query_id: str, fractions: Mapping[Split, float] = DEFAULT_FRACTIONS, seed: int = 0) -> Split:
    """Which split ``query_id`` belongs to."""
    digest = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    total = sum(fractions.values())
    edge = 0.0
    for name in ("train", "val", "test"):
        edge += fractions.get(name, 0.0) / total
        if point < edge:
            return name
    return "test"


def select(items: Iterable[T], split: Split, key=lambda item: item.id, fractions: Mapping[Split, float] = DEFAULT_FRACTIONS, seed: int = 0) -> list[T]:  # noqa: ANN001
    """The items (ProbeRecords, Tasks: anything with an ``id``) that fall in ``split``."""
    return [item for item in items if split_of(key(item), fractions, seed) == split]
