"""Runtime join: a tier started while queries flow registers and receives traffic, nobody restarted."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

from disrouter.local.processes import NodeStartError
from disrouter.mesh.connection import connect
from disrouter.mesh.membership import list_cards, open_registry
from disrouter.mesh.protocol import Answer
from disrouter.mesh.subjects import Subjects
from disrouter.training.tasks import Task

from .live import LiveMesh
from .preset import Preset, Tier

REGISTER_TIMEOUT_S = 300.0
WAVE_PAUSE_S = 0.5  # between waves of queries while the joining node starts: steady traffic, not a flood


async def _registered(mesh: LiveMesh, node_id: str) -> float:
    """Seconds until ``node_id``'s card is in the registry (its process must stay up)."""
    started = time.monotonic()
    nc = await connect(mesh.nats_url, name="disrouter-bench-join")
    try:
        kv = await open_registry(nc, Subjects(mesh.prefix))
        while node_id not in {card.node_id for card in await list_cards(kv)}:
            if time.monotonic() - started > REGISTER_TIMEOUT_S:
                raise NodeStartError(f"joining node {node_id} did not register within {REGISTER_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
    return time.monotonic() - started


async def runtime_join(mesh: LiveMesh, tier: Tier, tasks: Sequence[Task], alpha: float, preset: Preset, method: str) -> dict[str, object]:
    """Start ``tier`` while waves of queries run; count the queries that reach it once it registered.

    A wave sent while the node was starting may already reach it (registration is polled), so those
    queries are counted apart, not as evidence either way."""
    node = mesh.launch(tier.key, instance="join")
    waiting = asyncio.create_task(_registered(mesh, node.node_id))
    stream = itertools.cycle(tasks)
    starting, after = [], []
    while not waiting.done() or len(after) < preset.join_queries:
        wave = [next(stream) for _ in range(preset.in_flight)]
        was_registered = waiting.done()
        replies = await mesh.ask(wave, alpha, preset)
        (after if was_registered else starting).extend(replies)
        if not was_registered:
            await asyncio.sleep(WAVE_PAUSE_S)
        if node.process.poll() is not None:
            waiting.cancel()
            raise NodeStartError(f"joining node {node.node_id} exited with {node.process.returncode}: {node.last_log_line()}")
    answers = [reply for _, reply, _ in after if isinstance(reply, Answer)]
    return {
        "method": method,
        "tier": tier.key,
        "alpha": alpha,
        "registered_after_s": round(waiting.result(), 2),
        "queries_while_starting": len(starting),
        "reached_while_starting": sum(_reached(reply, tier) for _, reply, _ in starting),
        "queries_after": len(after),
        "reached_after": sum(_reached(reply, tier) for reply in answers),
        "answered_after": sum(reply.model == tier.key for reply in answers),
        "errors_after": len(after) - len(answers),
    }


def _reached(reply: object, tier: Tier) -> bool:
    return isinstance(reply, Answer) and any(hop.model == tier.key for hop in reply.path)
