"""What the mesh itself costs: hop latency, throughput and memory of real `disrouter-node`
processes with the instant backend, each against raw nats-py on the same server.

Hop latency has two baselines. The like-for-like one is a relay chain (``relay.py``): as many raw
nats-py processes as the cascade has nodes, passing a query along the same subjects with payloads
of the same sizes as the mesh's hand-offs (captured from a real query), the last one publishing
the final reply to the client. The other is as many sequential request/replies to one echo
process (each leg a round trip through the server), which the README quoted before.
"""

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
from disrouter.mesh.subjects import Subjects

REQUEST_TIMEOUT_S = 30.0
CASCADE_COSTS = (0.1, 0.5, 0.9)
REJECT_TEXT = "#reject route me"  # the instant backend's cue: the first tiers reject, the last answers


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


def _start_ready(command: list[str], what: str) -> subprocess.Popen:
    """Start a helper process that prints ``ready`` once subscribed."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    if process.stdout is None or process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"the {what} did not start")
    return process


def start_echo(nats_url: str, subject: str) -> subprocess.Popen:
    return _start_ready([sys.executable, "-m", "disrouter.bench.echo", nats_url, subject], "raw echo responder")


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


async def capture_legs(nc: Client, mesh: Subjects, relay: Subjects, hops: int) -> list[dict]:
    """Send one query through the cascade and record each leg: subject, queue group, payload.

    Returns the legs as the relay chain replays them (subjects moved to ``relay``'s prefix), then
    the final reply's payload.
    """
    seen: list[tuple[str, bytes]] = []

    async def record(msg) -> None:  # noqa: ANN001
        seen.append((msg.subject, msg.data))

    tap = await nc.subscribe(f"{mesh.prefix}.>", cb=record)
    try:
        payload = query_payload(REJECT_TEXT)
        reply = await nc.request(mesh.ingress, payload, timeout=REQUEST_TIMEOUT_S)
        check_answer(reply.data, hops)
        await nc.flush()
    finally:
        await tap.unsubscribe()
    query_id = msgpack.unpackb(payload)["id"]
    legs = [(subject, data) for subject, data in seen if msgpack.unpackb(data).get("id") == query_id]
    if len(legs) != hops:
        raise RuntimeError(f"expected {hops} legs through the cascade, saw {[subject for subject, _ in legs]}")
    replayed = []
    for subject, data in legs:
        queue = Subjects.ingress_queue if subject == mesh.ingress else Subjects.model_queue
        replayed.append({"subject": relay.prefix + subject[len(mesh.prefix):], "queue": queue, "payload": data})
    return [*replayed, {"payload": reply.data}]


def start_relay_chain(nats_url: str, legs: list[dict], legs_file: Path) -> list[subprocess.Popen]:
    """One relay process per leg (``len(legs) - 1`` of them), replaying ``legs``."""
    legs_file.write_bytes(msgpack.packb(legs))
    chain = []
    try:
        for index in range(len(legs) - 1):
            chain.append(_start_ready([sys.executable, "-m", "disrouter.bench.relay", nats_url, str(legs_file), str(index)], f"relay {index}"))
    except RuntimeError:
        stop(chain)
        raise
    return chain


@dataclass
class LatencyArms:
    mesh: list[float]
    relay: list[float]
    round_trips: list[float]


async def hop_latency(nc: Client, mesh_ingress: str, relay_ingress: str, echo: str, hops: int, samples: int, echo_bytes: int) -> LatencyArms:
    """Sequential latencies of a query through ``hops`` rejecting-then-answering instant nodes,
    through the relay chain, and of ``hops`` chained request/replies to the echo process;
    interleaved so all three see the same noise. The first tenth is a warm-up."""
    arms = LatencyArms([], [], [])
    for i in range(samples + samples // 10):
        warm = i >= samples // 10
        started = time.perf_counter()
        reply = await nc.request(mesh_ingress, query_payload(REJECT_TEXT), timeout=REQUEST_TIMEOUT_S)
        mesh_s = time.perf_counter() - started
        check_answer(reply.data, hops)
        started = time.perf_counter()
        reply = await nc.request(relay_ingress, query_payload(REJECT_TEXT), timeout=REQUEST_TIMEOUT_S)
        relay_s = time.perf_counter() - started
        check_answer(reply.data, hops)
        started = time.perf_counter()
        for _ in range(hops):
            await nc.request(echo, b"x" * echo_bytes, timeout=REQUEST_TIMEOUT_S)
        if warm:
            arms.mesh.append(mesh_s)
            arms.relay.append(relay_s)
            arms.round_trips.append(time.perf_counter() - started)
    return arms


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
