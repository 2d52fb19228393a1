"""`disrouter bench chaos`: start the mesh, run load and the fault schedule together, write the results."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import time
from pathlib import Path

from nats.errors import TimeoutError as NatsTimeoutError
from rich.console import Console

from disrouter.local.processes import wait_until_registered

from .faults import FaultRunner, schedule
from .load import Load
from .mesh import ChaosMesh, log_folder
from .report import summarize, write

RATE = 4.0  # queries a second, all clients together
SEED = 13


def main(minutes: float, out: str | None, command: str, seed: int = SEED, rate: float = RATE) -> int:
    folder = Path(out or "bench-chaos")
    figures = asyncio.run(_run(minutes * 60, folder, command, seed, rate))
    Console(stderr=True).print(f"sent {figures['sent']}, answered {figures['answered']}, lost {figures['lost']}, duplicated {figures['duplicated']}, "
                               f"errors {figures['errors_by_code']}; results in {folder}")
    return 0


async def _run(seconds: float, folder: Path, command: str, seed: int, rate: float) -> dict:
    console = Console(stderr=True)
    logs = log_folder()
    mesh = ChaosMesh(logs)
    meta = {"command": command, "seed": seed, "rate_per_s": rate, "seconds": seconds, "node_logs": str(logs),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
            "load_at_start": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            "network_partition": "not done (needs network namespaces and root; see docs/reliability.md)"}
    try:
        await asyncio.to_thread(mesh.start)
        await _registered(mesh, console)
        load = Load(mesh.cluster.urls, mesh.prefix, rate, seed)
        await load.connect()
        faults = schedule(seconds, seed)
        t0 = time.monotonic()
        runner = FaultRunner(mesh, seed, t0)
        with console.status(f"chaos: {seconds:.0f}s of load at {rate:g}/s with {len(faults)} faults") as status:
            ticker = asyncio.create_task(_tick(status, load, runner, seconds))
            await asyncio.gather(load.run(seconds, t0), runner.run(faults))
            ticker.cancel()
        await load.close()
        meta["load_at_end"] = round(os.getloadavg()[0], 2)
        figures = summarize(load.records, faults, load.wire, meta)
    finally:
        await asyncio.to_thread(mesh.stop)
    write(folder, figures, load.records)
    return figures


async def _registered(mesh: ChaosMesh, console: Console, within: float = 90.0) -> None:
    """Every node's card listed; a new cluster answers JetStream requests only once it has elected leaders."""
    end = time.monotonic() + within
    while True:
        try:
            return await wait_until_registered(mesh.cluster.urls, mesh.prefix, list(mesh.nodes.values()), console)
        except NatsTimeoutError:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(1.0)


async def _tick(status, load: Load, runner: FaultRunner, seconds: float) -> None:  # noqa: ANN001
    while True:
        done = sum(r.outcome == "answered" for r in load.records)
        status.update(f"chaos: {runner.now():.0f}/{seconds:.0f}s, sent {len(load.records)}, answered {done}, down now: {sorted(runner.mesh.paused)}")
        await asyncio.sleep(1.0)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
