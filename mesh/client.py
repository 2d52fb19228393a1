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
from contextlib import aclosing
from typing import Any

from nats.aio.client import Client as NATS
from pydantic import ValidationError
from nats.errors import TimeoutError as NatsTimeoutError

from .connection import MeshNats, NatsAuth, connect
from .protocol import Answer, Chunk, Error, Progress, ProtocolError, Query, decode_reply, encode
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

HEARTBEAT_MISSES = 3  # heartbeat periods of silence after which the holder of a query is taken for dead
MAX_RESENDS = 3  # re-sends after silences, per attempt; after them only the timeout ends the wait
DENIAL_POLL_S = 0.5  # how often a waiting client looks for a permission denial the server reported late


class MeshClient:
    """Sends queries to ``<prefix>.ingress`` over an open NATS connection."""

    def __init__(self, nc: NATS, prefix: str = DEFAULT_PREFIX, *, owns_connection: bool = False) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self._owns_connection = owns_connection
        self.resends = 0  # queries sent again because their holder went silent (for tests and metrics)

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
        stall_timeout: float | None = None,
        **options: Any,
    ) -> Answer:
        """Ask and wait for the Answer; on timeout, retry up to ``retries`` times with the same id.

        The query asks for Progress heartbeats: when the node holding it goes silent for
        ``stall_timeout`` seconds (default: 3 of the node's heartbeat periods, 3 s at the node's
        default), the holder is taken for dead and the same query id is sent again at once, so a
        crashed node costs seconds, not the whole ``timeout``. One Answer is returned per call:
        later answers for the same id (from a stale attempt) are dropped.
        ``options`` are Query fields: scenario, max_tokens, temperature, top_p, max_hops
        (``progress=False`` turns heartbeats and stall detection off).
        """
        async with aclosing(self._exchange(question, query_id, timeout, retries, False, stall_timeout, options)) as events:
            async for event in events:
                if isinstance(event, Answer):
                    return event
        raise AssertionError("unreachable: an exchange ends with an Answer or raises")

    async def stream(
        self,
        question: Question,
        *,
        timeout: float = 60.0,
        query_id: str | None = None,
        retries: int = 0,
        stall_timeout: float | None = None,
        **options: Any,
    ) -> AsyncIterator[Chunk | Answer]:
        """Yield the answer's Chunks as the answering node decodes them, then the final Answer.

        Rejecting nodes stream nothing; ``timeout`` bounds the whole exchange. A holder that goes
        silent before any Chunk was yielded is recovered from as in ``ask`` (the query is sent
        again); once Chunks were yielded, a lost holder raises ``MeshError("interrupted")``
        instead, since another node's answer would not continue the text already given out.
        """
        async with aclosing(self._exchange(question, query_id, timeout, retries, True, stall_timeout, options)) as events:
            async for event in events:
                yield event

    async def _exchange(
        self,
        question: Question,
        query_id: str | None,
        timeout: float,
        retries: int,
        stream: bool,
        stall_timeout: float | None,
        options: dict[str, Any],
    ) -> AsyncIterator[Chunk | Answer]:
        """Send the query and yield what the caller sees: Chunks (when streaming), then one Answer.

        Every send of the query (first try, re-send after a stall, retry after a timeout) gets its
        own reply subject ``<inbox>.<n>`` under one subscription. Only the current send's
        Progress, Chunks and Errors count; an Answer from any send of this query id ends the
        exchange, and nothing after it reaches the caller.
        """
        query_id = query_id or uuid.uuid4().hex
        options = {"progress": True, **options}
        watch = bool(options["progress"])
        inbox = self.nc.new_inbox()
        subscription = await self.nc.subscribe(f"{inbox}.*")
        sends = 0
        chunks = 0
        last_error = "no attempt made"
        try:
            for attempt in range(retries + 1):
                started = time.monotonic()
                deadline = started + timeout
                payload = self._payload(question, query_id, timeout, stream=stream, **options)
                current = f"{inbox}.{sends}"
                await self._send(payload, current, timeout, flush=sends == 0)
                sends += 1
                stall_after: float | None = None  # armed by the first Progress of the current send
                heard = started
                resends = 0
                unavailable = False
                while True:
                    now = time.monotonic()
                    remaining = deadline - now
                    if remaining <= 0:
                        last_error = f"no answer within {timeout:g}s"
                        break
                    wait = remaining if stall_after is None else min(remaining, heard + stall_after - now)
                    if isinstance(self.nc, MeshNats):  # the server reports denials asynchronously: look each round
                        if denial := self.nc.denial_for(self.subjects.ingress):
                            raise MeshError("forbidden", denial, query_id)
                        wait = min(wait, DENIAL_POLL_S)
                    if wait <= 0:  # the holder went silent: it died (or its connection did)
                        if stream and chunks:
                            raise MeshError(
                                "interrupted", f"the node streaming the answer went silent after {chunks} chunk{'s' if chunks != 1 else ''}; "
                                "ask again for a whole new answer", query_id
                            )
                        if resends >= MAX_RESENDS:
                            stall_after = None  # leave the rest to the timeout
                            continue
                        resends += 1
                        self.resends += 1
                        current = f"{inbox}.{sends}"
                        sends += 1
                        await self._send(payload, current, timeout, flush=False)
                        stall_after, heard = None, time.monotonic()
                        continue
                    try:
                        msg = await subscription.next_msg(timeout=wait)
                    except NatsTimeoutError:
                        continue
                    if not msg.data and msg.headers and msg.headers.get("Status") == "503":
                        if msg.subject == current:
                            last_error = f"no node serves {self.subjects.ingress}"
                            unavailable = True
                            break
                        continue
                    reply = self._read(msg.data, query_id)
                    if isinstance(reply, Answer) and (msg.subject == current or not chunks):
                        yield reply  # any send's Answer will do, unless Chunks of the current one went out
                        return
                    if msg.subject != current:
                        continue  # a stale send's heartbeat, chunk or error: the current send decides
                    heard = time.monotonic()
                    if isinstance(reply, Progress):
                        if watch:
                            stall_after = stall_timeout if stall_timeout is not None else max(HEARTBEAT_MISSES * reply.every, 0.5)
                        continue
                    if isinstance(reply, Error):
                        raise MeshError(reply.error.code.value, reply.error.message, reply.id, reply)
                    if not stream:
                        raise MeshError("bad_reply", "a streamed chunk arrived for a query that did not ask to stream", query_id)
                    chunks += 1
                    yield reply
                if stream and chunks:  # a new send would stream a second text after the first one's start
                    raise MeshError("timeout", f"the streamed answer did not finish within {timeout:g}s", query_id)
                if unavailable and attempt < retries:
                    await asyncio.sleep(min(0.5 * (attempt + 1), 2.0))
            code = "unavailable" if last_error.startswith("no node") else "timeout"
            raise MeshError(code, f"{last_error} (after {retries + 1} attempt{'s' if retries else ''})", query_id)
        finally:
            try:
                await subscription.unsubscribe()
            except Exception:  # connection already closed
                pass

    async def _send(self, payload: bytes, reply: str, timeout: float, *, flush: bool) -> None:
        """Publish one send of the query; ``flush`` makes the server report a denial at once
        (the wait loop raises it as ``forbidden``)."""
        await self.nc.publish(self.subjects.ingress, payload, reply=reply)
        if flush and isinstance(self.nc, MeshNats):
            try:
                await self.nc.flush(timeout=min(timeout, 5.0))
            except Exception:  # slow or reconnecting: the answer's own timeout decides
                pass

    def _payload(self, question: Question, query_id: str, timeout: float, *, stream: bool, **options: Any) -> bytes:
        messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
        query = Query(id=query_id, messages=messages, deadline=time.time() + timeout, stream=stream, **options)
        return encode(query)

    @staticmethod
    def _read(data: bytes, query_id: str) -> Answer | Chunk | Progress | Error:
        try:
            return decode_reply(data)
        except (ProtocolError, ValidationError) as exc:
            raise MeshError("bad_reply", f"unreadable reply from the mesh: {exc}", query_id) from None


def ask(
    question: Question, nats_url: str | list[str] | None = None, prefix: str = DEFAULT_PREFIX, *, auth: NatsAuth | None = None, **kwargs: Any
) -> Answer:
    """Synchronous one-shot helper: connect, ask, close."""

    async def _run() -> Answer:
        async with await MeshClient.connect(nats_url, prefix, auth=auth) as client:
            return await client.ask(question, **kwargs)

    return asyncio.run(_run())
