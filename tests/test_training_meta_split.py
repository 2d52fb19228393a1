"""`tasks: {split: meta}`: a query's split is its task's own meta.split (the model family's sa-train / sa-val /
sa-test), instead of the id hash; bad values are refused with a readable error."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from disrouter.training.config import TrainingConfigError
from disrouter.training.pipeline import TrainConfig
from disrouter.training.splits import select_by_meta


def record(query_id: str, split: str | None) -> SimpleNamespace:
    return SimpleNamespace(id=query_id, task=SimpleNamespace(meta={} if split is None else {"split": split}))


def test_select_by_meta_follows_each_task() -> None:
    records = [record("a", "train"), record("b", "val"), record("c", "test"), record("d", "train")]
    assert [r.id for r in select_by_meta(records, "train")] == ["a", "d"]
    assert [r.id for r in select_by_meta(records, "val")] == ["b"]


def test_a_task_without_a_split_is_an_error() -> None:
    with pytest.raises(ValueError, match="no meta.split"):
        select_by_meta([record("a", "train"), record("b", None)], "train")


def test_config_accepts_meta_and_refuses_other_sources(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: m\nout: o\ntasks: {file: t.jsonl, split: meta}\n")
    assert TrainConfig.load(config).tasks["split"] == "meta"
    config.write_text("model: m\nout: o\ntasks: {file: t.jsonl, split: random}\n")
    with pytest.raises(TrainingConfigError, match="hash, meta"):
        TrainConfig.load(config)
