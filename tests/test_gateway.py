"""`disrouter gateway` against a live mesh, through the official `openai` client.

A real nats-server, real nodes (scripted tiny transformers models, or the instant backend) and
the gateway as a real `disrouter gateway` process; the client is `openai.AsyncOpenAI`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import REPLIES, Mesh
from harness import wait_for
from instant_nodes import InstantMesh, SlowInstantBackend

from disrouter.node.backends.base import Generation, GenerationRequest, TextSink

from disrouter.local.nats_server import NatsServer
from harness import NodeHarness

API_KEY = "sk-test-gateway"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gateway:
    """A `disrouter gateway` process for one mesh prefix."""

    def __init__(self, url: str, prefix: str, *extra: str, keys: str | None = API_KEY, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.args = ["gateway", "--nats", url, "--prefix", prefix, "--port", str(self.port), "--timeout", "30", "--log-format", "console", *extra]
        self.env = {**os.environ, "DISROUTER_GATEWAY_API_KEYS": keys or "", **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "Gateway":
        exe = str(Path(sys.executable).parent / "disrouter")
        self.proc = await asyncio.create_subprocess_exec(exe, *self.args, env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                if self.proc.returncode is not None:
                    raise AssertionError(f"gateway exited: {(await self.proc.stderr.read()).decode()[-2000:]}")
                try:
                    if (await http.get(f"{self.base}/readyz")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("gateway not ready within 20 s")

    async def __aexit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)
        assert self.proc.returncode == 0, (await self.proc.stderr.read()).decode()[-2000:]

    def client(self, key: str = API_KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture
async def scripted(nats_url: str, scripted_models: dict[str, Path]) -> AsyncIterator[Mesh]:
    """A cheap tier that always rejects and a stronger one that answers 'Paris is the answer.'"""
    mesh = Mesh(nats_url, scripted_models)
    await mesh.add("cheap", 0.1, "reject", entry=True)
    await mesh.add("strong", 0.9, "paris")
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    yield mesh
    await mesh.close()


@pytest.fixture
async def instant(nats_url: str) -> AsyncIterator[InstantMesh]:
    mesh = InstantMesh(nats_url)
    yield mesh
    await mesh.close()


@pytest.mark.slow
async def test_chat_completion_routes_through_the_mesh(nats_url: str, scripted: Mesh) -> None:
    cheap, strong = scripted.nodes
    async with Gateway(nats_url, scripted.prefix) as gateway:
        raw = await gateway.client().chat.completions.with_raw_response.create(
            model="disrouter", messages=[{"role": "user", "content": "What is the capital of France?"}], extra_body={"scenario": "cost"}
        )
    reply = raw.parse()
    assert reply.choices[0].message.content == REPLIES["paris"]
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "strong"
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
    route = reply.model_extra["disrouter"]
    assert route["node_id"] == strong.card.node_id
    assert [(hop["model"], hop["decision"]) for hop in route["path"]] == [("cheap", "reject"), ("strong", "forced")]
    assert raw.headers["x-disrouter-node"] == strong.card.node_id
    assert raw.headers["x-disrouter-model"] == "strong"
    assert raw.headers["x-disrouter-path"] == "cheap:reject,strong:forced"
    assert reply.id == f"chatcmpl-{route['query_id']}"


@pytest.mark.slow
async def test_streaming_sends_the_answer_as_it_is_decoded(nats_url: str, scripted: Mesh) -> None:
    strong = scripted.nodes[1]
    async with Gateway(nats_url, scripted.prefix) as gateway:
        raw = await gateway.client().chat.completions.with_raw_response.create(
            model="disrouter", messages=[{"role": "user", "content": "Capital of France?"}], stream=True, stream_options={"include_usage": True},
            extra_headers={"x-disrouter-scenario": "performance"},
        )
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert raw.headers["x-disrouter-node"] == strong.card.node_id
        events = [event async for event in raw.parse()]
    texts = [e.choices[0].delta.content for e in events if e.choices and e.choices[0].delta.content]
    assert len(texts) > 1, "the answer came in one piece, not streamed"
    assert "".join(texts) == REPLIES["paris"]
    assert events[0].choices[0].delta.role == "assistant"
    finish = [e for e in events if e.choices and e.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert [hop["model"] for hop in finish[0].model_extra["disrouter"]["path"]] == ["cheap", "strong"]
    assert all(e.model == "strong" for e in events)
    assert events[-1].choices == [] and events[-1].usage.completion_tokens > 0


async def test_models_lists_live_tiers_and_a_named_tier_answers_itself(nats_url: str, instant: InstantMesh) -> None:
    small = await instant.add("small", 0.1, entry=True)
    large = await instant.add("large", 0.9)
    await instant.all_see({small.card.node_id, large.card.node_id})
    async with Gateway(nats_url, instant.prefix) as gateway:
        client = gateway.client()
        models = {m.id: m for m in (await client.models.list()).data}
        assert list(models) == ["disrouter", "small", "large"]
        assert models["large"].model_extra["disrouter"]["nodes"] == [large.card.node_id]
        # '#reject' makes the small tier reject; named, it must answer itself (forced), never forward
        named = await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi #reject"}])
        assert [(h["model"], h["decision"]) for h in named.model_extra["disrouter"]["path"]] == [("small", "forced")]
        routed = await client.chat.completions.create(model="disrouter", messages=[{"role": "user", "content": "hi #reject"}])
        assert [(h["model"], h["decision"]) for h in routed.model_extra["disrouter"]["path"]] == [("small", "reject"), ("large", "forced")]
        direct = await client.chat.completions.create(model="large", messages=[{"role": "user", "content": "hi"}])
        assert direct.model_extra["disrouter"]["node_id"] == large.card.node_id and direct.choices[0].message.content == "ok"
        await instant.remove(large)
        await wait_for_models(client, ["disrouter", "small"])
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="large", messages=[{"role": "user", "content": "hi"}])
        assert missing.value.code == "model_not_found"


async def wait_for_models(client: openai.AsyncOpenAI, expected: list[str], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.2)):
        if [m.id for m in (await client.models.list()).data] == expected:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"/v1/models never became {expected}")


class GatedBackend(SlowInstantBackend):
    """The instant backend; ``#hold`` in the prompt waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__("instant")
        self.gate = asyncio.Event()

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        if "#hold" in request.messages[-1]["content"]:
            await self.gate.wait()
        return await super().generate(request, on_text)


