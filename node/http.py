"""The node's probe and metrics endpoints (``--http-port``): a tiny asyncio HTTP/1.1 server, no framework.

``GET /healthz``: 200 while the process runs. ``GET /readyz``: 200 once the model is loaded, the
node is registered in the mesh and NATS is connected; 503 with the reasons otherwise (also while
draining). ``GET /metrics``: the node's Prometheus metrics (plus the vLLM engine's, when it runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

log = structlog.get_logger("disrouter.node.http")

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_BYTES = 8192
Readiness = Callable[[], list[str]]  # the reasons the node is not ready; empty when it is


class ProbeServer:
    """Serves the three endpoints; ``attach`` hands it the running node's readiness and metrics."""

    def __init__(self) -> None:
        self._readiness: Readiness = lambda: ["model loading"]
        self._metrics: Callable[[], bytes] = lambda: b""
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    def attach(self, readiness: Readiness, metrics: Callable[[], bytes]) -> None:
        self._readiness, self._metrics = readiness, metrics

    async def start(self, host: str, port: int) -> "ProbeServer":
        """Listen on ``host:port`` (port 0: a free one, then in ``self.port``)."""
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http_listening", host=host, port=self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a GET of ``path`` (query string ignored)."""
        path = path.split("?", 1)[0]
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            reasons = self._readiness()
            return (503, "text/plain", ("not ready: " + "; ".join(reasons) + "\n").encode()) if reasons else (200, "text/plain", b"ready\n")
        if path == "/metrics":
            return 200, PROMETHEUS_TEXT, self._metrics()
        return 404, "text/plain", b"not found: try /healthz, /readyz or /metrics\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, path, _ = head[:MAX_REQUEST_BYTES].split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, kind, body = self.respond(path) if method in ("GET", "HEAD") else (405, "text/plain", b"GET only\n")
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            header = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(header.encode() + (body if method == "GET" else b""))
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass  # a probe that hung up or sent garbage gets nothing
        finally:
            writer.close()
