"""Correctness labels: every tier answers every query once (greedy, forced, as the mesh's last tier
would), graded by the project's graders; cached per tier in the output folder.

The oracle, trivial and centralized baselines are computed from these labels; their latency is
the time the tier took for the query with ``in_flight`` queries outstanding, as in the live runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.progress import Progress

from disrouter.mesh.protocol import Query
from disrouter.node.backends import load_backend
from disrouter.node.policies import AlwaysPolicy
from disrouter.training.graders import grade
from disrouter.training.tasks import Task


@dataclass(frozen=True)
class Label:
    """One tier's greedy answer to one query, and whether it is correct."""

    query_id: str
    output: str
    correct: bool
    prompt_tokens: int
    completion_tokens: int
    ms: float

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


Labels = dict[str, dict[str, Label]]
"""tier key -> query id -> Label."""


def fingerprint(folder: Path, max_tokens: int) -> str:
    """Changes when the model's files or the generation settings change (then the cache is redone)."""
    parts = [str(folder.resolve()), str(max_tokens)]
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _read_cache(path: Path, key: str) -> dict[str, Label]:
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or json.loads(lines[0]).get("fingerprint") != key:
        return {}
    labels = [Label(**json.loads(line)) for line in lines[1:] if line.strip()]
    return {label.query_id: label for label in labels}


async def _answer_all(folder: Path, tasks: list[Task], max_tokens: int, in_flight: int, progress: Progress, job: int) -> list[Label]:
    """Load the tier with the transformers backend and answer ``tasks`` with ``in_flight`` outstanding."""
    backend = await asyncio.to_thread(load_backend, "transformers", str(folder))
    gate = asyncio.Semaphore(in_flight)

    async def one(task: Task) -> Label:
        async with gate:
            started = time.perf_counter()
            query = Query(messages=task.prompt_messages(), max_tokens=max_tokens, temperature=0.0)
            generation = (await AlwaysPolicy().answer(backend, query)).generation  # no scenario, reject phrase suppressed
            ms = (time.perf_counter() - started) * 1000
        progress.advance(job)
        return Label(task.id, generation.text, grade(task, generation.text), generation.prompt_tokens, generation.completion_tokens, ms)

    try:
        return list(await asyncio.gather(*(one(task) for task in tasks)))
    finally:
        await backend.close()


def tier_labels(key: str, folder: Path, tasks: list[Task], cache_dir: Path, *, max_tokens: int, in_flight: int, progress: Progress) -> dict[str, Label]:
    """Labels of one tier on ``tasks``, answering only the queries its cache lacks."""
    cache = cache_dir / f"{key}.jsonl"
    stamp = fingerprint(folder, max_tokens)
    done = _read_cache(cache, stamp)
    todo = [task for task in tasks if task.id not in done]
    job = progress.add_task(f"labels: {key}", total=len(tasks), completed=len(tasks) - len(todo))
    if todo:
        new = asyncio.run(_answer_all(folder, todo, max_tokens, in_flight, progress, job))
        done |= {label.query_id: label for label in new}
        cache_dir.mkdir(parents=True, exist_ok=True)
        with cache.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps({"fingerprint": stamp, "model": str(folder)}) + "\n")
            for label in done.values():
                handle.write(json.dumps(asdict(label)) + "\n")
    return {task.id: done[task.id] for task in tasks}
