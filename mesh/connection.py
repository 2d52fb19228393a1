"""Connecting to NATS with the mesh's defaults and one readable error when it is unreachable."""

from __future__ import annotations

import os

import structlog
from nats.aio.client import Client as NATS

log = structlog.get_logger("disrouter.mesh.connection")

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
NATS_URL_ENV = "DISROUTER_NATS"


class MeshConnectionError(Exception):
    """NATS could not be reached."""


def default_nats_url() -> str:
    """``$DISROUTER_NATS`` or ``nats://127.0.0.1:4222``."""
    return os.environ.get(NATS_URL_ENV) or DEFAULT_NATS_URL


def server_list(urls: str | list[str] | None) -> list[str]:
    """A comma-separated string or list of server URLs (default: ``default_nats_url()``)."""
    if urls is None:
        urls = default_nats_url()
    if isinstance(urls, str):
        urls = [u.strip() for u in urls.split(",") if u.strip()]
    return [u if "://" in u else f"nats://{u}" for u in urls]


async def connect(urls: str | list[str] | None = None, name: str = "disrouter", **options) -> NATS:
    """Connect (reconnecting forever once connected); raise MeshConnectionError if unreachable."""
    servers = server_list(urls)
    connected = False
    nc = NATS()

    async def on_error(exc: Exception) -> None:
        if connected:  # before the first connection the caller gets one error instead
            log.warning("nats_error", error=str(exc) or type(exc).__name__)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    settings = dict(
        servers=servers,
        name=name,
        connect_timeout=2,
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    settings.update(options)
    try:
        # Fail fast on the first connection; reconnect without limit afterwards.
        await nc.connect(**{**settings, "max_reconnect_attempts": 1})
    except Exception as exc:
        raise MeshConnectionError(f"cannot reach NATS at {', '.join(servers)} ({exc or type(exc).__name__})") from None
    nc.options["max_reconnect_attempts"] = settings["max_reconnect_attempts"]
    connected = True
    return nc
