"""Node endpoints (/healthz, /readyz, /metrics) and tracing across hops, on real nodes and a real nats-server.

Metrics are read over HTTP before and after real queries, and each must move by what the
queries' own Answers report (decisions, tokens, hand-offs) or by what the test did (errors).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import wait_for
from instant_nodes import InstantMesh, start_cli_node, stop_process
from prometheus_client.parser import text_string_to_metric_families

from disrouter.mesh import tracing
from disrouter.mesh.protocol import STALE_AFTER_HEADER
from disrouter.node.http import ProbeServer
from disrouter.node.runtime import Node

Samples = dict[tuple[str, frozenset], float]


@pytest.fixture
async def instant(nats_url: str) -> AsyncIterator[InstantMesh]:
    harness = InstantMesh(nats_url)
    yield harness
    await harness.close()


async def scrape(node: Node) -> Samples:
    """Every sample of the node's /metrics, keyed by name and labels (node and model labels dropped)."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{node.probes.port}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            assert s.labels.get("node") == node.card.node_id or not s.name.startswith("disrouter_")
            labels = frozenset((k, v) for k, v in s.labels.items() if k not in ("node", "model"))
            samples[(s.name, labels)] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def total(samples: Samples, name: str) -> float:
    """The sum of a metric over all its label values."""
    return sum(v for (n, _), v in samples.items() if n == name)


def hops_at(answers: list, node: Node) -> list:
    return [hop for answer in answers for hop in answer.path if hop.node_id == node.card.node_id]


async def test_metrics_move_by_what_the_queries_did(instant: InstantMesh) -> None:
    small = await instant.add("small", 0.1, entry=True, policy="probe", settings={"http_port": 0, "max_in_flight": 1})
    large = await instant.add("large", 0.9, policy="always", settings={"http_port": 0})
    await instant.all_see({small.card.node_id, large.card.node_id})
    client = await instant.client()
    small_before, large_before = await scrape(small), await scrape(large)

    answers = [await client.ask(q, timeout=20) for q in ("name a colour", "count to three", "#reject who was the mayor of Ulm")]
    assert [[h.decision for h in a.path] for a in answers] == [["answer"], ["answer"], ["reject", "answer"]]
    small_after, large_after = await scrape(small), await scrape(large)

    assert moved(small_before, small_after, "disrouter_queries_total", decision="answer") == 2
    assert moved(small_before, small_after, "disrouter_queries_total", decision="reject") == 1
    assert moved(large_before, large_after, "disrouter_queries_total", decision="answer") == 1
    assert moved(small_before, small_after, "disrouter_handoffs_total", target="large", outcome="accepted") == 1
    # the probe's P(reject) for each of the three decisions: the instant rule's 0.01, 0.01 and 0.9
    assert moved(small_before, small_after, "disrouter_reject_probability_count") == 3
    assert moved(small_before, small_after, "disrouter_reject_probability_sum") == pytest.approx(0.01 + 0.01 + 0.9)
    assert moved(small_before, small_after, "disrouter_reject_probability_bucket", le="0.1") == 2
    assert moved(small_before, small_after, "disrouter_decision_seconds_count") == 3
    assert moved(small_before, small_after, "disrouter_decision_seconds_sum") == pytest.approx(sum(h.decide_ms for h in hops_at(answers, small)) / 1000)
    assert moved(small_before, small_after, "disrouter_generation_seconds_count") == 2  # the rejected query was never generated here
    assert moved(large_before, large_after, "disrouter_generation_seconds_count") == 1
    for node, before, after in ((small, small_before, small_after), (large, large_before, large_after)):
        hops = hops_at(answers, node)
        assert moved(before, after, "disrouter_prompt_tokens_total") == sum(h.prompt_tokens for h in hops) > 0
        assert moved(before, after, "disrouter_completion_tokens_total") == sum(h.completion_tokens for h in hops) > 0
        assert value(after, "disrouter_in_flight") == 0
        assert value(after, "disrouter_registry_nodes") == 2
        assert value(after, "disrouter_ready") == 1
    assert value(small_after, "disrouter_in_flight_limit") == 1 and value(large_after, "disrouter_in_flight_limit") == 64