async def test_errors_map_to_openai_errors_and_http_codes(nats_url: str, instant: InstantMesh) -> None:
    backend = GatedBackend()
    await instant.add("solo", 0.1, entry=True, backend=backend, settings={"max_in_flight": 1})
    async with Gateway(nats_url, instant.prefix) as gateway:
        client = gateway.client()
        with pytest.raises(openai.AuthenticationError) as denied:
            await gateway.client("sk-wrong").models.list()
        assert denied.value.status_code == 401 and denied.value.code == "invalid_api_key"
        with pytest.raises(openai.BadRequestError) as invalid:
            await client.chat.completions.create(model="disrouter", messages=[{"role": "user", "content": "hi"}], temperature=5)
        assert invalid.value.code == "invalid_query" and "temperature" in invalid.value.message
        with pytest.raises(openai.BadRequestError) as scenario:
            await client.chat.completions.create(model="disrouter", messages=[{"role": "user", "content": "hi"}], extra_body={"scenario": "cheapest"})
        assert scenario.value.code == "invalid_query"
        # one slow query holds the node's only slot: the next one is `overloaded`, 429, streaming or not
        held = asyncio.create_task(client.chat.completions.create(model="disrouter", messages=[{"role": "user", "content": "#hold"}]))
        await wait_for(lambda: instant.nodes[0].held == 1, what="the held query to be held")
        with pytest.raises(openai.RateLimitError) as overloaded:
            await client.chat.completions.create(model="disrouter", messages=[{"role": "user", "content": "hi"}])
        assert overloaded.value.code == "overloaded" and overloaded.value.response.headers["retry-after"] == "1"
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="disrouter", messages=[{"role": "user", "content": "hi"}], stream=True)
        backend.gate.set()
        assert (await held).choices[0].message.content == "ok"
        # the client's time is up before the slow query's answer: 504
        with pytest.raises(openai.APIStatusError) as late:
            await client.chat.completions.create(
                model="disrouter", messages=[{"role": "user", "content": "#slow"}], extra_headers={"x-disrouter-timeout": "0.5"}
            )
        assert late.value.status_code == 504 and late.value.code in ("deadline_exceeded", "timeout")
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{gateway.base}/metrics")).text
    assert 'disrouter_gateway_requests_total{code="overloaded",status="429"} 2.0' in metrics
    assert 'disrouter_gateway_answers_total{model="solo"} 1.0' in metrics


