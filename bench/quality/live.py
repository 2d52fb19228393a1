"""Self-routing through the live mesh: one real `disrouter-node` process per tier on an embedded
NATS server; every query goes to the ingress subject as a client would send it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console

from disrouter.local.processes import NodeProcess, start_node, stop_nodes, wait_until_registered
from disrouter.mesh.client import MeshClient, MeshError
from disrouter.mesh.protocol import Answer
from disrouter.training.graders import grade
from disrouter.training.tasks import Task

from .labels import Labels
from .metrics import Outcome
from .preset import Preset, Tier

Reply = tuple[Task, Answer | MeshError, float]
"""A query, what the mesh replied, and the client's wall-clock milliseconds."""


def write_topology(preset: Preset, arm: str, policy: str, prefix: str, path: Path) -> Path:
    """The mesh's topology for one arm: every tier serves its arm checkpoint with ``policy`` (answering with its
    ``answer_model`` when it has one); the strongest always answers."""
    models = [
        {"key": t.key, "model": str(t.checkpoint(arm) or t.model), "cost": t.cost, "policy": policy if i < len(preset.tiers) - 1 else "always"}
        | ({"answer_model": str(answer)} if i < len(preset.tiers) - 1 and (answer := t.answers_with(arm, policy)) else {})
        for i, t in enumerate(preset.tiers)
    ]
    path.write_text(yaml.safe_dump({"mesh": f"quality-{prefix}", "prefix": prefix, "models": models}, sort_keys=False))
    return path


@dataclass
class LiveMesh:
    """The nodes of one arm on one NATS server: start, stop and ask."""

    nats_url: str
    prefix: str
    topology: Path
    log_dir: Path
    console: Console
    calibrations: dict[str, Path] = field(default_factory=dict)  # tier key -> its node's --calibration

    def __post_init__(self) -> None:
        self.nodes: dict[str, NodeProcess] = {}

    def launch(self, key: str, instance: str = "1") -> NodeProcess:
        calibration = ["--calibration", str(self.calibrations[key])] if key in self.calibrations else []
        node = start_node(f"{key}-{instance}", ["--model", key, "--topology", str(self.topology), "--nats", self.nats_url, *calibration], self.log_dir)
        self.nodes[key] = node
        return node

    async def start(self, keys: Sequence[str]) -> None:
        """Start a node per tier and wait until every one is registered."""
        await wait_until_registered(self.nats_url, self.prefix, [self.launch(key) for key in keys], self.console)

    def stop(self, keys: Sequence[str] | None = None) -> None:
        """Stop (drain) the named tiers' nodes, or all of them."""
        keys = list(self.nodes) if keys is None else list(keys)
        stop_nodes([self.nodes.pop(key) for key in keys if key in self.nodes])

    async def ask(self, tasks: Sequence[Task], alpha: float, preset: Preset, on_done: Callable[[], None] | None = None) -> list[Reply]:
        """Every task through the ingress at ``alpha``, ``in_flight`` at once."""
        gate = asyncio.Semaphore(preset.in_flight)
        async with await MeshClient.connect(self.nats_url, self.prefix) as client:
            async def one(task: Task) -> Reply:
                async with gate:
                    started = time.perf_counter()
                    try:
                        reply: Answer | MeshError = await client.ask(
                            task.prompt_messages(), scenario=alpha, max_tokens=preset.max_tokens, temperature=0.0,
                            timeout=preset.timeout_s, retries=0,
                        )
                    except MeshError as exc:
                        reply = exc
                    ms = (time.perf_counter() - started) * 1000
                if on_done:
                    on_done()
                return task, reply, ms

            return list(await asyncio.gather(*(one(task) for task in tasks)))


def outcome(reply: Reply, tiers: dict[str, Tier], labels: Labels) -> Outcome:
    """Grade the mesh's answer; a rejecting hop is charged its tier's cost times its share of the
    tokens that tier spends answering the query (from the labels run)."""
    task, answer, ms = reply
    if isinstance(answer, MeshError):
        return Outcome(task.id, False, None, 0.0, 0.0, ms, 0, error=answer.code)
    tier = tiers[answer.model]
    spent = 0.0
    for hop in answer.path:
        if hop.decision != "reject":
            continue
        rejecting = tiers[hop.model]
        reference = labels[rejecting.key][task.id].tokens if task.id in labels.get(rejecting.key, {}) else 0
        spent += rejecting.cost * ((hop.prompt_tokens + hop.completion_tokens) / reference if reference else 1.0)
    decided = sum(hop.decision != "overflow" for hop in answer.path)
    return Outcome(task.id, grade(task, answer.text), tier.key, tier.cost, tier.cost + spent, ms, decided)