async def test_in_flight_overflow_and_errors_are_counted(instant: InstantMesh) -> None:
    small = await instant.add("small", 0.1, entry=True, settings={"http_port": 0, "max_in_flight": 1})
    large = await instant.add("large", 0.9, policy="always", settings={"http_port": 0})
    await instant.all_see({small.card.node_id, large.card.node_id})
    client = await instant.client()
    before = await scrape(small)

    slow = asyncio.create_task(client.ask("#slow take your time", timeout=20))
    await wait_for(lambda: small.held == 1, 5, "the slow query to be held")
    holding = await scrape(small)
    overflowed = await client.ask("a second question", timeout=20)  # small is full: it passes this one on
    await slow
    after = await scrape(small)

    assert value(holding, "disrouter_in_flight") == 1 and value(after, "disrouter_in_flight") == 0
    assert [(h.model, h.decision) for h in overflowed.path] == [("small", "overflow"), ("large", "answer")]
    assert moved(before, after, "disrouter_queries_total", decision="overflow") == 1
    assert moved(before, after, "disrouter_queries_total", decision="answer") == 1
    assert moved(before, after, "disrouter_handoffs_total", target="large", outcome="accepted") == 1

    for payload in (b"[1, 2]", b'{"messages": []}'):  # not a map; a query without messages
        reply = await client.nc.request(instant.subjects.ingress, payload, timeout=5)
        assert b"error" in reply.data
    errors = await scrape(small)
    assert moved(after, errors, "disrouter_errors_total", code="bad_request") == 1
    assert moved(after, errors, "disrouter_errors_total", code="invalid_query") == 1


@pytest.mark.slow
@pytest.mark.vllm
async def test_a_vllm_node_exports_the_engines_own_metrics(instant: InstantMesh) -> None:
    pytest.importorskip("vllm")
    from disrouter.node.backends.sources import resolve
    from disrouter.node.backends.vllm import VLLMBackend

    options = {"enforce_eager": True, "gpu_memory_utilization": 0.2, "max_model_len": 2048}
    backend = await asyncio.to_thread(VLLMBackend.load, resolve("smollm2-135m"), **options)
    node = await instant.add("small", 0.1, entry=True, policy="always", backend=backend, settings={"http_port": 0})
    client = await instant.client()
    before = await scrape(node)

    answer = await client.ask("Which planet is known as the Red Planet?", timeout=120, max_tokens=16)
    for _ in range(50):  # the engine records a step's stats just after handing out its output
        after = await scrape(node)
        if total(after, "vllm:generation_tokens_total") - total(before, "vllm:generation_tokens_total") >= answer.completion_tokens:
            break
        await asyncio.sleep(0.1)

    assert total(after, "vllm:generation_tokens_total") - total(before, "vllm:generation_tokens_total") == answer.completion_tokens > 0
    assert total(after, "vllm:prompt_tokens_total") - total(before, "vllm:prompt_tokens_total") == answer.prompt_tokens > 0
    assert total(after, "vllm:request_success_total") - total(before, "vllm:request_success_total") == 1
    assert moved(before, after, "disrouter_generation_seconds_count") == 1


async def test_readyz_turns_unready_while_draining(instant: InstantMesh) -> None:
    node = await instant.add("solo", 0.1, entry=True, policy="always", settings={"http_port": 0})
    client = await instant.client()
    base = f"http://127.0.0.1:{node.probes.port}"
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{base}/healthz")).status_code == 200
        ready = await http.get(f"{base}/readyz")
        assert (ready.status_code, ready.text) == (200, "ready\n")
        assert (await http.get(f"{base}/nothing")).status_code == 404

        slow = asyncio.create_task(client.ask("#slow hold on", timeout=20))
        await wait_for(lambda: node.held == 1, 5, "the slow query to be held")
        stopping = asyncio.create_task(instant.remove(node))
        await wait_for(lambda: "draining" in node.unready(), 5, "the node to drain")
        draining = await http.get(f"{base}/readyz")
        assert draining.status_code == 503 and "draining" in draining.text
        assert (await http.get(f"{base}/healthz")).status_code == 200  # alive while it finishes its query
        assert (await slow).text == "ok"
        await stopping
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{base}/healthz")


