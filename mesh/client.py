"""MeshClient: ask the mesh a question and get the final Answer, whichever node produced it.

```python
async with await MeshClient.connect("nats://127.0.0.1:4222") as client:
    answer = await client.ask("What is the capital of France?", scenario="cost")
    print(answer.text, answer.node_id, [hop.model for hop in answer.path])

answer = ask("What is 2 + 2?")  # synchronous helper
```
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from nats.aio.client import Client as NATS
from pydantic import ValidationError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from .connection import connect
from .protocol import DEFAULT_MAX_HOPS, DEFAULT_MAX_TOKENS, Answer, Error, ProtocolError, Query, decode_reply, encode
from .subjects import DEFAULT_PREFIX, Subjects


class MeshError(Exception):
    """The mesh answered with an Error, or nobody answered in time."""

    def __init__(self, code: str, message: str, query_id: str | None = None, error: Error | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.query_id = query_id
        self.error = error


Question = str | list[dict[str, str]]


class MeshClient:
    """Sends queries to ``<prefix>.ingress`` over an open NATS connection."""

    def __init__(self, nc: NATS, prefix: str = DEFAULT_PREFIX, *, owns_connection: bool = False) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self._owns_connection = owns_connection

    @classmethod
    async def connect(cls, urls: str | list[str] | None = None, prefix: str = DEFAULT_PREFIX, **options: Any) -> "MeshClient":
        """Connect to NATS (``$DISROUTER_NATS`` by default); raises MeshConnectionError."""
        return cls(await connect(urls, name="disrouter-client", **options), prefix, owns_connection=True)

    async def __aenter__(self) -> "MeshClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.close()

    async def ask(
        self,
        question: Question,
        *,
        scenario: str | float = "balance",
        timeout: float = 60.0,
        retries: int = 1,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        max_hops: int = DEFAULT_MAX_HOPS,
        query_id: str | None = None,
    ) -> Answer:
        """Ask and wait for the Answer; on timeout, retry up to ``retries`` times with the same id."""
        messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
        query_id = query_id or uuid.uuid4().hex
        last_error = "no attempt made"
        for attempt in range(retries + 1):
            query = Query(
                id=query_id,
                messages=messages,
                scenario=scenario,
                max_tokens=max_tokens,
                temperature=temperature,
                max_hops=max_hops,
                deadline=time.time() + timeout,
            )
            payload = encode(query.model_dump(exclude={"path", "reply_to", "wire"}))
            try:
                msg = await self.nc.request(self.subjects.ingress, payload, timeout=timeout)
            except NoRespondersError:
                last_error = f"no node serves {self.subjects.ingress}"
                await asyncio.sleep(min(0.5 * (attempt + 1), 2.0))
                continue
            except NatsTimeoutError:
                last_error = f"no answer within {timeout:g}s"
                continue
            try:
                reply = decode_reply(msg.data)
            except (ProtocolError, ValidationError) as exc:
                raise MeshError("bad_reply", f"unreadable reply from the mesh: {exc}", query_id) from None
            if isinstance(reply, Error):
                raise MeshError(reply.error.code.value, reply.error.message, reply.id, reply)
            return reply
        code = "unavailable" if last_error.startswith("no node") else "timeout"
        raise MeshError(code, f"{last_error} (after {retries + 1} attempts)", query_id)


def ask(question: Question, nats_url: str | list[str] | None = None, prefix: str = DEFAULT_PREFIX, **kwargs: Any) -> Answer:
    """Synchronous one-shot helper: connect, ask, close."""

    async def _run() -> Answer:
        async with await MeshClient.connect(nats_url, prefix) as client:
            return await client.ask(question, **kwargs)

    return asyncio.run(_run())
