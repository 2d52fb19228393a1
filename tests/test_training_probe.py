"""Stage 0, competence probing: sampling, grading, the output folder, and resuming."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from disrouter.node.backends import Backend, Generation, GenerationRequest, PromptTooLongError, load_backend
from disrouter.training.probe import (
    CONFIG_FILE,
    ERRORS_FILE,
    RECORDS_FILE,
    SUMMARY_FILE,
    ProbeConfig,
    ProbeError,
    load_records,
    run_probe,
)
from disrouter.training.synthetic import write_synthetic
from disrouter.training.tasks import Task, write_tasks


class ScriptedBackend(Backend):
    """Answers from a table, cycling through each question's replies; counts what it is asked."""

    kind = "scripted"

    def __init__(self, replies: dict[str, list[str]], delay_s: float = 0.01) -> None:
        self.replies = replies
        self.delay_s = delay_s
        self.model_name = "scripted"
        self.context_length = 2048
        self.calls: list[GenerationRequest] = []
        self.in_flight = self.peak_in_flight = 0

    async def generate(self, request: GenerationRequest, on_text=None) -> Generation:  # noqa: ANN001
        question = request.messages[-1]["content"]
        if question.startswith("TOO LONG"):
            raise PromptTooLongError("prompt is 9999 tokens")
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        await asyncio.sleep(self.delay_s)
        self.in_flight -= 1
        replies = self.replies[question]
        text = replies[sum(c.messages[-1]["content"] == question for c in self.calls) % len(replies)]
        self.calls.append(request)
        return Generation(text=text, prompt_tokens=5, completion_tokens=len(text.split()))


def _tasks(tmp_path: Path, count: int = 6) -> tuple[Path, dict[str, list[str]]]:
    """Addition tasks; task i gets i of 4 replies right (capped), so competence is min(i, 4) / 4."""
    tasks, replies = [], {}
    for i in range(count):
        question = f"What is {i} + 10?"
        tasks.append(Task(id=f"add-{i}", question=question, answer=str(i + 10), task="numeric", difficulty=1 + i % 2))
        right, wrong = f"{i} + 10 = {i + 10}", "I don't know!" if i % 2 else "It is 7."
        replies[question] = [right] * min(i, 4) + [wrong] * (4 - min(i, 4))
    return write_tasks(tasks, tmp_path / "tasks.jsonl"), replies


def _config(tasks: Path, **overrides: object) -> ProbeConfig:
    return ProbeConfig(**({"model": "scripted", "tasks": tasks, "samples": 4, "max_tokens": 16, "in_flight": 8} | overrides))


async def test_probe_grades_samples_and_saves_competence(tmp_path: Path) -> None:
    tasks, replies = _tasks(tmp_path)
    backend = ScriptedBackend(replies)
    out = tmp_path / "probe"

    summary = await run_probe(_config(tasks, temperature=0.9), out, backend=backend, progress=False)

    records = load_records(out)
    assert sorted(records) == [f"add-{i}" for i in range(6)]
    for i in range(6):
        record = records[f"add-{i}"]
        assert record.competence == min(i, 4) / 4 and record.correct == min(i, 4)
        assert len(record.samples) == 4 and sum(s.correct for s in record.samples) == record.correct
        assert all(s.reject == (s.text == "I don't know!") for s in record.samples)
        assert record.task.answer == str(i + 10)
    # the plain question, sampled as configured
    assert {(c.temperature, c.max_tokens, len(c.messages)) for c in backend.calls} == {(0.9, 16, 1)}
    assert len(backend.calls) == 24
    assert 4 < backend.peak_in_flight <= 8  # queries are sampled concurrently, within in_flight
    assert (summary.queries, summary.probed, summary.resumed, summary.skipped) == (6, 6, 0, [])
    assert summary.mean_competence == pytest.approx(sum(min(i, 4) / 4 for i in range(6)) / 6, abs=1e-4)
    assert summary.competence_by_difficulty == {1: pytest.approx((0 + 0.5 + 1) / 3, abs=1e-4), 2: pytest.approx((0.25 + 0.75 + 1) / 3, abs=1e-4)}
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert saved == {"model": "scripted", "samples": 4, "temperature": 0.9, "top_p": 1.0, "max_tokens": 16, "backend": "scripted", "tasks": str(tasks), "tasks_format": "tasks"}
    assert json.loads((out / SUMMARY_FILE).read_text())["probed"] == 6
    assert not (out / ERRORS_FILE).exists()


async def test_probe_resumes_where_an_interrupted_run_stopped(tmp_path: Path) -> None:
    tasks, replies = _tasks(tmp_path)
    out = tmp_path / "probe"
    await run_probe(_config(tasks), out, backend=ScriptedBackend(replies), progress=False)
    lines = (out / RECORDS_FILE).read_text().splitlines(keepends=True)
    # keep two finished queries and half of a third line, as a killed run leaves them
    (out / RECORDS_FILE).write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    kept = {json.loads(line)["id"] for line in lines[:2]}

    backend = ScriptedBackend(replies)
    summary = await run_probe(_config(tasks), out, backend=backend, progress=False)

    asked = {c.messages[-1]["content"] for c in backend.calls}
    assert len(backend.calls) == 4 * 4 and len(asked) == 4
    assert not any(question.startswith(f"What is {k.split('-')[1]} ") for k in kept for question in asked)
    assert (summary.probed, summary.resumed) == (4, 2)
    assert sorted(load_records(out)) == [f"add-{i}" for i in range(6)]
    assert len((out / RECORDS_FILE).read_text().splitlines()) == 6

    # nothing left to sample: no model is loaded (loading "scripted" would fail)
    summary = await run_probe(_config(tasks), out, progress=False)
    assert (summary.probed, summary.resumed) == (0, 6)


