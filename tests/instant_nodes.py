"""Real nodes with the instant backend (no model to load), for fault and fuzz tests.

The instant backend answers ``ok`` at once, or the reject phrase when the prompt has ``#reject``;
``#slow`` here also makes it take ``SLOW_S`` seconds, so a query can be caught in flight.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from disrouter.mesh.client import MeshClient
from disrouter.mesh.connection import connect
from disrouter.mesh.membership import NodeCard
from disrouter.mesh.subjects import Subjects
from disrouter.node.backends.base import Generation, GenerationRequest, TextSink
from disrouter.node.backends.instant import InstantBackend, _last_user_text
from disrouter.node.policies import make_policy
from disrouter.node.routing import CascadeRouting
from disrouter.node.runtime import Node, NodeSettings

SLOW_S = 1.5


class SlowInstantBackend(InstantBackend):
    """The instant backend; ``#slow`` in the prompt holds the query ``SLOW_S`` seconds. Counts calls."""

    def __init__(self, model_name: str = "instant") -> None:
        super().__init__(model_name)
        self.prompts: list[str] = []

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        text = _last_user_text(request.messages)
        self.prompts.append(text)
        if "#slow" in text:
            await asyncio.sleep(SLOW_S)
        return await super().generate(request, on_text)


@dataclass
class InstantMesh:
    """In-process nodes on their own NATS connections (``urls`` may be a server list)."""

    urls: str
    prefix: str = field(default_factory=lambda: f"f{uuid.uuid4().hex[:10]}")
    registry_ttl_s: float = 2.0
    nodes: list[Node] = field(default_factory=list)
    clients: list[MeshClient] = field(default_factory=list)

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    async def add(self, key: str, cost: float, *, entry: bool = False, policy: str = "generate", node_id: str | None = None, **nats_options) -> Node:
        card = NodeCard(
            node_id=node_id or f"{key}-{uuid.uuid4().hex[:4]}", model_key=key, model="instant", cost=cost, entry=entry, policy=policy, backend="instant"
        )
        nc = await connect(self.urls, name=card.node_id, **nats_options)
        settings = NodeSettings(registry_ttl_s=self.registry_ttl_s, handoff_timeout_s=1.0)
        node = Node(nc, card, SlowInstantBackend(), make_policy(policy), CascadeRouting(self.subjects), self.subjects, settings)
        await node.start()
        self.nodes.append(node)
        return node

    async def client(self, **nats_options) -> MeshClient:
        client = await MeshClient.connect(self.urls, self.prefix, **nats_options)
        self.clients.append(client)
        return client

    def all_see_each_other(self) -> bool:
        ids = {node.card.node_id for node in self.nodes}
        return all(ids <= {card.node_id for card in node.membership.live()} for node in self.nodes)

    async def close(self) -> None:
        for client in self.clients:
            try:
                await asyncio.wait_for(client.close(), 10)
            except Exception:
                pass
        for node in self.nodes:
            try:
                await asyncio.wait_for(node.stop(), 15)
                await asyncio.wait_for(node.nc.close(), 10)
            except Exception:
                pass
        self.nodes.clear()


async def start_cli_node(urls: str, prefix: str, key: str, cost: float, node_id: str, *extra: str, registry_ttl_s: float = 2.0) -> asyncio.subprocess.Process:
    """A real `disrouter-node --backend instant` process (``urls``: one URL or a server list)."""
    import sys
    from pathlib import Path

    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "disrouter-node"), "--backend", "instant", "--model", "instant", "--key", key,
        "--cost", str(cost), "--nats", urls, "--prefix", prefix, "--node-id", node_id, "--registry-ttl", str(registry_ttl_s),
        *extra, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
