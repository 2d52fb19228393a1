"""What serving real models costs: batching gain, what each decision costs under each policy, vLLM
against transformers, all on SmolLM2-135M-Instruct loaded in this process."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from disrouter.mesh.protocol import Query
from disrouter.node.backends import Backend, GenerationRequest
from disrouter.node.calibration import Calibration
from disrouter.node.policies import GeneratePolicy, Policy, ProbePolicy

TOPICS = ["a lighthouse", "a dragon", "the moon", "a robot", "the ocean", "a library", "a train", "a garden",
          "a volcano", "a violin", "a desert", "a city", "a storm", "a forest", "a bakery", "a comet"]
# Questions no few-shot demonstration in node/prompts.py resembles (no products of big numbers,
# capitals, sports winners or "how many"), so the generate policy's rejections are the model's own.
QUESTIONS = ["Which planet is known as the Red Planet?", "Who painted the Mona Lisa?", "What is the chemical symbol for gold?",
             "Who wrote Romeo and Juliet?", "What is the integral of x^3 * ln(x) dx?", "Who was the mayor of Ulm in 1712?",
             "Who wrote Pride and Prejudice?", "Who discovered penicillin?", "Which author wrote War and Peace?",
             "Factor the polynomial x^4 - 5x^2 + 4.", "What language is spoken in Brazil?",
             "What was the closing price of IBM stock on 3 March 1987?"]
ALWAYS_REJECT = Calibration(thresholds={0.5: 0.0}, skip_thresholds={0.5: 1.0})  # every probe forwards
NEVER_REJECT = Calibration(thresholds={0.5: 1.0}, skip_thresholds={0.5: 1.0})  # every probe answers


@dataclass
class Throughput:
    queries_per_s: float
    tokens_per_s: float
    completion_tokens: int  # the arm's total, so arms can be checked for equal work


def _story(i: int, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}],
                             max_tokens=max_tokens)


async def throughput(backend: Backend, concurrency: int, queries: int, max_tokens: int) -> Throughput:
    """Completions of ``max_tokens`` with ``concurrency`` requests in flight."""
    await backend.generate(_story(0, 4))  # warm up
    next_index, tokens = 0, 0

    async def worker() -> None:
        nonlocal next_index, tokens
        while next_index < queries:
            i, next_index = next_index, next_index + 1
            generation = await backend.generate(_story(i, max_tokens))
            tokens += generation.completion_tokens  # not `tokens += await ...`: that reads tokens before awaiting

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Throughput(round(queries / elapsed, 3), round(tokens / elapsed, 1), tokens)


@dataclass
class Timing:
    """One policy's decisions on the questions, one at a time: milliseconds and whether it rejected."""

    ms: list[float]
    rejected: list[bool]

    def mean_ms(self, which: list[int] | None = None, rejected: bool | None = None) -> float | None:
        """Mean over the questions in ``which`` (default all) whose decision was ``rejected`` (default any)."""
        picked = [self.ms[i] for i in (which if which is not None else range(len(self.ms)))
                  if rejected is None or self.rejected[i] == rejected]
        return round(statistics.fmean(picked), 1) if picked else None


async def time_decisions(backend: Backend, policy: Policy, queries: list[Query]) -> Timing:
    await policy.decide(backend, queries[0])  # warm up (and fill the prefix cache, if used)
    timing = Timing([], [])
    for query in queries:
        started = time.perf_counter()
        decision = await policy.decide(backend, query)
        timing.ms.append((time.perf_counter() - started) * 1000)
        timing.rejected.append(decision.reject)
    return timing


@contextmanager
def prefix_cache(backend: Backend, on: bool) -> Iterator[None]:
    """Score with (as served) or without the KV cache of the shared prompt prefix."""
    if not hasattr(backend, "prefix_cache"):
        raise RuntimeError(f"the {backend.kind} backend has no prefix cache switch")
    before, backend.prefix_cache = backend.prefix_cache, on
    try:
        yield
    finally:
        backend.prefix_cache = before


