"""`disrouter-node` processes started by the demo and the benchmark: launch, wait, stop."""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from disrouter.mesh.connection import connect
from disrouter.mesh.membership import list_cards, open_registry
from disrouter.mesh.subjects import Subjects

READY_TIMEOUT_S = 600.0


class NodeStartError(Exception):
    """A node process exited or did not register in time."""


@dataclass
class NodeProcess:
    node_id: str
    process: subprocess.Popen
    log_path: Path

    def last_log_line(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(no output)"


def _node_command() -> list[str]:
    script = Path(sys.executable).with_name("disrouter-node")
    if script.is_file():
        return [str(script)]
    found = shutil.which("disrouter-node")
    return [found] if found else [sys.executable, "-m", "disrouter.node.cli"]


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, so no node outlives it (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_node(node_id: str, options: list[str], log_dir: Path) -> NodeProcess:
    """Start ``disrouter-node --node-id NODE_ID OPTIONS...`` for an embedded (unsecured) NATS
    server, with JSON logs in ``log_dir``."""
    log_path = log_dir / f"{node_id}.log"
    command = [*_node_command(), "--node-id", node_id, "--log-format", "json", *options]
    # the embedded server has no auth: credentials meant for another server would only break the login
    env = {name: value for name, value in os.environ.items() if not name.startswith("DISROUTER_NATS_")}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    return NodeProcess(node_id, process, log_path)


def stop_nodes(nodes: list[NodeProcess], timeout: float = 30.0) -> None:
    """SIGTERM every node (they drain), then SIGKILL whatever is left."""
    for node in nodes:
        if node.process.poll() is None:
            node.process.terminate()
    deadline = time.monotonic() + timeout
    for node in nodes:
        try:
            node.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


async def wait_until_registered(nats_url: str, prefix: str, nodes: list[NodeProcess], console: Console) -> None:
    """Show progress until every node's card is in the registry; NodeStartError if one exits."""
    nc = await connect(nats_url, name="disrouter-launcher")
    try:
        kv = await open_registry(nc, Subjects(prefix))
        expected = {node.node_id for node in nodes}
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task("", total=None)
            started = time.monotonic()
            while True:
                for node in nodes:
                    if node.process.poll() is not None:
                        raise NodeStartError(f"node {node.node_id} exited with {node.process.returncode}: {node.last_log_line()}")
                live = {card.node_id for card in await list_cards(kv)} & expected
                waiting = sorted(expected - live)
                progress.update(task, description=f"loading models: {len(live)}/{len(expected)} nodes registered"
                                + (f" (waiting for {', '.join(waiting)})" if waiting else ""))
                if not waiting:
                    return
                if time.monotonic() - started > READY_TIMEOUT_S:
                    raise NodeStartError(f"nodes {', '.join(waiting)} did not register within {READY_TIMEOUT_S:.0f}s")
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


