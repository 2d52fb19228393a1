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
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client as NATS
from pydantic import ValidationError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from .connection import MeshNats, MeshPermissionError, NatsAuth, connect
from .protocol import Answer, Chunk, Error, ProtocolError, Query, decode_reply, encode
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
    async def connect(
        cls, urls: str | list[str] | None = None, prefix: str = DEFAULT_PREFIX, *, auth: NatsAuth | None = None, **options: Any
    ) -> "MeshClient":
        """Connect to NATS (``$DISROUTER_NATS``, ``DISROUTER_NATS_*`` credentials by default).

        Raises MeshConnectionError (MeshAuthError for refused credentials or TLS); ``options`` go to nats-py.
        """
        return cls(await connect(urls, name="disrouter-client", auth=auth, **options), prefix, owns_connection=True)

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
        timeout: float = 60.0,
        retries: int = 1,
        query_id: str | None = None,
        **options: Any,
    ) -> Answer:
        """Ask and wait for the Answer; on timeout, retry up to ``retries`` times with the same id.

        ``options`` are Query fields: scenario, max_tokens, temperature, top_p, max_hops.
        """
        query_id = query_id or uuid.uuid4().hex
        last_error = "no attempt made"
        for attempt in range(retries + 1):
            payload = self._payload(question, query_id, timeout, stream=False, **options)
            try:
                msg = await self.nc.request(self.subjects.ingress, payload, timeout=timeout)
            except NoRespondersError:
                last_error = f"no node serves {self.subjects.ingress}"
                await asyncio.sleep(min(0.5 * (attempt + 1), 2.0))
                continue
            except NatsTimeoutError:
                last_error = f"no answer within {timeout:g}s"
                continue
            except MeshPermissionError as exc:
                raise MeshError("forbidden", str(exc), query_id) from None
            reply = self._read(msg.data, query_id)
            if isinstance(reply, Answer):
                return reply
            raise MeshError("bad_reply", "a streamed chunk arrived for a query that did not ask to stream", query_id)
        code = "unavailable" if last_error.startswith("no node") else "timeout"
        raise MeshError(code, f"{last_error} (after {retries + 1} attempts)", query_id)

    async def stream(
        self, question: Question, *, timeout: float = 60.0, query_id: str | None = None, **options: Any
    ) -> AsyncIterator[Chunk | Answer]:
        """Yield the answer's Chunks as the answering node decodes them, then the final Answer.

        Rejecting nodes stream nothing; ``timeout`` bounds the whole exchange.
        """
        query_id = query_id or uuid.uuid4().hex
        inbox = self.nc.new_inbox()
        subscription = await self.nc.subscribe(inbox)
        deadline = time.monotonic() + timeout
        try:
            payload = self._payload(question, query_id, timeout, stream=True, **options)
            await self.nc.publish(self.subjects.ingress, payload, reply=inbox)
            await self._check_permissions(query_id, timeout)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MeshError("timeout", f"no answer within {timeout:g}s", query_id)
                try:
                    msg = await subscription.next_msg(timeout=remaining)
                except NatsTimeoutError:
                    raise MeshError("timeout", f"no answer within {timeout:g}s", query_id) from None
                if not msg.data and msg.headers and msg.headers.get("Status") == "503":
                    raise MeshError("unavailable", f"no node serves {self.subjects.ingress}", query_id)
                reply = self._read(msg.data, query_id)
                yield reply
                if isinstance(reply, Answer):
                    return
        finally:
            await subscription.unsubscribe()

    async def _check_permissions(self, query_id: str, timeout: float) -> None:
        """After a flush the server has reported any denied subscribe or publish: raise for those."""
        if not isinstance(self.nc, MeshNats):
            return
        try:
            await self.nc.flush(timeout=min(timeout, 5.0))
        except Exception:  # slow or reconnecting: the answer's own timeout decides
            return
        if denial := self.nc.denial_for(self.subjects.ingress):
            raise MeshError("forbidden", denial, query_id)

    def _payload(self, question: Question, query_id: str, timeout: float, *, stream: bool, **options: Any) -> bytes:
        messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
        query = Query(id=query_id, messages=messages, deadline=time.time() + timeout, stream=stream, **options)
        return encode(query.model_dump(exclude={"path", "reply_to", "wire"}))

    @staticmethod
    def _read(data: bytes, query_id: str) -> Answer | Chunk:
        try:
            reply = decode_reply(data)
        except (ProtocolError, ValidationError) as exc:
            raise MeshError("bad_reply", f"unreadable reply from the mesh: {exc}", query_id) from None
        if isinstance(reply, Error):
            raise MeshError(reply.error.code.value, reply.error.message, reply.id, reply)
        return reply


def ask(
    question: Question, nats_url: str | list[str] | None = None, prefix: str = DEFAULT_PREFIX, *, auth: NatsAuth | None = None, **kwargs: Any
) -> Answer:
    """Synchronous one-shot helper: connect, ask, close."""

    async def _run() -> Answer:
        async with await MeshClient.connect(nats_url, prefix, auth=auth) as client:
            return await client.ask(question, **kwargs)

    return asyncio.run(_run())