async def test_without_keys_the_gateway_is_open_and_health_needs_none(nats_url: str, instant: InstantMesh) -> None:
    await instant.add("solo", 0.1, entry=True)
    async with Gateway(nats_url, instant.prefix, keys=None) as gateway:
        reply = await gateway.client("anything").chat.completions.create(model="disrouter", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "ok"
    async with Gateway(nats_url, instant.prefix) as gateway, httpx.AsyncClient() as http:
        assert (await http.get(f"{gateway.base}/healthz")).json() == {"status": "ok"}
        assert (await http.get(f"{gateway.base}/readyz")).json()["ready"] is True
        assert (await http.get(f"{gateway.base}/v1/models")).status_code == 401
        bad = await http.post(f"{gateway.base}/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {API_KEY}"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


def test_gateway_command_fails_in_one_line_on_a_bad_keys_file(tmp_path: Path) -> None:
    import subprocess

    empty = tmp_path / "keys"
    empty.write_text("# no keys\n")
    exe = str(Path(sys.executable).parent / "disrouter")
    done = subprocess.run([exe, "gateway", "--api-keys-file", str(empty), "--nats", "nats://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"disrouter: error: --api-keys-file {empty} holds no key"]


async def test_gateway_user_of_the_shipped_permissions_asks_and_lists(tmp_path: Path) -> None:
    """k8s/nats/disrouter-auth.conf as shipped: the gateway logs in as `gateway` and may ask the
    ingress, ask one tier, and read the registry; a node logs in as `node`."""
    auth_conf = Path(__file__).resolve().parents[1] / "k8s" / "nats" / "disrouter-auth.conf"
    passwords = {user: f"pw{user}{os.getpid()}x" for user in ("client", "node", "gateway", "admin")}
    env = {f"DISROUTER_{user.upper()}_PASSWORD": password for user, password in passwords.items()}
    with NatsServer(config=auth_conf, env=env) as server:
        node_url = server.url.replace("nats://", f"nats://node:{passwords['node']}@", 1)
        mesh = NodeHarness(node_url, SlowInstantBackend, prefix="disrouter", registry_ttl_s=2.0, backend_kind="instant")
        try:
            entry = await mesh.add("small", 0.1, entry=True)
            await mesh.add("large", 0.9)
            await mesh.all_see({n.card.node_id for n in mesh.nodes})
            password_file = tmp_path / "gateway-password"
            password_file.write_text(passwords["gateway"])
            login = ("--nats-user", "gateway", "--nats-password-file", str(password_file))
            async with Gateway(server.url, "disrouter", *login, env={"DISROUTER_NATS_USER": "", "DISROUTER_NATS_PASSWORD": ""}) as gateway:
                client = gateway.client()
                assert [m.id for m in (await client.models.list()).data] == ["disrouter", "small", "large"]
                routed = await client.chat.completions.create(model="disrouter", messages=[{"role": "user", "content": "hi"}])
                assert routed.model_extra["disrouter"]["node_id"] == entry.card.node_id
                named = await client.chat.completions.create(model="large", messages=[{"role": "user", "content": "hi"}])
                assert named.model == "large"
        finally:
            await mesh.close()


async def test_models_come_back_after_nats_restarts_and_loses_the_registry(tmp_path: Path) -> None:
    """A lone nats-server keeps the registry in memory: after a restart the nodes recreate it, and
    the gateway's model list and tier routing follow without a restart of their own."""
    with NatsServer() as server:
        mesh = InstantMesh(server.url)
        try:
            small = await mesh.add("small", 0.1, entry=True)
            async with Gateway(server.url, mesh.prefix) as gateway:
                client = gateway.client()
                await wait_for_models(client, ["disrouter", "small"])
                server.restart()
                await asyncio.sleep(3 * mesh.registry_ttl_s)  # longer than a card lives unless refreshed: a stale table would be empty
                await wait_for_models(client, ["disrouter", "small"], timeout=30)
                named = await client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}])
                assert named.model_extra["disrouter"]["node_id"] == small.card.node_id
        finally:
            await mesh.close()
