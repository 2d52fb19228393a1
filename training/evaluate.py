"""Evaluation on held-out queries: per scenario alpha, does the model answer what it knows and
reject what it does not?

For every probed query and alpha the model answers greedily under the scenario instruction (as a
node's ``generate`` policy does) and P(reject phrase | prompt) is read from one prefill (as the
``probe`` policy does). The label is the paper's: a reject is right when the BASE model's Stage 0
competence on the query is below 1 - alpha. Reject precision / recall / F1 treat "reject" as the
positive class; a ratio with an empty denominator counts as 0, except accuracy when answering,
which is None when nothing was answered. ``base_answers`` gives the always-answer baseline: the
model's greedy answer to the plain question, as the node's ``always`` policy asks it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from disrouter.mesh.objective import DEFAULT_ALPHAS, DEFAULT_GAMMA, check_alphas, should_reject, utility
from disrouter.node.backends import BACKENDS, Backend, GenerationRequest, PromptTooLongError, load_backend
from disrouter.node.prompts import REJECT_PHRASE, is_reject, with_scenario

from .config import TrainingConfigError, config_from_dict
from .graders import grade
from .progress import progress_bar
from .probe import ProbeRecord

log = structlog.get_logger("disrouter.training.evaluate")

@dataclass
class EvalStageConfig:
    """The ``eval`` section of a training config."""

    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    max_tokens: int = 128
    in_flight: int = 32  # requests outstanding at once; the backend batches them
    backend: str = "transformers"
    baseline: bool = True  # also evaluate the untrained model, prompted with demonstrations like an untrained node
    gamma: float = DEFAULT_GAMMA
    max_batch: int = 16  # rows per batched generate call (transformers backend)
    backend_options: dict[str, Any] = field(default_factory=dict)  # passed to load_backend

    def __post_init__(self) -> None:
        try:
            self.alphas = [float(alpha) for alpha in self.alphas]
        except (TypeError, ValueError):
            raise TrainingConfigError(f"eval config: alphas must be a list of numbers, got {self.alphas!r}") from None
        problems = check_alphas(self.alphas)
        if self.max_tokens < 1 or self.in_flight < 1 or self.max_batch < 1:
            problems.append("max_tokens, in_flight and max_batch must be at least 1")
        if self.gamma < 0:
            problems.append("gamma must not be negative")
        if self.backend not in BACKENDS:
            problems.append(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if problems:
            raise TrainingConfigError("eval config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EvalStageConfig:
        """A config from a mapping (e.g. parsed YAML); unknown keys raise TrainingConfigError."""
        return config_from_dict(cls, data, "eval")


@dataclass(frozen=True)
class EvalRow:
    """One query under one alpha. ``rejected``, ``correct`` and ``text`` are None when nothing was
    generated; ``p_reject`` is None when the backend cannot score continuations."""

    id: str
    alpha: float
    competence: float
    rejected: bool | None
    correct: bool | None
    p_reject: float | None
    text: str | None = None

    @property
    def should_reject(self) -> bool:
        return should_reject(self.competence, self.alpha)


@dataclass(frozen=True)
class AlphaMetrics:
    """What a model's reject decisions are worth under one scenario."""

    n: int
    answer_rate: float
    accuracy_answered: float | None  # None: nothing was answered
    accuracy_overall: float
    reject_precision: float
    reject_recall: float
    reject_f1: float
    utility: float

    def to_json(self) -> dict[str, float | int | None]:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in dataclasses.asdict(self).items()}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def decision_metrics(decisions: Iterable[tuple[bool, bool, float]], alpha: float, gamma: float) -> AlphaMetrics:
    """Metrics of ``(rejected, should_reject, reward if answered)`` triples under ``alpha``; the
    answered reward is 1/0 for a graded answer (or an expected correctness)."""
    triples = list(decisions)
    n = len(triples)
    rejects = sum(rejected for rejected, _, _ in triples)
    positives = sum(label for _, label, _ in triples)
    true_rejects = sum(rejected and label for rejected, label, _ in triples)
    answered_reward = sum(reward for rejected, _, reward in triples if not rejected)
    precision, recall = _ratio(true_rejects, rejects), _ratio(true_rejects, positives)
    return AlphaMetrics(
        n=n,
        answer_rate=_ratio(n - rejects, n),
        accuracy_answered=answered_reward / (n - rejects) if n - rejects else None,
        accuracy_overall=_ratio(answered_reward, n),
        reject_precision=precision,
        reject_recall=recall,
        reject_f1=_ratio(2 * precision * recall, precision + recall),
        utility=utility([(rejected, reward) for rejected, _, reward in triples], alpha, gamma),
    )


def alpha_metrics(rows: Iterable[EvalRow], alpha: float, gamma: float = DEFAULT_GAMMA) -> AlphaMetrics:
    """Metrics of the generated answers among ``rows`` under ``alpha`` (rows of other alphas are ignored)."""
    picked = [row for row in rows if math.isclose(row.alpha, alpha) and row.rejected is not None]
    return decision_metrics(((bool(r.rejected), r.should_reject, float(bool(r.correct))) for r in picked), alpha, gamma)


