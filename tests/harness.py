"""One harness for in-process test nodes: each on its own real NATS connection, built by build_node.

What differs between meshes is only where a node's backend comes from (a factory from model name
to backend): scripted tiny models in ``conftest.Mesh``, the instant rule in ``instant_nodes.InstantMesh``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from disrouter.mesh.client import MeshClient
from disrouter.mesh.connection import connect
from disrouter.mesh.membership import NodeCard
from disrouter.mesh.subjects import Subjects
from disrouter.node.backends import Backend
from disrouter.node.calibration import Calibration
from disrouter.node.compose import build_node
from disrouter.node.runtime import Node, NodeSettings

BackendFactory = Callable[[str], Backend]  # model name -> loaded backend (called in a worker thread)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> float:
    """Seconds it took until ``predicate()`` held; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


class NodeHarness:
    """Real nodes in this process on a mesh with its own prefix (``url`` may be a server list)."""

    def __init__(self, url: str, make_backend: BackendFactory, *, prefix: str, registry_ttl_s: float, backend_kind: str) -> None:
        self.url = url
        self.make_backend = make_backend
        self.prefix = prefix
        self.registry_ttl_s = registry_ttl_s
        self.backend_kind = backend_kind
        self.nodes: list[Node] = []
        self.clients: list[MeshClient] = []

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    async def add(
        self,
        key: str,
        cost: float,
        model: str = "instant",
        *,
        entry: bool = False,
        policy: str = "generate",
        peers: list[str] | None = None,
        node_id: str | None = None,
        calibration: Calibration | None = None,
        backend: Backend | None = None,
        answer_backend: Backend | None = None,
        settings: dict[str, float] | None = None,
        **nats_options,
    ) -> Node:
        """Start a node serving ``model`` (or the given ``backend``); ``settings`` override NodeSettings fields."""
        node_id = node_id or f"{key}-{uuid.uuid4().hex[:4]}"
        card = NodeCard(node_id=node_id, model_key=key, model=model, cost=cost, entry=entry, policy=policy, backend=self.backend_kind)
        backend = backend or await asyncio.to_thread(self.make_backend, model)
        nc = await connect(self.url, name=node_id, **nats_options)
        node_settings = NodeSettings(registry_ttl_s=self.registry_ttl_s, handoff_timeout_s=1.0, **(settings or {}))
        try:
            node = await build_node(nc, card, backend, self.subjects, peers=peers, calibration=calibration, settings=node_settings,
                                    answer_backend=answer_backend)
        except Exception:
            await nc.close()
            raise
        await node.start()
        self.nodes.append(node)
        return node

    async def remove(self, node: Node) -> None:
        await node.stop()
        await node.nc.close()
        self.nodes.remove(node)

    async def client(self, **options) -> MeshClient:
        """A client of this mesh; ``options`` go to ``MeshClient.connect``."""
        client = await MeshClient.connect(self.url, self.prefix, **options)
        self.clients.append(client)
        return client

    def all_see_each_other(self) -> bool:
        ids = {node.card.node_id for node in self.nodes}
        return all(ids <= {card.node_id for card in node.membership.live()} for node in self.nodes)

    async def all_see(self, node_ids: set[str], present: bool = True, timeout: float = 10.0) -> None:
        """Wait until every node's live table has (or lacks) all of ``node_ids``."""

        def seen() -> bool:
            for node in self.nodes:
                live = {card.node_id for card in node.membership.live()}
                if present and not node_ids <= live or not present and node_ids & live:
                    return False
            return True

        await wait_for(seen, timeout, f"nodes to {'see' if present else 'forget'} {sorted(node_ids)}")

    async def close(self) -> None:
        """Close clients, then stop nodes; bounded and forgiving, since a test may have broken NATS."""
        for client in self.clients:
            try:
                await asyncio.wait_for(client.close(), 10)
            except Exception:
                pass
        for node in list(self.nodes):
            try:
                await asyncio.wait_for(node.stop(), 15)
                await asyncio.wait_for(node.nc.close(), 10)
            except Exception:
                pass
        self.nodes.clear()
