"""The benchmark's queries: each split's task file, cut to the preset's limit, and queries.jsonl."""

from __future__ import annotations

import json
import random
from pathlib import Path

from disrouter.training.splits import select
from disrouter.training.tasks import Task, load_tasks

from .preset import EVAL_SPLITS, SPLITS, Preset


def load_splits(preset: Preset) -> dict[str, list[Task]]:
    """Tasks per split; a split over its limit keeps a seeded random sample (in file order)."""
    splits: dict[str, list[Task]] = {}
    for split in SPLITS:
        source = preset.tasks[split]
        tasks = load_tasks(source.file)
        if source.split is not None:
            tasks = select(tasks, source.split)
        limit = preset.limits.get(split)
        if limit is not None and len(tasks) > limit:
            keep = set(random.Random(f"{preset.seed}-{split}").sample(range(len(tasks)), limit))
            tasks = [task for i, task in enumerate(tasks) if i in keep]
        if not tasks:
            raise ValueError(f"split {split} has no queries ({source.file})")
        splits[split] = tasks
    ids = [task.id for tasks in splits.values() for task in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError("a query id appears in two splits; splits must not overlap")
    return splits


def question_text(task: Task) -> str:
    """The question as the user asks it (the last user turn, choices included)."""
    return task.prompt_messages()[-1]["content"]


def write_queries(splits: dict[str, list[Task]], path: Path) -> None:
    """The evaluation queries, one JSON object a line: id, split, question, answer."""
    with path.open("w", encoding="utf-8") as handle:
        for split in EVAL_SPLITS:
            for task in splits[split]:
                row = {"id": task.id, "split": split, "question": question_text(task), "answer": task.answer}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
