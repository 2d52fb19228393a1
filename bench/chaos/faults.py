"""The seeded fault schedule and the task that applies it, logging each fault with its times."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field

from .mesh import ChaosMesh

# kind -> (period s, first at s, duration s): SIGKILL + restart, SIGSTOP + SIGCONT, NATS server
# SIGKILL + restart, SIGTERM drain + replacement
PLAN = {"kill_node": (20.0, 8.0, 3.0), "pause_node": (40.0, 15.0, 10.0), "kill_nats": (60.0, 30.0, 5.0), "drain_node": (50.0, 42.0, 0.0)}
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


def schedule(seconds: float, seed: int) -> list[Fault]:
    """Every kind at its period with +-15% seeded jitter, sorted by time."""
    rng = random.Random(seed)
    faults = []
    for kind, (period, first, duration) in PLAN.items():
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
        if fault.kind == "kill_nats":
            running = [s for s in self.mesh.cluster.servers if s.running]
            if len(running) < 3:
                fault.skipped, fault.note = True, "a server is still down"
                return
            server = self.rng.choice(running)
            fault.target = server.name or server.url
            server.halt(kill=True)
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

    async def _undo_after(self, fault: Fault) -> None:
        await asyncio.sleep(fault.duration)
        if fault.kind == "kill_node":
            await asyncio.to_thread(self.mesh.restart, fault.target)
        elif fault.kind == "pause_node":
            self.mesh.resume(fault.target)
        else:
            server = next(s for s in self.mesh.cluster.servers if (s.name or s.url) == fault.target)
            await asyncio.to_thread(server.start)
        fault.ended = self.now()
