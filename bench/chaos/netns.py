"""Network namespaces for the chaos soak: one per NATS server, joined by veth pairs to a bridge in a
hub namespace where the bench, its clients and its nodes run; ``cut(i)`` partitions server i from the
other two with blackhole routes (both ways) and ``heal(i)`` removes them. Linux, root and iproute2.

Nothing touches the host's own network: every link and address lives in the namespaces, whose names
carry the bench's pid (parallel runs never clash) and which ``destroy()`` removes.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from disrouter.local.nats_server import NatsCluster, NatsServer

SUBNET = "10.213.0"  # private; the same in every run, each run has its own namespaces
HUB_ADDRESS = f"{SUBNET}.254"
PREFIX = "drchaos"  # namespace names: drchaos<pid>-hub, drchaos<pid>-s<i>
CLIENT_PORT, ROUTE_PORT = 4222, 6222  # each server has its own namespace: the standard ports never clash
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")


class NetnsError(Exception):
    """An `ip` command failed while building or changing the namespaces."""


def why_not() -> str | None:
    """Why this machine cannot run the partition (None when it can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs iproute2 (the `ip` command)"
    return None


def _ip(*args: str) -> None:
    run = subprocess.run(["ip", *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {run.stderr.strip() or run.returncode}")


def _setns(path: str) -> None:
    """Move the calling thread (and the threads and processes it starts later) into a network namespace."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise NetnsError(f"setns {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def sweep() -> list[str]:
    """Delete namespaces left by chaos runs whose process is gone (a SIGKILLed bench); returns their names."""
    removed = []
    for path in NETNS_DIR.glob(f"{PREFIX}*-*") if NETNS_DIR.is_dir() else []:
        pid = path.name.removeprefix(PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", path.name], capture_output=True)
            removed.append(path.name)
    return removed


class Netns:
    """A hub namespace with a bridge, and ``size`` server namespaces each on the bridge by a veth."""

    def __init__(self, size: int = 3) -> None:
        tag = f"{PREFIX}{os.getpid()}"
        self.hub = f"{tag}-hub"
        self.servers = [f"{tag}-s{i}" for i in range(size)]
        self.cut_now: set[int] = set()
        self._home: int | None = None  # fd of the namespace the bench started in

    @staticmethod
    def address(i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def create(self) -> "Netns":
        try:
            _ip("netns", "add", self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "addr", "add", f"{HUB_ADDRESS}/24", "dev", "br0")
            for dev in ("lo", "br0"):
                _ip("-n", self.hub, "link", "set", dev, "up")
            for i, ns in enumerate(self.servers):
                _ip("netns", "add", ns)
                _ip("-n", self.hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                for dev in ("lo", "eth0"):
                    _ip("-n", ns, "link", "set", dev, "up")
        except NetnsError:
            self.destroy()
            raise
        return self

    def enter_hub(self) -> None:
        """Move this thread into the hub: call it before starting threads, nodes or clients."""
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        _setns(str(NETNS_DIR / self.hub))

    def leave_hub(self) -> None:
        if self._home is not None:
            try:
                _setns(f"/proc/self/fd/{self._home}")
            finally:
                os.close(self._home)
            self._home = None

    def _routes(self, action: str, i: int) -> None:
        for j in range(len(self.servers)):
            if j != i:
                _ip("-n", self.servers[i], "route", action, "blackhole", f"{self.address(j)}/32")
                _ip("-n", self.servers[j], "route", action, "blackhole", f"{self.address(i)}/32")

    def cut(self, i: int) -> None:
        """Server i no longer reaches the other servers, nor they it; clients in the hub still reach all three."""
        self._routes("add", i)
        self.cut_now.add(i)

    def heal(self, i: int) -> None:
        self._routes("del", i)
        self.cut_now.discard(i)

    def cluster(self, name: str = "disrouter") -> NatsCluster:
        """A 3-server NATS cluster, server i running inside namespace i on its own address."""
        return NetnsCluster(self, name)

    def destroy(self) -> None:
        """Delete every namespace (their veths and the bridge go with them); never raises."""
        try:
            self.leave_hub()
        except NetnsError:
            pass
        for ns in [*self.servers, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def leftovers(self) -> list[str]:
        return [ns for ns in [*self.servers, self.hub] if (NETNS_DIR / ns).exists()]


class NetnsCluster(NatsCluster):
    """NatsCluster whose servers run in the namespaces of a ``Netns`` (same interface: servers, urls, start, stop)."""

    def __init__(self, net: Netns, name: str = "disrouter") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="disrouter-nats-cluster-")
        hosts = [net.address(i) for i in range(len(net.servers))]
        self.servers = [
            NatsServer(CLIENT_PORT, Path(self._tmp.name) / f"s{i}", host, name=f"{name}-{i}", cluster_name=name, cluster_port=ROUTE_PORT,
                       routes=[f"nats://{other}:{ROUTE_PORT}" for other in hosts if other != host], netns=ns)
            for i, (host, ns) in enumerate(zip(hosts, net.servers))
        ]
