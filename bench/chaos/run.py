"""`disrouter bench chaos`: start the mesh, run load and the fault schedule together, write the results."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import time
from pathlib import Path

from nats.errors import TimeoutError as NatsTimeoutError
from rich.console import Console

from disrouter.local.processes import wait_until_registered

from .faults import FaultRunner, schedule
from .load import Load
from .mesh import ChaosMesh, log_folder
from .netns import Netns, NetnsError, sweep, why_not
from .report import summarize, write

RATE = 4.0  # queries a second, all clients together
SEED = 13


def main(minutes: float, out: str | None, command: str, seed: int = SEED, rate: float = RATE, partition: str = "auto") -> int:
    """``partition``: auto (when the machine allows it), on (fail if it cannot), off."""
    folder = Path(out or "bench-chaos")
    try:
        net, note = _network(partition)
    except NetnsError as exc:
        Console(stderr=True).print(f"error: --partition on, but the network partition cannot run: {exc}")
        return 2
    previous = signal.signal(signal.SIGTERM, _interrupted)  # SIGTERM tears down like Ctrl-C
    try:
        figures = asyncio.run(_run(minutes * 60, folder, command, seed, rate, net, note))
    finally:
        signal.signal(signal.SIGTERM, previous)
        if net is not None:
            net.destroy()
    Console(stderr=True).print(f"sent {figures['sent']}, answered {figures['answered']}, lost {figures['lost']}, duplicated {figures['duplicated']}, "
                               f"errors {figures['errors_by_code']}; results in {folder}")
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _network(mode: str) -> tuple[Netns | None, dict]:
    """The namespaces for the partition fault, entered (None when left out), and what chaos.json says about it."""
    if mode == "off":
        return None, {"enabled": False, "why": "left out: --partition off"}
    reason = why_not()
    if reason is None:
        sweep()
        net = Netns()
        try:
            net.create().enter_hub()  # before any thread, node or client starts: they all inherit the hub
            return net, {"enabled": True, "namespaces": [net.hub, *net.servers], "hub_address": "10.213.0.254",
                         "servers": [net.address(i) for i in range(len(net.servers))]}
        except NetnsError as exc:
            net.destroy()
            reason = str(exc)
    if mode == "on":
        raise NetnsError(reason)
    Console(stderr=True).print(f"[yellow]network partition left out: {reason}[/]")
    return None, {"enabled": False, "why": f"left out: {reason}"}


async def _run(seconds: float, folder: Path, command: str, seed: int, rate: float, net: Netns | None, partition: dict) -> dict:
    console = Console(stderr=True)
    logs = log_folder()
    mesh = ChaosMesh(logs, net)
    meta = {"command": command, "seed": seed, "rate_per_s": rate, "seconds": seconds, "node_logs": str(logs),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
            "load_at_start": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            "network_partition": partition}
    try:
        await asyncio.to_thread(mesh.start)
        await _registered(mesh, console)
        load = Load(mesh.cluster.urls, mesh.prefix, rate, seed)
        await load.connect()
        faults = schedule(seconds, seed, partition=net is not None)
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
        status.update(f"chaos: {runner.now():.0f}/{seconds:.0f}s, sent {len(load.records)}, answered {done}, paused: {sorted(runner.mesh.paused)}, "
                      f"cut off: {sorted(runner.mesh.net.cut_now) if runner.mesh.net else []}")
        await asyncio.sleep(1.0)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
