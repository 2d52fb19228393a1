"""`disrouter status --watch`: a refreshing view of the live mesh, from the registry's node cards.

Each node heartbeats its card (load, in-flight limit, queries by decision, errors, recent answer
time) into the registry; this view watches the registry, so it sees a card change, a node join
and a node leave as they happen, and redraws every ``interval`` seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque

from nats.aio.client import Client as NATS
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from disrouter.mesh.membership import Membership, NodeCard, open_registry, registry_ttl
from disrouter.mesh.subjects import Subjects

EVENTS_SHOWN = 10


def _ago(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.0f}h"


def nodes_table(cards: list[NodeCard], prefix: str) -> Table:
    """Live nodes grouped by tier (cheapest first): load against the limit, counts, recent answer time."""
    table = Table(title=f"{len(cards)} live node(s) on {prefix}  {time.strftime('%H:%M:%S')}", title_justify="left")
    for column in ("tier", "node", "entry", "cost", "load", "answer", "forced", "reject", "overflow", "errors", "recent ms", "up"):
        table.add_column(column, justify="left" if column in ("tier", "node", "entry") else "right")
    previous = None
    now = time.time()
    for c in sorted(cards, key=lambda c: (c.cost, c.model_key, c.node_id)):
        tier = c.model_key if c.model_key != previous else ""
        previous = c.model_key
        load = f"{c.load}/{c.max_in_flight}" if c.max_in_flight else str(c.load)
        counts = [str(c.decisions.get(name, 0)) for name in ("answer", "forced", "reject", "overflow")]
        recent = "-" if c.recent_ms is None else f"{c.recent_ms:.1f}" if c.recent_ms < 10 else f"{c.recent_ms:.0f}"
        table.add_row(tier, c.node_id, "yes" if c.entry else "", f"{c.cost:g}", load, *counts, str(c.errors), recent, _ago(now - c.started_at))
    return table


class MeshWatch:
    """The registry as this view last saw it, and the joins and leaves it noticed."""

    def __init__(self, membership: Membership, prefix: str) -> None:
        self.membership = membership
        self.prefix = prefix
        self.events: deque[str] = deque(maxlen=EVENTS_SHOWN)
        self._known: dict[str, NodeCard] | None = None  # None until the first refresh

    def refresh(self) -> Group:
        """Note who joined or left since the last refresh; the view to draw."""
        cards = self.membership.live()
        now = {c.node_id: c for c in cards}
        stamp = time.strftime("%H:%M:%S")
        if self._known is None:
            self.events.append(f"{stamp} watching: {len(now)} node(s) live")
            self._known = now
        for node_id in now.keys() - self._known.keys():
            self.events.append(f"{stamp} joined {node_id} ({now[node_id].model_key}, cost {now[node_id].cost:g})")
        for node_id in self._known.keys() - now.keys():
            self.events.append(f"{stamp} left   {node_id} ({self._known[node_id].model_key})")
        self._known = now
        events = Text("\n".join(self.events) or "no joins or leaves yet", style="dim")
        return Group(nodes_table(cards, self.prefix), events)


async def watch(nc: NATS, prefix: str, interval: float, iterations: int | None, console: Console | None = None) -> None:
    """Draw the live mesh every ``interval`` seconds, ``iterations`` times (None: until cancelled)."""
    kv = await open_registry(nc, Subjects(prefix))
    membership = Membership(kv, ttl=await registry_ttl(kv))
    await membership.start()  # watch only: this view has no card of its own
    view = MeshWatch(membership, prefix)
    try:
        first = view.refresh()
        print(f"disrouter status: watching {prefix} every {interval:g}s; Ctrl-C stops", file=sys.stderr, flush=True)
        with Live(first, console=console or Console(), auto_refresh=False) as live:
            done = 0
            while iterations is None or done < iterations:
                await asyncio.sleep(interval)
                live.update(view.refresh(), refresh=True)
                done += 1
    finally:
        await membership.stop()
