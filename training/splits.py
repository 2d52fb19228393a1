"""Deterministic train / validation / test splits of probed queries, by a hash of each query id
(the default), or by the split each task names in its ``meta.split`` (``tasks: {split: meta}``).

A query keeps its split when the task file grows or is reordered, so SFT and RL never see the
queries that calibration (validation) and evaluation (test) are measured on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Literal, TypeVar

Split = Literal["train", "val", "test"]
SPLIT_SOURCES = ("hash", "meta")
"""Where a query's split comes from: the id hash, or the task's own ``meta.split``."""
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


def select_by_meta(items: Iterable[T], split: Split, meta=lambda item: item.task.meta) -> list[T]:  # noqa: ANN001
    """The items whose task names ``split`` in its ``meta.split`` (e.g. the model family's sa-train / sa-val / sa-test);
    a task naming no split, or another name, is an error rather than silently left out."""
    items = list(items)
    unnamed = sorted(getattr(item, "id", "?") for item in items if meta(item).get("split") not in ("train", "val", "test"))
    if unnamed:
        raise ValueError(f"tasks: split: meta, but {len(unnamed)} tasks have no meta.split of train / val / test (e.g. {unnamed[0]})")
    return [item for item in items if meta(item)["split"] == split]