def test_probes_before_the_model_is_loaded() -> None:
    """The node command starts the endpoints before loading the model: alive, not ready."""
    probes = ProbeServer()
    assert probes.respond("/healthz")[0] == 200
    assert probes.respond("/readyz") == (503, "text/plain", b"not ready: model loading\n")
    assert probes.respond("/readyz?verbose=1")[0] == 503


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_node_command_serves_the_endpoints(nats_url: str) -> None:
    port = _free_port()
    proc = await start_cli_node(nats_url, "obs-cli", "cli", 0.1, "cli-node", "--http-port", str(port), "--http-host", "127.0.0.1")
    try:
        async with httpx.AsyncClient() as http:

            async def status(path: str) -> int:
                try:
                    return (await http.get(f"http://127.0.0.1:{port}{path}")).status_code
                except httpx.ConnectError:
                    return 0

            for path in ("/healthz", "/readyz"):
                deadline = asyncio.get_running_loop().time() + 60
                while await status(path) != 200:
                    assert asyncio.get_running_loop().time() < deadline, f"{path} never answered 200"
                    await asyncio.sleep(0.2)
            metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'disrouter_in_flight_limit{model="cli",node="cli-node"} 64.0' in metrics
        assert 'disrouter_registry_nodes{model="cli",node="cli-node"} 1.0' in metrics
    finally:
        await stop_process(proc)


