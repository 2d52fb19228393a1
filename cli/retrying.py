"""Retrying a CLI step through a NATS restart or a JetStream leader election, within one timeout."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats import errors as nats_errors
from nats.js import errors as js_errors

from disrouter.mesh.connection import MeshAuthError, MeshConnectionError, MeshPermissionError

T = TypeVar("T")
TRANSIENT = (MeshConnectionError, nats_errors.Error, js_errors.Error, asyncio.TimeoutError, ConnectionError)


def transient(exc: BaseException) -> bool:
    """A failure that waiting can cure: no server yet, no JetStream leader yet, a timed-out request."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, (MeshAuthError, MeshPermissionError))


async def retrying(step: Callable[[], Awaitable[T]], timeout: float) -> T:
    """``step()``, tried again after jittered backoff on transient failures until ``timeout`` seconds passed."""
    end = time.monotonic() + timeout
    wait = 0.2
    refused: MeshConnectionError | None = None  # the clearest reason seen: it names the server
    while True:
        try:
            return await asyncio.wait_for(step(), max(end - time.monotonic(), 0.1))
        except Exception as exc:
            if not transient(exc):
                raise
            if isinstance(exc, MeshConnectionError):
                refused = exc
            if time.monotonic() + wait >= end:
                if refused is not None:
                    raise refused from None
                raise MeshConnectionError(f"NATS did not answer within {timeout:g}s ({str(exc) or type(exc).__name__})") from None
        await asyncio.sleep(wait * random.uniform(0.5, 1.5))
        wait = min(wait * 2, 2.0)
