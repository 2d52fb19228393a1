"""Crash tolerance (progress heartbeats, re-sends), backpressure (in-flight bound, `overloaded`) and load.

Figures (recovery time after SIGKILL, load counts, node RSS growth) are printed; run with ``-s``
to see them.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import signal
import sys
import time
import uuid
from pathlib import Path

import msgpack
import pytest
from conftest import REGISTRY_TTL_S, REPLIES, Mesh, wait_for
from rich.console import Console
from disrouter.bench.wire import WireCount

from disrouter.local.processes import start_node, stop_nodes, wait_until_registered
from disrouter.mesh.client import MeshClient, MeshError
from disrouter.mesh.connection import connect
from disrouter.mesh.protocol import Answer, Chunk, Error, ErrorCode, encode
from disrouter.mesh.subjects import Subjects
from disrouter.node.backends import Generation, GenerationRequest, TextSink
from disrouter.node.backends.instant import InstantBackend
from disrouter.node.runtime import Node

BIN = Path(sys.executable).parent


class SlowBackend(InstantBackend):
    """The instant rule, after ``delay`` seconds; records how many generations ran at once."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.running = 0
        self.most_running = 0

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay)
            return await super().generate(request, on_text)
        finally:
            self.running -= 1


async def add_instant(
    mesh: Mesh, key: str, cost: float, *, entry: bool = False, policy: str = "always", backend: InstantBackend | None = None, **settings: float
) -> Node:
    """An in-process node with the instant (or a slow) backend on the harness's mesh."""
    return await mesh.add(key, cost, "instant", entry=entry, policy=policy, backend=backend or InstantBackend(), settings=settings)


