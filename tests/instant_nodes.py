"""Real nodes with the instant backend (no model to load), for fault and fuzz tests.

The instant backend answers ``ok`` at once, or the reject phrase when the prompt has ``#reject``;
``#slow`` here also makes it take ``SLOW_S`` seconds, so a query can be caught in flight.
"""

from __future__ import annotations

import asyncio
import uuid

from harness import NodeHarness

from disrouter.node.backends.base import Generation, GenerationRequest, TextSink
from disrouter.node.backends.instant import InstantBackend, _last_user_text

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


class InstantMesh(NodeHarness):
    """In-process nodes with the slow instant backend on their own NATS connections (``urls`` may be a server list)."""

    def __init__(self, urls: str, registry_ttl_s: float = 2.0) -> None:
        super().__init__(
            urls, lambda model: SlowInstantBackend(model), prefix=f"f{uuid.uuid4().hex[:10]}", registry_ttl_s=registry_ttl_s, backend_kind="instant"
        )


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