@dataclass
class ModelEval:
    """One model's evaluation: every (query, alpha) row and, when answers were generated, metrics per alpha."""

    model: str
    demonstrations: bool
    alphas: list[float]
    gamma: float
    rows: list[EvalRow]
    skipped: list[str] = field(default_factory=list)  # ids whose prompt did not fit the context
    seconds: float = 0.0

    @property
    def generated(self) -> bool:
        return any(row.rejected is not None for row in self.rows)

    def metrics(self) -> dict[float, AlphaMetrics]:
        """Metrics per alpha (empty when only P(reject) was measured)."""
        if not self.generated:
            return {}
        return {alpha: alpha_metrics(self.rows, alpha, self.gamma) for alpha in self.alphas}

    def rows_for(self, alpha: float) -> list[EvalRow]:
        return [row for row in self.rows if math.isclose(row.alpha, alpha)]


async def _evaluate_one(
    backend: Backend, record: ProbeRecord, alpha: float, config: EvalStageConfig, demonstrations: bool, generate: bool, instruction: bool
) -> EvalRow:
    plain = record.task.prompt_messages()
    chat = with_scenario(plain, alpha, demonstrations=demonstrations) if instruction else plain
    p_reject = None
    if instruction and "score" in backend.capabilities:
        logprob, _ = await backend.continuation_logprob(chat, REJECT_PHRASE)
        p_reject = math.exp(logprob)
    text = rejected = correct = None
    if generate:
        generation = await backend.generate(GenerationRequest(messages=chat, max_tokens=config.max_tokens, temperature=0.0))
        text = generation.text
        rejected, correct = is_reject(text), grade(record.task, text)
    return EvalRow(record.id, alpha, record.competence, rejected, correct, p_reject, text)


async def open_backend(model: str | Path, config: EvalStageConfig) -> Backend:
    """The backend the eval config names, loaded with ``model`` (the caller closes it)."""
    options = {"max_batch": config.max_batch} | config.backend_options
    return await asyncio.to_thread(load_backend, config.backend, str(model), **options)


async def evaluate_model(
    model: str | Path,
    records: Sequence[ProbeRecord],
    config: EvalStageConfig,
    demonstrations: bool,
    progress: bool = True,
    generate: bool = True,
    backend: Backend | None = None,
    instruction: bool = True,
) -> ModelEval:
    """Evaluate ``model`` on ``records`` under every alpha of ``config``; ``generate=False`` only
    measures P(reject) (enough to calibrate); ``instruction=False`` asks the plain question (no
    scenario, no P(reject)). Loads the model unless ``backend`` is given (then the caller closes it)."""
    started = time.perf_counter()
    owned = backend is None
    if backend is None:
        backend = await open_backend(model, config)
    if instruction and "score" not in backend.capabilities:
        log.warning("eval_no_reject_probability", backend=backend.kind, reason="the backend cannot score continuations")
    jobs = [(record, alpha) for alpha in config.alphas for record in records]
    log.info("eval_start", model=str(model), queries=len(records), alphas=config.alphas, generate=generate, demonstrations=demonstrations)
    rows: list[EvalRow] = []
    skipped: set[str] = set()
    slots = asyncio.Semaphore(config.in_flight)
    try:
        with progress_bar("eval", progress) as bar:
            bar_task = bar.add_task(Path(str(model)).name, total=len(jobs))

            async def run(record: ProbeRecord, alpha: float) -> None:
                async with slots:
                    try:
                        rows.append(await _evaluate_one(backend, record, alpha, config, demonstrations, generate, instruction))
                    except PromptTooLongError as exc:
                        log.warning("eval_query_skipped", id=record.id, alpha=alpha, reason=str(exc))
                        skipped.add(record.id)
                bar.advance(bar_task)

            tasks = [asyncio.create_task(run(record, alpha)) for record, alpha in jobs]
            try:
                await asyncio.gather(*tasks)
            finally:  # on a failure, stop the rest before the backend closes under them
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if owned:
            await backend.close()
    order = {(alpha, record.id): i for i, (record, alpha) in enumerate(jobs)}
    rows.sort(key=lambda row: order[(row.alpha, row.id)])
    seconds = round(time.perf_counter() - started, 2)
    result = ModelEval(str(model), demonstrations, list(config.alphas), config.gamma, rows, sorted(skipped), seconds)
    for alpha, metrics in result.metrics().items() if instruction else ():
        log.info("eval_alpha", model=str(model), alpha=alpha, **metrics.to_json())
    return result


async def base_answers(
    model: str | Path, records: Sequence[ProbeRecord], config: EvalStageConfig, progress: bool = True, backend: Backend | None = None
) -> dict[str, bool]:
    """Whether ``model``'s greedy answer to each plain question is right (the always-answer baseline)."""
    once = dataclasses.replace(config, alphas=config.alphas[:1])  # the plain question does not depend on alpha
    result = await evaluate_model(model, records, once, demonstrations=False, progress=progress, backend=backend, instruction=False)
    return {row.id: bool(row.correct) for row in result.rows}
