"""Stage 0, competence probing: sample N answers per query, grade them, save competence and samples.

The prompt is the task's plain question (``Task.prompt_messages``), without the scenario
instruction. Competence must measure what the model knows, P(correct | question), the same for
every scenario: SFT labels each alpha from this one number (reject when p < 1 - alpha). Under
the instruction the untrained model sometimes says "I don't know!" instead of trying, which
would count as wrong, bias p downwards and tie it to one alpha; and the correct samples, reused
as SFT answer targets, must be genuine answers rather than reactions to the instruction.

Output folder: ``probe.jsonl`` (one ProbeRecord per query, appended as each query finishes),
``probe-config.json`` (what was sampled; a rerun with other settings is refused),
``probe-summary.json``, and ``probe-errors.jsonl`` (queries that could not be asked, e.g. a
prompt longer than the context; retried on the next run). A rerun skips queries already saved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from disrouter.node.backends import BACKENDS, Backend, Generation, GenerationRequest, PromptTooLongError, load_backend
from disrouter.node.prompts import is_reject

from .progress import progress_bar
from .graders import grade
from .tasks import FORMATS, Task, load_task_file

log = structlog.get_logger("disrouter.training.probe")

RECORDS_FILE = "probe.jsonl"
CONFIG_FILE = "probe-config.json"
SUMMARY_FILE = "probe-summary.json"
ERRORS_FILE = "probe-errors.jsonl"
RESUME_KEYS = ("model", "samples", "temperature", "top_p", "max_tokens")
"""Settings that must match for a rerun to continue an output folder."""


class ProbeError(Exception):
    """The probe cannot run or continue (bad config, or an output folder from other settings)."""


@dataclass
class ProbeConfig:
    """What to probe and how; ``from_dict`` reads it from a config file's ``probe`` section."""

    model: str  # a known name (smollm2-135m), a Hugging Face folder, or a .gguf file
    tasks: Path  # a JSONL file in ``tasks_format``
    tasks_format: str = "tasks"  # tasks | gsm8k | mmlu | arc
    samples: int = 8  # answers sampled per query
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    backend: str = "auto"  # auto = vllm when importable, else transformers
    in_flight: int = 64  # generation requests outstanding at once; the backend batches them
    max_batch: int = 16  # rows per batched generate call (transformers backend)
    limit: int | None = None  # probe only the first ``limit`` tasks
    backend_options: dict[str, Any] = field(default_factory=dict)  # passed to load_backend

    def __post_init__(self) -> None:
        self.tasks = Path(self.tasks)
        problems = []
        if self.samples < 1:
            problems.append("samples must be at least 1")
        if not 0.0 <= self.temperature <= 5.0:
            problems.append("temperature must be within [0, 5]")
        if not 0.0 < self.top_p <= 1.0:
            problems.append("top_p must be within (0, 1]")
        if self.max_tokens < 1:
            problems.append("max_tokens must be at least 1")
        if self.in_flight < 1 or self.max_batch < 1:
            problems.append("in_flight and max_batch must be at least 1")
        if self.limit is not None and self.limit < 1:
            problems.append("limit must be at least 1")
        if self.backend != "auto" and self.backend not in BACKENDS:
            problems.append(f"backend {self.backend!r} is not auto or one of {', '.join(BACKENDS)}")
        if self.tasks_format not in FORMATS:
            problems.append(f"tasks_format {self.tasks_format!r} is not one of {', '.join(FORMATS)}")
        if problems:
            raise ProbeError("probe config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> ProbeConfig:
        """A config from a mapping (e.g. parsed YAML); a relative ``tasks`` path is taken from ``base_dir``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ProbeError(f"probe config: unknown keys {unknown}; known keys: {', '.join(sorted(names))}")
        missing = [name for name in ("model", "tasks") if name not in data]
        if missing:
            raise ProbeError(f"probe config: missing {', '.join(missing)}")
        values = dict(data)
        tasks = Path(values["tasks"]).expanduser()
        values["tasks"] = tasks if tasks.is_absolute() or base_dir is None else base_dir / tasks
        try:
            return cls(**values)
        except TypeError as exc:
            raise ProbeError(f"probe config: {exc}") from None

    def backend_kind(self) -> str:
        """The backend to load: ``backend``, with auto meaning vllm when importable, else transformers."""
        if self.backend != "auto":
            return self.backend
        return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"

    def resume_key(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in RESUME_KEYS}


class Sample(BaseModel):
    text: str
    correct: bool
    reject: bool
    completion_tokens: int
    finish_reason: str


class ProbeRecord(BaseModel):
    """One probed query: the task, its competence (fraction of samples correct) and every sample."""

    id: str
    task: Task
    competence: float
    correct: int
    samples: list[Sample]


@dataclass
class ProbeSummary:
    queries: int  # tasks in the (limited) task file
    probed: int  # sampled in this run
    resumed: int  # found already done in the output folder
    skipped: list[str]  # ids that could not be asked (see probe-errors.jsonl)
    mean_competence: float | None
    competence_by_difficulty: dict[int, float]
    seconds: float
    records: Path

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"records": str(self.records)}


def load_records(out_dir: str | Path, repair: bool = False) -> dict[str, ProbeRecord]:
    """Saved probe records by id. A cut-off last line (an interrupted run) is ignored, and cut
    from the file when ``repair``; any other bad line raises ProbeError with its line number."""
    path = Path(out_dir) / RECORDS_FILE
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records: dict[str, ProbeRecord] = {}
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = ProbeRecord.model_validate_json(line)
        except ValidationError as exc:
            if number == len(lines):  # no newline after it: the write was interrupted
                log.warning("probe_partial_line_dropped", file=str(path), line=number)
                if repair:
                    path.write_bytes(raw[: len(raw) - len(line)])
                continue
            problems.append(f"line {number}: {exc.errors()[0]['msg']}")
            continue
        if record.id in records:
            problems.append(f"line {number}: duplicate id {record.id!r}")
        records[record.id] = record
    if problems:
        raise ProbeError(f"{path}: unreadable probe records:\n  " + "\n  ".join(problems[:20]))
    return records


def _check_resumable(config: ProbeConfig, out_dir: Path) -> None:
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    changed = {key: (saved.get(key), value) for key, value in config.resume_key().items() if saved.get(key) != value}
    if changed:
        details = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise ProbeError(f"{out_dir} holds probe results for other settings ({details}); use another output folder")


def _save_config(out_dir: Path, config: ProbeConfig, backend_kind: str) -> None:
    saved = config.resume_key() | {"backend": backend_kind, "tasks": str(config.tasks), "tasks_format": config.tasks_format}
    (out_dir / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")


def _pending(tasks: list[Task], done: dict[str, ProbeRecord], out_dir: Path) -> list[Task]:
    for task in tasks:
        record = done.get(task.id)
        if record is not None and record.task != task:
            raise ProbeError(
                f"{out_dir / RECORDS_FILE} holds a different task under id {task.id!r}; "
                "the task file changed since that run: use another output folder"
            )
    return [task for task in tasks if task.id not in done]


async def _probe_one(backend: Backend, task: Task, config: ProbeConfig) -> ProbeRecord:
    request = GenerationRequest(
        messages=task.prompt_messages(), max_tokens=config.max_tokens, temperature=config.temperature, top_p=config.top_p
    )
    results = await asyncio.gather(*(backend.generate(request) for _ in range(config.samples)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:  # every sample has finished, so nothing is left running unobserved
        raise failures[0]
    generations = [r for r in results if isinstance(r, Generation)]
    samples = [
        Sample(
            text=g.text,
            correct=grade(task, g.text),
            reject=is_reject(g.text),
            completion_tokens=g.completion_tokens,
            finish_reason=g.finish_reason,
        )
        for g in generations
    ]
    correct = sum(s.correct for s in samples)
    return ProbeRecord(id=task.id, task=task, competence=correct / len(samples), correct=correct, samples=samples)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


async def run_probe(
    config: ProbeConfig, out_dir: str | Path, *, backend: Backend | None = None, progress: bool = True
) -> ProbeSummary:
    """Probe every task not yet in ``out_dir``; load the model unless ``backend`` is given (then
    the caller closes it). Records are appended as queries finish, so an interrupted run resumes."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    tasks = load_task_file(config.tasks, config.tasks_format)[: config.limit]
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_resumable(config, out_dir)
    done = load_records(out_dir, repair=True)
    todo = _pending(tasks, done, out_dir)
    resumed = len(tasks) - len(todo)
    log.info("probe_start", tasks=len(tasks), resumed=resumed, todo=len(todo), out=str(out_dir))
    if config.temperature == 0 and config.samples > 1:
        log.warning("probe_greedy_samples_identical", samples=config.samples)
    skipped: list[dict[str, str]] = []
    if not todo and not (out_dir / CONFIG_FILE).exists():
        _save_config(out_dir, config, config.backend_kind())
    if todo:
        owned = backend is None
        if backend is None:
            options = {"max_batch": config.max_batch} | config.backend_options
            backend = await asyncio.to_thread(load_backend, config.backend_kind(), config.model, **options)
        _save_config(out_dir, config, backend.kind)
        try:
            skipped = await _sample_all(backend, todo, config, out_dir, list(done.values()), len(tasks), progress)
        finally:
            if owned:
                await backend.close()
    _write_errors(out_dir, skipped)
    summary = _summary(tasks, load_records(out_dir), len(todo) - len(skipped), resumed, skipped, time.perf_counter() - started, out_dir)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    log.info("probe_done", probed=summary.probed, resumed=resumed, skipped=len(skipped), mean_competence=summary.mean_competence)
    return summary


async def _sample_all(
    backend: Backend, todo: list[Task], config: ProbeConfig, out_dir: Path, done: list[ProbeRecord], total: int, progress: bool
) -> list[dict[str, str]]:
    """Sample every pending task with enough queries in flight to keep ``in_flight`` requests busy."""
    queue: Iterator[Task] = iter(todo)
    skipped: list[dict[str, str]] = []
    competences = [record.competence for record in done]
    with (out_dir / RECORDS_FILE).open("a", encoding="utf-8") as records, progress_bar("probe", progress) as bar:
        bar_task = bar.add_task("", total=total, completed=total - len(todo))

        async def worker() -> None:
            for task in queue:  # a shared iterator: each task goes to exactly one worker
                try:
                    record = await _probe_one(backend, task, config)
                except PromptTooLongError as exc:
                    log.warning("probe_query_skipped", id=task.id, reason=str(exc))
                    skipped.append({"id": task.id, "reason": str(exc)})
                    bar.advance(bar_task)
                    continue
                records.write(record.model_dump_json() + "\n")
                records.flush()
                competences.append(record.competence)
                bar.update(bar_task, advance=1, description=f"mean competence {_mean(competences):.2f}")

        workers = [asyncio.create_task(worker()) for _ in range(max(1, config.in_flight // config.samples))]
        try:
            await asyncio.gather(*workers)
        finally:
            for running in workers:
                running.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return skipped


def _write_errors(out_dir: Path, skipped: list[dict[str, str]]) -> None:
    path = out_dir / ERRORS_FILE
    if skipped:
        path.write_text("".join(json.dumps(row) + "\n" for row in skipped))
    elif path.exists():
        path.unlink()


def _summary(
    tasks: list[Task], records: dict[str, ProbeRecord], probed: int, resumed: int,
    skipped: list[dict[str, str]], seconds: float, out_dir: Path,
) -> ProbeSummary:
    wanted = [records[t.id] for t in tasks if t.id in records]
    by_level: dict[int, list[float]] = defaultdict(list)
    for record in wanted:
        if record.task.difficulty is not None:
            by_level[record.task.difficulty].append(record.competence)
    return ProbeSummary(
        queries=len(tasks),
        probed=probed,
        resumed=resumed,
        skipped=[row["id"] for row in skipped],
        mean_competence=_mean([r.competence for r in wanted]),
        competence_by_difficulty={level: _mean(values) or 0.0 for level, values in sorted(by_level.items())},
        seconds=round(seconds, 2),
        records=out_dir / RECORDS_FILE,
    )


def probe(config: ProbeConfig, out_dir: str | Path, progress: bool = True) -> ProbeSummary:
    """Run ``run_probe`` in a fresh event loop (call from a ``__main__``-guarded entry point: vLLM spawns processes)."""
    return asyncio.run(run_probe(config, out_dir, progress=progress))