@dataclass
class DecisionCosts:
    generate: Timing  # the paper's policy: its own answers and rejections
    probe_answer: Timing  # the probe calibrated to answer everything (prefix cache on, as served)
    probe_reject: Timing  # the probe calibrated to reject everything (prefix cache on, as served)
    probe_reject_no_cache: Timing  # the same without the prefix cache: as generate prefills
    rejections: dict[str, Timing]  # the questions both policies reject, timed again in rounds, per arm

    def both_reject(self) -> list[int]:
        """Questions that both policies reject (the probe's cost does not depend on its threshold)."""
        return [i for i, rejected in enumerate(self.generate.rejected) if rejected]

    def figures(self) -> dict[str, float | int | None]:
        pair = {arm: timing.mean_ms() for arm, timing in self.rejections.items()}
        ratio = lambda arm: None if pair["generate"] is None else round(pair[arm] / pair["generate"], 3)  # noqa: E731
        return {
            "reject_cost_ratio": ratio("probe_no_cache"),
            "reject_cost_ratio_served": ratio("probe"),
            "reject_cost_questions": len(self.both_reject()),
            "reject_cost_samples": len(self.rejections["generate"].ms),
            "rejected_questions_ms": pair,
            "decision_questions": len(self.generate.ms),
            "generate_answer_ms": self.generate.mean_ms(rejected=False),
            "generate_reject_ms": self.generate.mean_ms(rejected=True),
            "probe_answer_ms": self.probe_answer.mean_ms(),
            "probe_reject_ms": self.probe_reject.mean_ms(),
            "probe_reject_ms_no_cache": self.probe_reject_no_cache.mean_ms(),
        }


async def _timed(backend: Backend, policy: Policy, query: Query, timing: Timing) -> None:
    started = time.perf_counter()
    decision = await policy.decide(backend, query)
    timing.ms.append((time.perf_counter() - started) * 1000)
    timing.rejected.append(decision.reject)


async def rejection_rounds(backend: Backend, queries: list[Query], rounds: int) -> dict[str, Timing]:
    """The same rejected questions through each arm in turn, ``rounds`` times: a rejection against a rejection."""
    arms = {"generate": Timing([], []), "probe_no_cache": Timing([], []), "probe": Timing([], [])}
    generate, probe = GeneratePolicy(), ProbePolicy(ALWAYS_REJECT)
    for _ in range(rounds):
        for query in queries:
            await _timed(backend, generate, query, arms["generate"])
            with prefix_cache(backend, False):
                await _timed(backend, probe, query, arms["probe_no_cache"])
            with prefix_cache(backend, True):
                await _timed(backend, probe, query, arms["probe"])
    if not all(all(timing.rejected) for timing in arms.values()):
        raise RuntimeError("a question the generate policy rejected was answered when asked again")
    return arms


async def decision_costs(backend: Backend, max_tokens: int, questions: list[str] = QUESTIONS, rounds: int = 3) -> DecisionCosts:
    """Every policy and decision type on the same questions, one at a time; then the questions both
    reject, ``rounds`` more times through each arm."""
    queries = [Query(messages=[{"role": "user", "content": q}], max_tokens=max_tokens) for q in questions]
    generate = await time_decisions(backend, GeneratePolicy(), queries)
    with prefix_cache(backend, True):
        answer = await time_decisions(backend, ProbePolicy(NEVER_REJECT), queries)
        reject = await time_decisions(backend, ProbePolicy(ALWAYS_REJECT), queries)
    with prefix_cache(backend, False):
        reject_no_cache = await time_decisions(backend, ProbePolicy(ALWAYS_REJECT), queries)
    if any(answer.rejected) or not all(reject.rejected) or not all(reject_no_cache.rejected):
        raise RuntimeError("the probe policy did not follow the calibration that forces its decision")
    rejected = [queries[i] for i, r in enumerate(generate.rejected) if r]
    rejections = await rejection_rounds(backend, rejected, rounds) if rejected else {arm: Timing([], []) for arm in ("generate", "probe_no_cache", "probe")}
    return DecisionCosts(generate, answer, reject, reject_no_cache, rejections)