async def start_node_process(mesh: Mesh, model: str, key: str, cost: float, node_id: str, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(BIN / "disrouter-node"), "--model", str(mesh.models[model]), "--key", key, "--cost", str(cost),
        "--nats", mesh.url, "--prefix", mesh.prefix, "--node-id", node_id, "--registry-ttl", str(REGISTRY_TTL_S),
        *extra, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


async def _killed(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


# --- progress heartbeats ------------------------------------------------------------------------


async def test_heartbeats_go_only_to_clients_that_ask_for_them(mesh: Mesh) -> None:
    """A plain request/reply client takes the first message as the reply: it must be the Answer."""
    await add_instant(mesh, "slow", 0.1, entry=True, backend=SlowBackend(1.0), heartbeat_s=0.3)
    nc = await connect(mesh.url, name="raw")
    seen: dict[str, list[dict]] = collections.defaultdict(list)

    async def collect(msg) -> None:  # noqa: ANN001
        seen[msg.subject.rsplit(".", 1)[1]].append(json.loads(msg.data))

    inbox = nc.new_inbox()
    await nc.subscribe(f"{inbox}.*", cb=collect)
    for name, progress in (("plain", False), ("watching", True)):
        query = {"id": name, "messages": [{"role": "user", "content": "q"}], "progress": progress}
        await nc.publish(Subjects(mesh.prefix).ingress, json.dumps(query).encode(), reply=f"{inbox}.{name}")
    await wait_for(lambda: all(seen[n] and "text" in seen[n][-1] for n in ("plain", "watching")), 10, "both answers")
    await nc.close()

    assert [m["text"] for m in seen["plain"]] == ["ok"]  # one message, the Answer
    *beats, answer = seen["watching"]
    assert answer["text"] == "ok" and len(beats) >= 3  # one at once, then every 0.3 s for 1 s
    assert all(b["progress"] is True and b["id"] == "watching" and b["every"] == 0.3 and b["hops"] == 0 for b in beats)


async def test_a_silent_holder_is_re_sent_and_a_stale_sends_replies_never_reach_the_caller(nats_url: str) -> None:
    """A raw responder plays a node that heartbeats, then hangs; it answers the re-send, and only
    then the stale send's Error and late Answer arrive (they must be dropped)."""
    prefix = f"c{uuid.uuid4().hex[:8]}"
    nc = await connect(nats_url, name="fake-node")
    sends: list[tuple[str, dict]] = []

    async def entry(msg) -> None:  # noqa: ANN001
        query = msgpack.unpackb(msg.data)
        sends.append((msg.reply, query))
        if len(sends) == 1:  # take it, heartbeat once, then die silently
            await nc.publish(msg.reply, msgpack.packb({"v": 1, "id": query["id"], "progress": True, "node_id": "a", "hops": 0, "every": 0.2}))
            return
        first = sends[0][0]
        await nc.publish(first, encode(Error.of(ErrorCode.INTERNAL, "stale", query["id"])))
        await nc.publish(msg.reply, encode(Answer(id=query["id"], text="fresh", model="m", node_id="b", path=[])))
        await nc.publish(first, encode(Answer(id=query["id"], text="stale", model="m", node_id="a", path=[])))

    await nc.subscribe(f"{prefix}.ingress", cb=entry)
    async with await MeshClient.connect(nats_url, prefix) as client:
        started = time.monotonic()
        answer = await client.ask("q", timeout=30, retries=0)
        took = time.monotonic() - started
        again = await client.ask("q2", timeout=30, retries=0)  # the stale replies did not leak into this one
    await nc.close()

    assert answer.text == "fresh" and client.resends == 1 and took < 5  # 3 heartbeat periods of 0.2 s, not 30 s
    assert [q["progress"] for _, q in sends[:2]] == [True, True] and sends[0][1]["id"] == sends[1][1]["id"]
    assert sends[0][0] != sends[1][0]  # each send has its own reply subject
    assert again.text == "fresh"


async def test_a_sigkilled_node_mid_generation_is_recovered_from_within_seconds(mesh: Mesh) -> None:
    await mesh.add("small", 0.1, "reject", entry=True)
    await mesh.add("large", 0.9, "tier-c", policy="always")
    proc = await start_node_process(mesh, "babble", "middle", 0.5, "middle-proc", "--policy", "always",
                                    "--heartbeat", "1", "--max-in-flight", "8")
    try:
        await mesh.all_see({"middle-proc"}, timeout=90)
        client = await mesh.client()
        small = mesh.nodes[0]
        asking = asyncio.create_task(client.ask("Tell me a very long story.", timeout=60, max_tokens=8000))
        await wait_for(lambda: small.stats.forwarded >= 1, 30, "the hand-off to the babbling node")
        await asyncio.sleep(1.5)  # it is generating (babble never stops) and sending heartbeats
        assert not asking.done()
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await proc.wait()
        answer = await asyncio.wait_for(asking, 30)
        recovery_s = time.monotonic() - killed
    finally:
        await _killed(proc)

    print(f"\nrecovery after SIGKILL: {recovery_s:.2f} s (client timeout 60 s, heartbeat 1 s)")
    assert answer.model == "large" and answer.text == REPLIES["tier-c"]
    assert [h.model for h in answer.path] == ["small", "large"]  # the re-send went around the dead node
    assert client.resends == 1
    assert recovery_s < 10


@pytest.mark.slow
async def test_a_stream_whose_node_dies_after_chunks_raises_interrupted_not_a_second_text(mesh: Mesh) -> None:
    await mesh.add("small", 0.1, "reject", entry=True)
    await mesh.add("large", 0.9, "tier-c", policy="always")
    proc = await start_node_process(mesh, "babble", "middle", 0.5, "middle-proc", "--policy", "always", "--heartbeat", "0.5")
    events: list[Chunk | Answer] = []
    try:
        await mesh.all_see({"middle-proc"}, timeout=90)
        client = await mesh.client()
        with pytest.raises(MeshError) as err:
            async for event in client.stream("A long story, please.", timeout=60, max_tokens=8000):
                events.append(event)
                if len(events) == 1:  # babble streams a few chunks, then generates silent tokens
                    await asyncio.sleep(1.0)
                    proc.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
        noticed_s = time.monotonic() - killed
    finally:
        await _killed(proc)

    print(f"\nstream interruption noticed {noticed_s:.2f} s after SIGKILL (heartbeat 0.5 s)")
    assert err.value.code == "interrupted" and f"after {len(events)} chunk" in err.value.message
    assert events and all(isinstance(e, Chunk) and e.node_id == "middle-proc" for e in events)
    assert [e.seq for e in events] == list(range(len(events)))  # nothing from a second attempt
    assert noticed_s < 5


# --- backpressure -------------------------------------------------------------------------------


async def test_a_full_node_hands_off_or_says_overloaded_never_drops(mesh: Mesh) -> None:
    small = await add_instant(mesh, "small", 0.1, entry=True, backend=SlowBackend(1.0), max_in_flight=2)
    large = await add_instant(mesh, "large", 0.9, backend=SlowBackend(1.0), max_in_flight=4)
    await mesh.all_see({small.card.node_id, large.card.node_id})
    client = await mesh.client(retry_overloaded=False)  # under test: what the mesh answers, not the client's retries of it

    results = await asyncio.gather(*(client.ask(f"q{i}", timeout=20, retries=0) for i in range(10)), return_exceptions=True)

    answers = [r for r in results if isinstance(r, Answer)]
    errors = [r for r in results if isinstance(r, MeshError)]
    assert len(answers) + len(errors) == 10  # nothing timed out, nothing else went wrong
    assert {e.code for e in errors} == {"overloaded"} and all("limit of 2" in e.message for e in errors)
    assert collections.Counter(a.node_id for a in answers) == {small.card.node_id: 2, large.card.node_id: 4}
    assert all([h.decision for h in a.path] == ["overflow", "answer"] for a in answers if a.node_id == large.card.node_id)
    assert small.backend.most_running == 2 and large.backend.most_running == 4
    assert small.stats.overflowed == 8 and large.stats.refused == 4


async def test_a_full_node_passes_a_request_to_a_live_replica(mesh: Mesh) -> None:
    first = await add_instant(mesh, "small", 0.1, entry=True, backend=SlowBackend(0.5), max_in_flight=1)
    second = await add_instant(mesh, "small", 0.1, backend=SlowBackend(0.5), max_in_flight=1)  # a replica, not an entry
    await mesh.all_see({first.card.node_id, second.card.node_id})
    client = await mesh.client(retry_overloaded=False)  # under test: what the mesh answers, not the client's retries of it

    results = await asyncio.gather(*(client.ask(f"q{i}", timeout=20, retries=0) for i in range(3)), return_exceptions=True)

    answered = sorted(r.node_id for r in results if isinstance(r, Answer))
    assert answered == sorted([first.card.node_id, second.card.node_id])
    assert [r.code for r in results if isinstance(r, MeshError)] == ["overloaded"]


# --- load ---------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def run_load(url: str, ingress: str, total: int, in_flight: int, id_prefix: str, timeout: float = 30.0) -> dict:
    """Send ``total`` queries, ``in_flight`` at a time, as a raw NATS client; count every reply on the wire.

    Half say ``#reject`` (the instant nodes' cue), so they travel the whole cascade. Queries ask for
    heartbeats, so those flow under load too. An ``overloaded`` Error is an explicit refusal: the
    query is sent again with the same id (each send has its own reply subject) until answered.
    """
    nc = await connect(url, name="load")
    inbox = nc.new_inbox()
    wire = WireCount()
    waiting: dict[str, asyncio.Future] = {}

    async def on_reply(msg) -> None:  # noqa: ANN001
        data = wire.record(msg.subject, msg.data)
        if data is None:
            return
        send = msg.subject.rsplit(".", 1)[1]
        if (future := waiting.pop(send, None)) and not future.done():
            future.set_result(data)

    await nc.subscribe(f"{inbox}.*", cb=on_reply, pending_msgs_limit=-1, pending_bytes_limit=-1)
    gate = asyncio.Semaphore(in_flight)
    lost: list[str] = []
    resent = 0

    async def one(i: int) -> None:
        nonlocal resent
        qid = f"{id_prefix}{i}"
        text = "#reject please" if i % 2 else "hello"
        payload = msgpack.packb({"v": 1, "id": qid, "messages": [{"role": "user", "content": text}], "progress": True})
        async with gate:
            for attempt in range(50):
                send = f"{qid}_{attempt}"
                waiting[send] = future = asyncio.get_running_loop().create_future()
                await nc.publish(ingress, payload, reply=f"{inbox}.{send}")
                try:
                    reply = await asyncio.wait_for(future, timeout)
                except asyncio.TimeoutError:
                    lost.append(qid)
                    return
                if "error" not in reply:
                    return
                assert reply["error"]["code"] == "overloaded", reply
                resent += 1
                await asyncio.sleep(0.05)
            lost.append(qid)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)  # late duplicates, if any, arrive now
    await nc.close()
    return {
        "sent": total,
        "answered": len(wire.answers),
        "lost": lost,
        "duplicated": wire.duplicated,
        "overloaded_then_resent": resent,
        "other_errors": [e for e in wire.errors if e["code"] != "overloaded"],
        "routes": dict(wire.routes),
        "heartbeats": wire.beats,
        "seconds": round(elapsed, 2),
    }


@pytest.mark.slow
async def test_2000_queries_at_200_in_flight_through_3_instant_tiers_none_lost_or_duplicated(nats_url: str, tmp_path: Path) -> None:
    subjects = Subjects(f"load{uuid.uuid4().hex[:8]}")
    nodes = [
        start_node(f"load-tier{i}", ["--backend", "instant", "--model", f"tier{i}", "--cost", str(cost), "--policy", "generate",
                                     "--prefix", subjects.prefix, "--nats", nats_url, *(["--entry"] if i == 0 else [])], tmp_path)
        for i, cost in enumerate((0.1, 0.5, 0.9))
    ]
    try:
        await asyncio.wait_for(wait_until_registered(nats_url, subjects.prefix, nodes, Console(file=io.StringIO())), 60)
        await run_load(nats_url, subjects.ingress, 200, 200, "warm")
        before = {n.node_id: rss_mb(n.process.pid) for n in nodes}
        result = await run_load(nats_url, subjects.ingress, 2000, 200, "q")
        growth = {n.node_id: round(rss_mb(n.process.pid) - before[n.node_id], 1) for n in nodes}
        alive = [n.process.poll() is None for n in nodes]
    finally:
        stop_nodes(nodes)

    print(f"\nload: {json.dumps(result)}\nnode RSS before: {before}\nRSS growth (MB) after 2000: {growth}")
    assert all(alive)
    assert result["lost"] == [] and result["duplicated"] == 0 and result["other_errors"] == []
    assert result["answered"] == 2000
    assert max(growth.values()) < 50


@pytest.mark.slow
async def test_a_load_run_with_real_tiny_models_loses_and_duplicates_nothing(mesh: Mesh) -> None:
    small = await mesh.add("small", 0.1, "reject", entry=True)
    mid = await mesh.add("mid", 0.5, "tier-b")
    large = await mesh.add("large", 0.9, "tier-c", policy="always")
    mid.settings.max_in_flight = 4  # so part of the load is refused by mid (-NAK) and goes to large
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> Answer | MeshError:
        async with gate:
            try:
                return await client.ask(f"question {i}", timeout=60, retries=0, query_id=f"real{i}", max_tokens=16)
            except MeshError as exc:
                return exc

    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(60)))
    elapsed = time.monotonic() - started

    answers = [r for r in results if isinstance(r, Answer)]
    by_node = collections.Counter(a.model for a in answers)
    print(f"\nreal-model load: 60 queries, 20 in flight, {elapsed:.1f} s, answered by {dict(by_node)}, "
          f"mid refused {mid.stats.refused} hand-offs, client re-sends {client.resends}")
    assert len(answers) == 60 and sorted(a.id for a in answers) == sorted(f"real{i}" for i in range(60))
    assert set(by_node) <= {"mid", "large"} and all(a.text in (REPLIES["tier-b"], REPLIES["tier-c"]) for a in answers)
    assert small.stats.answered == 0 and mid.stats.answered + large.stats.answered == 60  # no node answered twice


@pytest.mark.parametrize(
    "flags, expected",
    [(["--max-in-flight", "0"], "--max-in-flight must be at least 1"), (["--heartbeat", "0"], "--heartbeat must be a positive")],
)
async def test_bad_heartbeat_and_in_flight_flags_are_one_line_errors(flags: list[str], expected: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "disrouter-node"), "--model", "smollm2-135m", "--cost", "1", "--nats", "nats://127.0.0.1:1", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and expected in lines[0], err
