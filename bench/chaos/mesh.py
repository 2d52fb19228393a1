"""The chaos mesh: a 3-server NATS cluster and real `disrouter-node` processes (instant backend),
with the faults the schedule applies to them."""

from __future__ import annotations

import os
import signal
import tempfile
import uuid
from pathlib import Path

from disrouter.local.nats_server import NatsCluster
from disrouter.local.processes import NodeProcess, start_node, stop_nodes

from .netns import Netns

# tier -> (cost, extra flags): small is the entry, large always answers
TIERS = {"small": (0.1, ["--entry"]), "medium": (0.4, []), "large": (0.9, ["--policy", "always"])}
REPLICAS = 2


class ChaosMesh:
    """Cluster + nodes; every fault method returns a short description for the fault log."""

    def __init__(self, log_dir: Path, net: Netns | None = None) -> None:
        self.log_dir = log_dir
        self.prefix = f"chaos{uuid.uuid4().hex[:6]}"
        self.net = net  # with it, each NATS server runs in its own network namespace and can be partitioned
        self.cluster = net.cluster() if net else NatsCluster(3)
        self.nodes: dict[str, NodeProcess] = {}
        self.tier_of: dict[str, str] = {}
        self.paused: set[str] = set()
        self._replacements = 0

    def start(self) -> list[str]:
        self.cluster.start()
        for tier in TIERS:
            for i in range(REPLICAS):
                self.start_node(f"{tier}-{i}", tier)
        return list(self.nodes)

    def start_node(self, node_id: str, tier: str) -> None:
        cost, extra = TIERS[tier]
        options = ["--backend", "instant", "--model", "instant", "--key", tier, "--cost", str(cost), "--nats", self.cluster.urls,
                   "--prefix", self.prefix, "--registry-ttl", "3", "--heartbeat", "0.5", "--log-level", "info", *extra]
        self.nodes[node_id] = start_node(node_id, options, self.log_dir)
        self.tier_of[node_id] = tier

    def live_nodes(self) -> list[str]:
        return sorted(n for n, p in self.nodes.items() if p.process.poll() is None and n not in self.paused)

    def kill(self, node_id: str) -> None:
        self.nodes[node_id].process.kill()
        self.nodes[node_id].process.wait()

    def restart(self, node_id: str) -> None:
        self.start_node(node_id, self.tier_of[node_id])

    def pause(self, node_id: str) -> None:
        os.kill(self.nodes[node_id].process.pid, signal.SIGSTOP)
        self.paused.add(node_id)

    def resume(self, node_id: str) -> None:
        os.kill(self.nodes[node_id].process.pid, signal.SIGCONT)
        self.paused.discard(node_id)

    def drain_and_replace(self, node_id: str) -> str:
        """SIGTERM one node (it drains) and start a replacement in its tier at once (a rolling restart)."""
        self.nodes[node_id].process.terminate()
        self._replacements += 1
        new_id = f"{self.tier_of[node_id]}-r{self._replacements}"
        self.start_node(new_id, self.tier_of[node_id])
        return new_id

    def partition(self, server: int) -> None:
        """Cut NATS server ``server`` off from the other two (both ways); it keeps running, clients still reach it."""
        assert self.net is not None
        self.net.cut(server)

    def heal(self, server: int) -> None:
        assert self.net is not None
        self.net.heal(server)

    def stop(self) -> None:
        for node_id in list(self.paused):
            self.resume(node_id)
        stop_nodes(list(self.nodes.values()), timeout=20)
        self.cluster.stop()


def log_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="disrouter-chaos-logs-"))