async def test_a_bad_http_port_is_one_line() -> None:
    node = Path(sys.executable).parent / "disrouter-node"
    proc = await asyncio.create_subprocess_exec(
        str(node), "--backend", "instant", "--model", "instant", "--cost", "0.1", "--http-port", "70000", stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 1 and err.decode().strip().splitlines() == ["disrouter-node: error: --http-port must be a port number from 0 to 65535"]


# --- tracing ---------------------------------------------------------------------------------


def memory_tracing() -> tuple:
    """A TracerProvider whose finished spans stay in the returned in-memory exporter."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_one_trace_covers_client_entry_and_every_hop(instant: InstantMesh) -> None:
    provider, exporter = memory_tracing()
    ids = [(await instant.add(key, cost, entry=key == "t1")).card.node_id for key, cost in (("t1", 0.1), ("t2", 0.5), ("t3", 0.9))]
    await instant.all_see(set(ids))
    client = await instant.client()
    tracing.enable(provider)
    try:
        answer = await client.ask("#reject who was the mayor of Ulm in 1712?", timeout=20)
        # t3 answers the client directly: t1 and t2 may still be reading their +ACK, their hop spans open
        await wait_for(lambda: all(node.inflight == 0 for node in instant.nodes), 5, "every node to finish with the query")
    finally:
        tracing.disable()
    assert [(h.model, h.decision) for h in answer.path] == [("t1", "reject"), ("t2", "reject"), ("t3", "forced")]

    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1, "every span in one trace"
    by_id = {s.context.span_id: s for s in spans}

    def parent(span):  # noqa: ANN001, ANN202
        return by_id.get(span.parent.span_id) if span.parent else None

    def one(name: str, node: str | None = None):  # noqa: ANN202
        found = [s for s in spans if s.name == name and (node is None or s.attributes.get("node") == node)]
        assert len(found) == 1, f"{len(found)} {name} spans for {node}"
        return found[0]

    root = one("ask")
    assert root.parent is None and root.kind.name == "CLIENT"
    hops = [one("hop", node) for node in ids]
    assert parent(hops[0]) is root
    for i in range(2):  # t1 and t2 decide (generate inside), reject and hand off
        decide = [s for s in spans if s.name == "decide" and parent(s) is hops[i]]
        assert len(decide) == 1 and decide[0].attributes["decision"] == "reject"
        generates = [s for s in spans if s.name == "generate" and parent(s) is decide[0]]
        assert len(generates) == 1
        handoff = [s for s in spans if s.name == "hand-off" and parent(s) is hops[i]]
        assert len(handoff) == 1 and handoff[0].attributes["outcome"] == "accepted"
        assert handoff[0].attributes["target"] == ("t2", "t3")[i]
        assert parent(hops[i + 1]) is handoff[0], "the next node's hop is the child of this hand-off"
    last = [s for s in spans if parent(s) is hops[2]]
    assert [s.name for s in last] == ["generate"], "the last tier answers for certain: no decision, one generation"
    assert all(s.end_time >= s.start_time for s in spans)


async def test_tracing_off_sends_no_trace_headers(instant: InstantMesh) -> None:
    node = await instant.add("solo", 0.1, entry=True, policy="always")
    client = await instant.client()
    seen: list = []

    async def note(msg) -> None:  # noqa: ANN001
        seen.append(msg.headers)

    tap = await client.nc.subscribe(instant.subjects.ingress, cb=note)
    assert not tracing.enabled() and tracing.headers() is None
    assert (await client.ask("hello", timeout=20)).node_id == node.card.node_id
    await tap.unsubscribe()
    assert len(seen) == 1 and set(seen[0]) == {STALE_AFTER_HEADER}  # the mesh's own freshness mark, no trace context


class OtlpReceiver:
    """A stand-in OpenTelemetry collector: OTLP/HTTP protobuf POSTs to /v1/traces, spans kept as they come."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []  # (service.instance.id, span)
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import gzip

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        length = int(head.split("content-length:")[1].split("\r\n")[0])
        body = await reader.readexactly(length)
        request = ExportTraceServiceRequest.FromString(gzip.decompress(body) if "content-encoding: gzip" in head else body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            self.spans += [(attributes.get("service.instance.id", ""), s) for ss in resource_spans.scope_spans for s in ss.spans]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


async def test_node_processes_export_one_trace_across_hops(nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three `disrouter-node --tracing` processes send their spans over OTLP; the chain links up with the client's root."""
    from disrouter.mesh.client import MeshClient

    receiver = OtlpReceiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{await receiver.start()}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # export every 0.2 s, not every 5 s
    prefix, ids = "obs-trace", ["p1", "p2", "p3"]
    procs = [await start_cli_node(nats_url, prefix, key, cost, key, "--tracing", *(["--entry"] if key == "p1" else []))
             for key, cost in zip(ids, (0.1, 0.5, 0.9))]
    provider, exporter = memory_tracing()
    try:
        async with await MeshClient.connect(nats_url, prefix) as client:
            for _ in range(120):  # until all three nodes serve: a first query passes through all of them
                try:
                    first = await client.ask("#reject warm up", timeout=5, progress=False)
                    if len(first.path) == 3:
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.5)
            tracing.enable(provider)
            try:
                answer = await client.ask("#reject who was the mayor of Ulm in 1712?", timeout=20)
            finally:
                tracing.disable()
        assert [(h.model, h.decision) for h in answer.path] == [("p1", "reject"), ("p2", "reject"), ("p3", "forced")]
        (root,) = exporter.get_finished_spans()
        trace_id = root.context.trace_id.to_bytes(16, "big")

        def ours() -> list[tuple[str, object]]:
            return [(node, s) for node, s in receiver.spans if s.trace_id == trace_id]

        await wait_for(lambda: {node for node, s in ours() if s.name == "hop"} == set(ids), 15, "every node's hop span")
    finally:
        for proc in procs:
            await stop_process(proc)
        receiver.server.close()
    spans = ours()
    hop = {node: s for node, s in spans if s.name == "hop"}
    handoff = {node: s for node, s in spans if s.name == "hand-off"}
    assert hop["p1"].parent_span_id == root.context.span_id.to_bytes(8, "big")
    assert hop["p2"].parent_span_id == handoff["p1"].span_id and handoff["p1"].parent_span_id == hop["p1"].span_id
    assert hop["p3"].parent_span_id == handoff["p2"].span_id and handoff["p2"].parent_span_id == hop["p2"].span_id
    assert {node for node, s in spans if s.name == "decide"} == {"p1", "p2"}
    assert {node for node, s in spans if s.name == "generate"} == set(ids)