async def test_probe_loads_the_configured_backend_and_closes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks, replies = _tasks(tmp_path, count=2)
    loaded: list[tuple[str, str, dict]] = []
    closed: list[bool] = []

    class Owned(ScriptedBackend):
        async def close(self) -> None:
            closed.append(True)

    def fake_load(kind: str, model: str, **options: object) -> Backend:
        loaded.append((kind, model, options))
        return Owned(replies)

    monkeypatch.setattr("disrouter.training.probe.load_backend", fake_load)
    config = _config(tasks, backend="transformers", max_batch=4, backend_options={"device": "cpu", "concurrency": 1})
    await run_probe(config, tmp_path / "probe", progress=False)

    assert loaded == [("transformers", "scripted", {"max_batch": 4, "device": "cpu", "concurrency": 1})]
    assert closed == [True]


async def test_probe_refuses_to_mix_settings_or_task_files(tmp_path: Path) -> None:
    tasks, replies = _tasks(tmp_path, count=2)
    out = tmp_path / "probe"
    await run_probe(_config(tasks), out, backend=ScriptedBackend(replies), progress=True)

    with pytest.raises(ProbeError, match=r"other settings \(samples 4 -> 8\)"):
        await run_probe(_config(tasks, samples=8), out, backend=ScriptedBackend(replies), progress=False)

    write_tasks([Task(id="add-0", question="What is 0 + 10?", answer="11", task="numeric")], tasks)
    with pytest.raises(ProbeError, match="different task under id 'add-0'"):
        await run_probe(_config(tasks), out, backend=ScriptedBackend(replies), progress=False)


async def test_probe_records_queries_it_cannot_ask_and_retries_them(tmp_path: Path) -> None:
    tasks, replies = _tasks(tmp_path, count=2)
    rows = tasks.read_text() + json.dumps({"id": "long", "question": "TOO LONG " + "x " * 10, "answer": "1", "task": "numeric"}) + "\n"
    tasks.write_text(rows)
    out = tmp_path / "probe"

    summary = await run_probe(_config(tasks), out, backend=ScriptedBackend(replies), progress=False)

    assert summary.skipped == ["long"] and summary.probed == 2
    assert [json.loads(line)["id"] for line in (out / ERRORS_FILE).read_text().splitlines()] == ["long"]
    assert "long" not in load_records(out)
    backend = ScriptedBackend(replies)
    summary = await run_probe(_config(tasks), out, backend=backend, progress=False)
    assert summary.skipped == ["long"] and backend.calls == []  # only the skipped query was tried again


def test_probe_config_from_a_config_file_section(tmp_path: Path) -> None:
    config = ProbeConfig.from_dict({"model": "smollm2-135m", "tasks": "data/tasks.jsonl", "samples": 2}, base_dir=tmp_path)
    assert config.tasks == tmp_path / "data" / "tasks.jsonl"
    assert (config.samples, config.temperature, config.backend) == (2, 0.7, "auto")
    assert ProbeConfig(model="m", tasks="t.jsonl").samples == 8

    with pytest.raises(ProbeError, match=r"unknown keys \['sampels'\]"):
        ProbeConfig.from_dict({"model": "m", "tasks": "t", "sampels": 2})
    with pytest.raises(ProbeError, match="missing tasks"):
        ProbeConfig.from_dict({"model": "m"})
    with pytest.raises(ProbeError, match="samples must be at least 1; backend 'tpu'"):
        ProbeConfig(model="m", tasks="t", samples=0, backend="tpu")


def test_auto_backend_is_vllm_when_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    config = ProbeConfig(model="m", tasks="t")
    assert ProbeConfig(model="m", tasks="t", backend="transformers").backend_kind() == "transformers"

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    assert config.backend_kind() == "transformers"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a))
    assert config.backend_kind() == "vllm"


class NeverBackend(ScriptedBackend):
    async def generate(self, request: GenerationRequest, on_text=None) -> Generation:  # noqa: ANN001
        raise AssertionError("a finished probe must not sample again")


@pytest.mark.slow
async def test_probe_smollm2_on_synthetic_queries(tmp_path: Path, smollm2_folder: Path) -> None:
    """The real model through the transformers backend, whose micro-batching serves the samples."""
    tasks = write_synthetic(tmp_path / "tasks.jsonl", kinds=["capitals", "addition"], per_level=3, seed=0, max_level=1)
    config = ProbeConfig(model=str(smollm2_folder), tasks=tasks, samples=2, max_tokens=24, backend="transformers", temperature=0.7)
    out = tmp_path / "probe"
    backend = await asyncio.to_thread(load_backend, "transformers", str(smollm2_folder))

    try:
        summary = await run_probe(config, out, backend=backend, progress=False)
    finally:
        await backend.close()

    assert backend.batches_run < 12  # 6 queries x 2 samples, asked together, share batched generate calls

    records = load_records(out)
    assert len(records) == summary.queries == summary.probed == 6
    for record in records.values():
        assert 0.0 <= record.competence <= 1.0
        assert len(record.samples) == 2 and record.competence == sum(s.correct for s in record.samples) / 2
        assert all(s.text and s.completion_tokens > 0 for s in record.samples)
    capitals = [r for r in records.values() if r.task.meta["generator"] == "capitals"]
    assert sum(r.correct for r in capitals) > 0, [s.text for r in capitals for s in r.samples]  # famous capitals: SmolLM2 knows some
    lines = (out / RECORDS_FILE).read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["task"]["id"] == json.loads(line)["id"] for line in lines)

    summary = await run_probe(config, out, backend=NeverBackend({}), progress=False)
    assert (summary.probed, summary.resumed) == (0, 6)
    assert load_records(out) == records
