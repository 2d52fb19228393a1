"""What serving real models costs: batching gain, the price of a probe rejection, vLLM against
transformers, all on SmolLM2-135M-Instruct loaded in this process."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from disrouter.mesh.protocol import Query
from disrouter.node.backends import Backend, GenerationRequest
from disrouter.node.calibration import Calibration
from disrouter.node.policies import GeneratePolicy, ProbePolicy

TOPICS = ["a lighthouse", "a dragon", "the moon", "a robot", "the ocean", "a library", "a train", "a garden",
          "a volcano", "a violin", "a desert", "a city", "a storm", "a forest", "a bakery", "a comet"]
QUESTIONS = ["What is the capital of France?", "What is 4718 * 8391?", "Who wrote Romeo and Juliet?",
             "What is the integral of x^3 * ln(x) dx?", "How many legs does a spider have?",
             "What is the boiling point of water in Kelvin?", "Name the largest planet.", "What is 17 * 23?"]
ALWAYS_REJECT = Calibration(thresholds={0.5: 0.0}, skip_thresholds={0.5: 1.0})  # every probe forwards


@dataclass
class Throughput:
    queries_per_s: float
    tokens_per_s: float


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
    return Throughput(round(queries / elapsed, 3), round(tokens / elapsed, 1))


@dataclass
class RejectCost:
    probe_reject_ms: float  # mean time of a probe policy's decision to forward
    generate_ms: float  # mean time of the generate policy's decision (its answer, or its reject)
    generate_reject_rate: float


async def reject_cost(backend: Backend, max_tokens: int, rounds: int = 1) -> RejectCost:
    """The same questions, one at a time: probe forwarding each vs generate answering each."""
    queries = [Query(messages=[{"role": "user", "content": q}], max_tokens=max_tokens) for q in QUESTIONS] * rounds
    probe, generate = ProbePolicy(ALWAYS_REJECT), GeneratePolicy()
    await probe.decide(backend, queries[0])  # warm up
    started = time.perf_counter()
    for query in queries:
        if not (await probe.decide(backend, query)).reject:
            raise RuntimeError("the probe policy was calibrated to forward every query")
    probe_s = time.perf_counter() - started
    started, rejects = time.perf_counter(), 0
    for query in queries:
        decision = await generate.decide(backend, query)
        rejects += decision.reject
    generate_s = time.perf_counter() - started
    return RejectCost(round(probe_s * 1000 / len(queries), 1), round(generate_s * 1000 / len(queries), 1),
                      round(rejects / len(queries), 3))
