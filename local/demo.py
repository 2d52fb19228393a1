"""`disrouter demo`: embedded NATS, the demo topology's nodes as real processes, questions with known
answers through the mesh, and the mesh's utility against Largest-only on the same questions."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

from disrouter.mesh.client import MeshClient
from disrouter.mesh.objective import scenario_alpha
from disrouter.mesh.protocol import Answer
from disrouter.mesh.topology import Topology, load_topology
from disrouter.topologies import topology_path

from .demo_questions import QuestionSet, questions_for
from .demo_report import Scored, results_table, score, summarise
from .nats_server import NatsServer
from .processes import NodeProcess, start_node, stop_nodes, wait_until_registered

SCENARIO = "balance"
"""The scenario every demo question is asked under (its alpha weighs cost in the utility)."""
console = Console(width=None if sys.stdout.isatty() else 160)


def launch_nodes(topology: Topology, topology_file: Path, nats_url: str, log_dir: Path) -> list[NodeProcess]:
    return [
        start_node(f"{entry.key}-1", ["--model", entry.key, "--topology", str(topology_file), "--nats", nats_url], log_dir)
        for entry in topology.cascade()
    ]


async def ask_all(nats_url: str, prefix: str, questions: QuestionSet, tier: str | None = None) -> list[Answer | BaseException]:
    """Every question through the ingress, as a client asks, or straight to one ``tier``'s subject."""
    async with await MeshClient.connect(nats_url, prefix) as client:
        target = client.to_tier(tier) if tier else client
        with console.status(f"asking {len(questions.tasks)} questions{f' of tier {tier}' if tier else ''} ..."):
            return await asyncio.gather(
                *(target.ask(task.prompt_messages(), scenario=SCENARIO, timeout=180.0, retries=0, max_tokens=questions.max_tokens, temperature=0.0)
                  for task in questions.tasks),
                return_exceptions=True,
            )


def _prepare_models(topology: Topology) -> None:
    """Convert GGUF models once, before the nodes start, so they don't race to do it."""
    from disrouter.node.backends.sources import local_folder, resolve

    with console.status("preparing models (a GGUF is converted once, about a minute) ..."):
        for model in {entry.model for entry in topology.models}:
            local_folder(resolve(model))


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def show(topology: Topology, questions: QuestionSet, mesh: list[Scored], largest: list[Scored]) -> None:
    """The table of the mesh's replies, then its utility against Largest-only's."""
    alpha = scenario_alpha(SCENARIO)
    strongest = topology.cascade()[-1].key
    console.print(results_table(f"DiSRouter demo: {len(questions.tasks)} questions from {questions.name} (scenario: {SCENARIO})", mesh))
    ours, theirs = summarise(mesh, alpha), summarise(largest, alpha)
    console.print(ours.line("mesh (self-routed)", alpha))
    console.print(theirs.line(f"largest only ({strongest}, the same questions)", alpha))
    verdict = "above" if ours.utility > theirs.utility else "not above"
    console.print(f"utility = accuracy - alpha * cost: the mesh {ours.utility:.3f} vs largest only {theirs.utility:.3f}, {verdict}")


def run_demo(port: int | None = None, keep: bool = False, topology: str | None = None) -> int:
    """Run the demo; 0 when every question got an answer from the mesh and from Largest-only."""
    started = time.monotonic()
    topology_file = Path(topology) if topology else topology_path("demo")
    topo = load_topology(topology_file)
    questions = questions_for(topo)
    _prepare_models(topo)
    log_dir = Path(tempfile.mkdtemp(prefix="disrouter-demo-"))
    with NatsServer(port=port) as server:
        console.print(f"NATS (JetStream) on [bold]{server.url}[/bold]; node logs in {log_dir}")
        nodes = launch_nodes(topo, topology_file, server.url, log_dir)
        try:
            asyncio.run(wait_until_registered(server.url, topo.prefix, nodes, console))
            console.print(f"{len(nodes)} nodes live after {time.monotonic() - started:.1f} s: " + ", ".join(n.node_id for n in nodes))
            if keep:
                console.print(
                    f"The mesh is running. Try:\n  disrouter ask --nats {server.url} \"{questions.tasks[0].question}\"\n"
                    f"  disrouter status --nats {server.url} --json\nCtrl-C (or SIGTERM) stops it."
                )
                _wait_for_signal()
                return 0
            costs = {entry.key: entry.cost for entry in topo.models}
            mesh = score(questions.tasks, asyncio.run(ask_all(server.url, topo.prefix, questions)), costs)
            largest = score(questions.tasks, asyncio.run(ask_all(server.url, topo.prefix, questions, topo.cascade()[-1].key)), costs)
            show(topo, questions, mesh, largest)
            return 0 if all(isinstance(s.reply, Answer) for s in [*mesh, *largest]) else 1
        finally:
            with console.status("stopping nodes ..."):
                stop_nodes(nodes)
            if not keep:
                shutil.rmtree(log_dir, ignore_errors=True)
