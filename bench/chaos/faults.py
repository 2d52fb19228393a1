"""The seeded fault schedule and the task that applies it, logging each fault with its times."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field

from .mesh import ChaosMesh

# kind -> (period s, first at s, duration s): SIGKILL + restart, SIGSTOP + SIGCONT, NATS server
# SIGKILL + restart, SIGTERM drain + replacement, one NATS server cut off from the other two (network
# namespaces; only where the machine allows it)
PLAN = {"kill_node": (20.0, 8.0, 3.0), "pause_node": (40.0, 15.0, 10.0), "kill_nats": (60.0, 30.0, 5.0), "drain_node": (50.0, 42.0, 0.0),
        "partition": (120.0, 65.0, 15.0)}
TAIL_S = 10.0  # no fault starts this close to the end: the last one is seen to recover


@dataclass
class Fault:
    at: float  # seconds from the start of the load
    kind: str
    duration: float
    target: str = ""
    started: float | None = None  # when it was applied (seconds from the start)
    ended: float | None = None  # when it was undone (restart, SIGCONT, server back)
    note: str = ""
    skipped: bool = False

    def as_dict(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def schedule(seconds: float, seed: int, partition: bool = True) -> list[Fault]:
    """Every kind at its period with +-15% seeded jitter, sorted by time; ``partition`` False leaves partitions out."""
    rng = random.Random(seed)
    faults = []
    for kind, (period, first, duration) in PLAN.items():
        if kind == "partition" and not partition:
            continue
        t = first
        while t + duration < seconds - TAIL_S:
            faults.append(Fault(at=round(t + rng.uniform(-0.15, 0.15) * period * (t > first), 2), kind=kind, duration=duration))
            t += period
    return sorted(faults, key=lambda f: f.at)


@dataclass
class FaultRunner:
    mesh: ChaosMesh
    seed: int
    t0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed + 1)
        self._undo: list[asyncio.Task] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, faults: list[Fault]) -> None:
        for fault in faults:
            await asyncio.sleep(max(fault.at - self.now(), 0))
            await asyncio.to_thread(self.apply, fault)
            if not fault.skipped and fault.kind != "drain_node":
                self._undo.append(asyncio.create_task(self._undo_after(fault)))
        await asyncio.gather(*self._undo)

    def _victim(self) -> str | None:
        """A live node whose tier keeps another live replica (each tier stays served)."""
        live = self.mesh.live_nodes()
        tiers = [self.mesh.tier_of[n] for n in live]
        choices = [n for n in live if tiers.count(self.mesh.tier_of[n]) > 1]
        return self.rng.choice(choices) if choices else None

    def apply(self, fault: Fault) -> None:
        fault.started = self.now()
        if fault.kind in ("kill_nats", "partition"):
            self._nats_fault(fault)
            return
        victim = self._victim()
        if victim is None:
            fault.skipped, fault.note = True, "no tier has a spare live replica"
            return
        fault.target = victim
        if fault.kind == "kill_node":
            self.mesh.kill(victim)
        elif fault.kind == "pause_node":
            self.mesh.pause(victim)
        else:
            fault.note = f"replacement {self.mesh.drain_and_replace(victim)}"
            fault.ended = fault.started

    def _nats_fault(self, fault: Fault) -> None:
        """Kill or partition one NATS server, never while another is down or cut off (a cluster of 3 keeps a quorum)."""
        servers = self.mesh.cluster.servers
        if sum(s.running for s in servers) < 3 or (self.mesh.net and self.mesh.net.cut_now):
            fault.skipped, fault.note = True, "another NATS server is still down or cut off"
            return
        i = self.rng.randrange(len(servers))
        fault.target = servers[i].name or servers[i].url
        if fault.kind == "kill_nats":
            servers[i].halt(kill=True)
        else:
            self.mesh.partition(i)

    async def _undo_after(self, fault: Fault) -> None:
        await asyncio.sleep(fault.duration)
        if fault.kind == "kill_node":
            await asyncio.to_thread(self.mesh.restart, fault.target)
        elif fault.kind == "pause_node":
            self.mesh.resume(fault.target)
        elif fault.kind == "partition":
            await asyncio.to_thread(self.mesh.heal, self._server_index(fault.target))
        else:
            await asyncio.to_thread(self.mesh.cluster.servers[self._server_index(fault.target)].start)
        fault.ended = self.now()

    def _server_index(self, target: str) -> int:
        return next(i for i, s in enumerate(self.mesh.cluster.servers) if (s.name or s.url) == target)
