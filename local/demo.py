"""`disrouter demo`: embedded NATS, the demo topology's nodes as real processes, a few questions."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from rich.console import Console
from rich.table import Table

from disrouter.mesh.client import MeshClient, MeshError
from disrouter.mesh.protocol import Answer
from disrouter.mesh.topology import Topology, load_topology
from disrouter.topologies import topology_path

from .nats_server import NatsServer
from .processes import NodeProcess, start_node, stop_nodes, wait_until_registered

# Shaped like none of the few-shot demonstrations in node/prompts.py (a product of big numbers, a
# capital, a sports winner, a "how many"), so a rejection is the model's own and not a copied pattern.
QUESTIONS = [
    "Which planet is known as the Red Planet?",
    "What is the chemical symbol for gold?",
    "Who painted the Mona Lisa?",
    "Who wrote Romeo and Juliet?",
    "Who was the mayor of Ulm in 1712?",
    "What is the integral of x^3 * ln(x) dx?",
]
console = Console(width=None if sys.stdout.isatty() else 140)


def launch_nodes(topology: Topology, topology_file: Path, nats_url: str, log_dir: Path) -> list[NodeProcess]:
    return [
        start_node(f"{entry.key}-1", ["--model", entry.key, "--topology", str(topology_file), "--nats", nats_url], log_dir)
        for entry in topology.cascade()
    ]


async def ask_all(nats_url: str, prefix: str, questions: list[str]) -> list[Answer | MeshError]:
    async with await MeshClient.connect(nats_url, prefix) as client:
        with console.status(f"asking {len(questions)} questions ..."):
            return await asyncio.gather(
                *(client.ask(q, scenario="balance", timeout=180.0, retries=0, max_tokens=48) for q in questions),
                return_exceptions=True,
            )


def results_table(questions: list[str], results: list[Answer | BaseException]) -> Table:
    table = Table(title="DiSRouter demo (scenario: balance)", show_lines=True)
    for column, style in (("question", "bold"), ("answer", ""), ("answered by", "cyan"), ("path", "magenta"), ("ms", "")):
        table.add_column(column, style=style, overflow="fold")
    for question, result in zip(questions, results):
        if isinstance(result, Answer):
            path = " -> ".join(f"{hop.model} ({hop.decision})" for hop in result.path)
            ms = sum(hop.ms for hop in result.path)
            table.add_row(question, result.text[:120], result.node_id, path, f"{ms:.0f}")
        else:
            table.add_row(question, f"[red]{result}[/red]", "-", "-", "-")
    return table


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


def run_demo(port: int | None = None, keep: bool = False, topology: str | None = None) -> int:
    topology_file = Path(topology) if topology else topology_path("demo")
    topo = load_topology(topology_file)
    _prepare_models(topo)
    log_dir = Path(tempfile.mkdtemp(prefix="disrouter-demo-"))
    with NatsServer(port=port) as server:
        console.print(f"NATS (JetStream) on [bold]{server.url}[/bold]; node logs in {log_dir}")
        nodes = launch_nodes(topo, topology_file, server.url, log_dir)
        try:
            asyncio.run(wait_until_registered(server.url, topo.prefix, nodes, console))
            console.print(f"{len(nodes)} nodes live: " + ", ".join(f"{n.node_id}" for n in nodes))
            if keep:
                console.print(
                    f"The mesh is running. Try:\n  disrouter ask --nats {server.url} \"What is the capital of France?\"\n"
                    f"  disrouter status --nats {server.url} --json\nCtrl-C (or SIGTERM) stops it."
                )
                _wait_for_signal()
                return 0
            results = asyncio.run(ask_all(server.url, topo.prefix, QUESTIONS))
            console.print(results_table(QUESTIONS, results))
            answered_by = {r.node_id for r in results if isinstance(r, Answer)}
            console.print(f"{sum(isinstance(r, Answer) for r in results)}/{len(QUESTIONS)} answered, by {len(answered_by)} node(s)")
            return 0 if all(isinstance(r, Answer) for r in results) else 1
        finally:
            with console.status("stopping nodes ..."):
                stop_nodes(nodes)
            if not keep:
                shutil.rmtree(log_dir, ignore_errors=True)
