"""Run the gateway: connect to NATS, watch the registry, serve HTTP until SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from disrouter.mesh.client import MeshClient
from disrouter.mesh.connection import NatsAuth, connect, redact, server_list
from disrouter.mesh.subjects import Subjects

from .app import create_app
from .models import LiveModels
from .settings import GatewaySettings

log = structlog.get_logger("disrouter.gateway")


async def serve(settings: GatewaySettings, nats: str | list[str] | None = None, auth: NatsAuth | None = None) -> int:
    """Serve until SIGTERM or SIGINT; requests in flight get up to ``timeout_s`` to finish."""
    keys = settings.api_keys()
    subjects = Subjects(settings.prefix)
    nc = await connect(nats, name="disrouter-gateway", auth=auth)
    models = LiveModels(nc, subjects)
    models.start()
    client = MeshClient(nc, settings.prefix, retry_overloaded=False)  # 429 at once: OpenAI clients back off and retry by themselves
    app = create_app(client, models, api_keys=keys, timeout_s=settings.timeout_s)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.timeout_s)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info(
            "gateway_started", url=f"http://{settings.host}:{settings.port}", nats=[redact(u) for u in server_list(nats)],
            prefix=settings.prefix, api_keys=len(keys),
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("gateway_stopping")
    finally:
        await runner.cleanup()  # stops listening, then waits for requests in flight
        await models.stop()
        await nc.drain() if nc.is_connected else await nc.close()
    return 0
