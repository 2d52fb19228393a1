"""The gateway's HTTP routes (aiohttp): chat completions, models, health, readiness, metrics."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import structlog
from aiohttp import web

from disrouter.mesh.client import MeshClient, MeshError
from disrouter.mesh.protocol import Answer, Chunk

from .errors import GatewayError, from_mesh
from .metrics import GatewayMetrics
from .models import LiveModels
from .openai_api import ChatRequest, completion, final_chunks, parse_chat_request, route_headers, sse, text_chunk
from .settings import ROUTED_MODEL

log = structlog.get_logger("disrouter.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")  # for probes and scrapers: no API key

CLIENT: web.AppKey[MeshClient] = web.AppKey("client", MeshClient)
MODELS: web.AppKey[LiveModels] = web.AppKey("models", LiveModels)
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)
KEYS: web.AppKey[frozenset] = web.AppKey("keys", frozenset)
TIMEOUT: web.AppKey[float] = web.AppKey("timeout", float)


def error_response(error: GatewayError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers())


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API keys on /v1, and every error in the OpenAI shape (aiohttp's own 404, 405, 413 too)."""
    try:
        if request.path.startswith("/v1/"):
            _authorize(request)
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "bad_request")
        return error_response(GatewayError(exc.status, code, exc.reason))


def _authorize(request: web.Request) -> None:
    keys = request.app[KEYS]
    if not keys:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(given.strip().encode(), key.encode()) for key in keys):
        raise GatewayError(401, "invalid_api_key", "missing or unknown API key (Authorization: Bearer <key>)", "invalid_request_error")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when NATS is connected and the registry is read (the bucket may still be empty)."""
    connected = request.app[CLIENT].nc.is_connected
    ready = connected and request.app[MODELS].synced
    return web.json_response({"ready": ready, "nats_connected": connected, "registry": request.app[MODELS].synced}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.content_type})


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(request.app[MODELS].listing())


def _client_for(request: web.Request, chat: ChatRequest) -> tuple[MeshClient, dict[str, Any]]:
    """The routed name goes to the ingress; a tier's name goes to that tier, which answers itself (max_hops 1)."""
    client = request.app[CLIENT]
    if chat.model == ROUTED_MODEL:
        return client, {}
    tier = request.app[MODELS].tier_of(chat.model)
    if tier is None:
        raise GatewayError(404, "model_not_found", f"no live model {chat.model!r}; GET /v1/models lists them", "invalid_request_error", "model")
    return client.to_tier(tier), {"max_hops": 1}


def _ask_options(chat: ChatRequest, extra: dict[str, Any]) -> dict[str, Any]:
    q = chat.query
    messages = [m.model_dump() for m in q.messages]
    options = {"scenario": q.scenario, "max_tokens": q.max_tokens, "temperature": q.temperature, "top_p": q.top_p, "max_hops": q.max_hops}
    return {"question": messages, "timeout": chat.timeout_s, "retries": 0, "query_id": q.id, **options, **extra}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    metrics = request.app[METRICS]
    started = time.monotonic()
    metrics.in_flight.inc()
    try:
        chat = parse_chat_request(await _json(request), {k.lower(): v for k, v in request.headers.items()}, request.app[TIMEOUT])
        client, extra = _client_for(request, chat)
        options = _ask_options(chat, extra)
        if chat.stream:
            return await _stream(request, chat, client, options)
        try:
            answer = await client.ask(**options)
        except MeshError as exc:
            raise from_mesh(exc) from None
        metrics.answered(answer.model, answer.prompt_tokens, answer.completion_tokens)
        return web.json_response(completion(answer, chat.query, int(time.time())), headers=route_headers(answer))
    except GatewayError as exc:
        metrics.failed(exc.status, exc.code)
        raise
    finally:
        metrics.in_flight.dec()
        metrics.latency.labels("stream" if request.get("streamed") else "whole").observe(time.monotonic() - started)


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(400, "bad_request", f"the request body is not JSON: {exc}") from None


async def _stream(request: web.Request, chat: ChatRequest, client: MeshClient, options: dict[str, Any]) -> web.StreamResponse:
    """Server-sent events. The response starts with the first Chunk (or the Answer), so an error
    before it is a plain HTTP error with its status; an error after it is an ``error`` event."""
    request["streamed"] = True
    created = int(time.time())
    async with aclosing(client.stream(**options)) as events:
        try:
            first = await anext(events)
        except MeshError as exc:
            raise from_mesh(exc) from None
        model = request.app[MODELS].tier_of_node(first.node_id) or chat.model
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "x-disrouter-node": first.node_id, "x-disrouter-query-id": first.id}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await _send_events(response, first, events, chat, model, created, request.app[METRICS])
    await response.write_eof()
    return response


async def _send_events(
    response: web.StreamResponse, event: Chunk | Answer, events: Any, chat: ChatRequest, model: str, created: int, metrics: GatewayMetrics
) -> None:
    """Write each Chunk as it comes, then the closing events and ``[DONE]``; a mesh error becomes an error event."""
    streamed = False
    try:
        while isinstance(event, Chunk):
            await response.write(sse(text_chunk(event, model, created)))
            streamed = True
            event = await anext(events)
    except MeshError as exc:
        error = from_mesh(exc)
        metrics.failed(error.status, error.code)
        await response.write(sse(error.body()))
        return
    for closing in final_chunks(event, chat.query, created, chat.include_usage, streamed):
        await response.write(sse(closing))
    await response.write(sse("[DONE]"))
    metrics.answered(event.model, event.prompt_tokens, event.completion_tokens)


def create_app(client: MeshClient, models: LiveModels, *, api_keys: frozenset[str], timeout_s: float) -> web.Application:
    """The gateway application over an open MeshClient and live model table."""
    app = web.Application(middlewares=[openai_errors], client_max_size=1_000_000)
    app[CLIENT], app[MODELS], app[METRICS], app[KEYS], app[TIMEOUT] = client, models, GatewayMetrics(), api_keys, timeout_s
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
