"""What the mesh itself costs: hop latency, throughput and memory of real `disrouter-node`
processes with the instant backend, each against raw nats-py on the same server."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
from nats.aio.client import Client

from disrouter.local.processes import NodeProcess, start_node

REQUEST_TIMEOUT_S = 30.0
CASCADE_COSTS = (0.1, 0.5, 0.9)


@dataclass
class Percentiles:
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Percentiles:
        cuts = statistics.quantiles([s * 1000 for s in seconds], n=100, method="inclusive")
        return cls(round(cuts[49], 3), round(cuts[98], 3))


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def query_payload(text: str) -> bytes:
    """A client query as it goes on the wire (msgpack), with a fresh id."""
    return msgpack.packb({"v": 1, "id": uuid.uuid4().hex, "messages": [{"role": "user", "content": text}]})


def check_answer(payload: bytes, hops: int) -> None:
    reply = msgpack.unpackb(payload)
    if "error" in reply:
        raise RuntimeError(f"the mesh replied with an error: {reply['error']}")
    if len(reply["path"]) != hops:
        raise RuntimeError(f"expected a {hops}-hop path, got {[hop['node_id'] for hop in reply['path']]}")


def start_cascade(nats_url: str, prefix: str, log_dir: Path) -> list[NodeProcess]:
    """Instant nodes, one per cost; the cheapest serves the ingress subject."""
    return [
        start_node(f"bench-tier{i}", ["--backend", "instant", "--model", f"tier{i}", "--cost", str(cost),
                                      "--prefix", prefix, "--nats", nats_url, *(["--entry"] if i == 0 else [])], log_dir)
        for i, cost in enumerate(CASCADE_COSTS)
    ]


def start_echo(nats_url: str, subject: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "disrouter.bench.echo", nats_url, subject],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    if process.stdout is None or process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError("the raw echo responder did not start")
    return process


async def hop_latency(nc: Client, ingress: str, echo: str, hops: int, samples: int) -> tuple[list[float], list[float]]:
    """Sequential latencies of a query through ``hops`` rejecting-then-answering instant nodes,
    and of ``hops`` chained raw request/replies; interleaved so both see the same noise."""
    mesh, raw = [], []
    for i in range(samples + samples // 10):
        warm = i >= samples // 10
        started = time.perf_counter()
        reply = await nc.request(ingress, query_payload("#reject route me"), timeout=REQUEST_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        check_answer(reply.data, hops)
        if warm:
            mesh.append(elapsed)
        started = time.perf_counter()
        for _ in range(hops):
            await nc.request(echo, b"x" * 96, timeout=REQUEST_TIMEOUT_S)
        if warm:
            raw.append(time.perf_counter() - started)
    return mesh, raw


async def throughput(send: Callable[[], Awaitable[None]], total: int, in_flight: int) -> float:
    """Requests per second with ``in_flight`` requests outstanding at all times."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return total / (time.perf_counter() - started)


def mesh_sender(nc: Client, ingress: str) -> Callable[[], Awaitable[None]]:
    async def send() -> None:
        check_answer((await nc.request(ingress, query_payload("hello"), timeout=REQUEST_TIMEOUT_S)).data, 1)

    return send


def raw_sender(nc: Client, echo: str) -> Callable[[], Awaitable[None]]:
    async def send() -> None:
        msgpack.unpackb((await nc.request(echo, query_payload("hello"), timeout=REQUEST_TIMEOUT_S)).data)

    return send
