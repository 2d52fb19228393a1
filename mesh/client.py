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
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import ValidationError

from . import tracing
from .connection import NatsAuth, connect
from .protocol import (
    HEARTBEAT_MISSES,
    Answer,
    Chunk,
    Error,
    ErrorCode,
    Progress,
    ProtocolError,
    Query,
    decode_reply,
    encode,
    is_no_responders,
    stale_after_headers,
)
from .subjects import DEFAULT_PREFIX, Subjects


class MeshError(Exception):
    """The mesh answered with an Error, or nobody answered in time."""

    def __init__(self, code: str, message: str, query_id: str | None = None, error: Error | None = None, *, retries: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.query_id = query_id
        self.error = error
        self.retries = retries  # `overloaded` replies the call retried before giving up


Question = str | list[dict[str, str]]

FIRST_CONTACT_S = 5.0  # a send no node acknowledged (no Progress) this long went to a dead or paused node
OVERLOAD_BACKOFF_S = 0.1  # first wait before retrying `overloaded`; doubles per retry, with jitter
OVERLOAD_BACKOFF_MAX_S = 2.0
HARD_MARGIN_S = 1.0  # ask() returns at most this long after its timeout, whatever the connection does
DENIAL_POLL_S = 0.5  # how often a waiting client looks for a permission denial the server reported late


class MeshClient:
    """Sends queries to ``<prefix>.ingress`` over an open NATS connection."""

    def __init__(self, nc: NATS, prefix: str = DEFAULT_PREFIX, *, owns_connection: bool = False, retry_overloaded: bool = True) -> None:
        """``retry_overloaded=False`` raises `overloaded` at once (an HTTP gateway answers 429 and its client backs off)."""
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.target = self.subjects.ingress  # where queries go: the ingress, or one tier's subject (to_tier)
        self._owns_connection = owns_connection
        self.resends = 0  # queries sent again because their holder went silent (for tests and metrics)
        self.overload_retries = 0  # `overloaded` replies retried after a backoff, all calls together
        self.retry_overloaded = retry_overloaded

    @classmethod
    async def connect(
        cls,
        urls: str | list[str] | None = None,
        prefix: str = DEFAULT_PREFIX,
        *,
        auth: NatsAuth | None = None,
        retry_overloaded: bool = True,
        **options: Any,
    ) -> "MeshClient":
        """Connect to NATS (``$DISROUTER_NATS``, ``DISROUTER_NATS_*`` credentials by default).

        Raises MeshConnectionError (MeshAuthError for refused credentials or TLS); ``options`` go to nats-py.
        """
        nc = await connect(urls, name="disrouter-client", auth=auth, **options)
        return cls(nc, prefix, owns_connection=True, retry_overloaded=retry_overloaded)

    def to_tier(self, model_key: str) -> "MeshClient":
        """A client on the same connection that sends to one tier's subject (any of its replicas takes it)."""
        tier = MeshClient(self.nc, self.subjects.prefix, retry_overloaded=self.retry_overloaded)
        tier.target = self.subjects.model(model_key)
        return tier

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
        """Ask and wait for the Answer, within ``timeout`` seconds in all (re-sends and retries included).

        An attempt no node takes up (no reply, or no responders) is made again with the same id,
        up to ``retries`` times; each gets an equal share of ``timeout``, except that an attempt
        whose holder sends heartbeats runs to the end of ``timeout``. An ``overloaded`` Error
        (nothing was started) is retried after a jittered exponential backoff while time remains;
        ``MeshError.retries`` and ``client.overload_retries`` count those retries.
        The query asks for Progress heartbeats: when the node holding it goes silent for
        ``stall_timeout`` seconds (default: 3 of the node's heartbeat periods, 3 s at the node's
        default), the holder is taken for dead and the same query id is sent again at once, so a
        crashed node costs seconds, not the whole ``timeout``. One Answer is returned per call:
        later answers for the same id (from a stale attempt) are dropped.
        ``options`` are Query fields: scenario, max_tokens, temperature, top_p, max_hops
        (``progress=False`` turns heartbeats and stall detection off).
        """
        query_id = query_id or uuid.uuid4().hex

        async def exchange() -> Answer:
            async with aclosing(self._exchange(question, query_id, timeout, retries, False, stall_timeout, options)) as events:
                async for event in events:
                    if isinstance(event, Answer):
                        return event
            raise AssertionError("unreachable: an exchange ends with an Answer or raises")

        try:  # the exchange watches its own deadline; this bounds what it cannot (a stuck connection)
            return await asyncio.wait_for(exchange(), timeout + HARD_MARGIN_S)
        except asyncio.TimeoutError:
            raise MeshError("timeout", f"no answer within {timeout:g}s", query_id) from None

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
        """Send the query and yield what the caller sees: Chunks (when streaming), then one Answer."""
        query_id = query_id or uuid.uuid4().hex
        options = {"progress": True, **options}
        exchange = _Exchange(self, query_id, timeout, stream, bool(options["progress"]), stall_timeout)
        with tracing.span("ask", kind="client", query_id=query_id, subject=self.target):  # the mesh's root span
            subscription = await self.nc.subscribe(f"{exchange.inbox}.*")
            try:
                attempt = 0
                while True:
                    share = exchange.remaining() / (retries + 1 - attempt) if attempt <= retries else exchange.remaining()
                    await exchange.attempt(self._payload(question, query_id, exchange.remaining(), stream=stream, **options), share)
                    async for event in exchange.replies(subscription):
                        yield event
                    if exchange.answered:
                        return
                    exchange.attempt_over()
                    if exchange.overloaded is not None:
                        await exchange.back_off()  # raises when the backoff would outlast the deadline
                        continue
                    if attempt >= retries or exchange.remaining() <= 0:
                        raise exchange.gave_up(retries)
                    if exchange.unavailable:
                        await asyncio.sleep(min(0.5 * (attempt + 1), 2.0, exchange.remaining()))
                    attempt += 1
            finally:
                try:
                    await subscription.unsubscribe()
                except Exception:  # connection already closed
                    pass

    async def _send(self, payload: bytes, reply: str, timeout: float, *, flush: bool, stale_s: float | None = None) -> None:
        """Publish one send of the query; ``flush`` makes the server report a denial at once
        (the wait loop raises it as ``forbidden``); ``stale_s``: the send is sent again if no node took it by then (a node reading it late drops it)."""
        headers = tracing.headers() if stale_s is None else stale_after_headers(tracing.headers(), stale_s)
        await self.nc.publish(self.target, payload, reply=reply, headers=headers)
        if flush:
            try:
                await self.nc.flush(timeout=min(timeout, 5.0))
            except Exception:  # slow or reconnecting: the answer's own timeout decides
                pass

    def _payload(self, question: Question, query_id: str, timeout: float, *, stream: bool, **options: Any) -> bytes:
        messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
        query = Query(id=query_id, messages=messages, deadline=time.time() + timeout, stream=stream, **options)
        return encode(query)



class _Exchange:
    """One ask() or stream() call: the sends of its query and what came back, one method per event.

    Every send (first try, re-send after a silence, retry after a deadline) gets its own reply
    subject ``<inbox>.<n>`` under one subscription; only the current send's Progress, Chunks and
    Errors count, but an Answer from any send ends the exchange (unless Chunks of the current
    one went out). The states of one attempt::

        attempt() ──► WAITING ──reply(): Answer──────────────────────────► ANSWERED
                      │  ▲ ▲
                      │  │ └─reply(): Progress (arms the stall timer), Chunk (yielded)
                      │  └───silence(): no Progress since the send (FIRST_CONTACT_S) or since the
                      │      last one: the holder died or hangs: send again on a new subject,
                      │      as often as the deadline allows (after Chunks: `interrupted`)
                      ├──attempt's share passed ──► OVER: attempt_over() (`timeout` once Chunks went out)
                      ├──no responders ──────────►    ── retry left: attempt() again; none: gave_up()
                      └──`overloaded` ──► back_off() (jittered, doubling) then attempt() again
        (one deadline for the whole call; another Error raises at once, as does a denial)
    """

    def __init__(self, client: MeshClient, query_id: str, timeout: float, stream: bool, watch: bool, stall_timeout: float | None) -> None:
        self.client = client
        self.query_id = query_id
        self.timeout = timeout
        self.stream = stream
        self.watch = watch  # the query asked for Progress heartbeats: silence means a dead holder
        self.stall_timeout = stall_timeout
        self.inbox = client.nc.new_inbox()
        # a MeshNats connection (from connect()) learns of permission denials; a plain nats-py one cannot
        self._denial_for = getattr(client.nc, "denial_for", lambda subject: None)
        self.sends = 0
        self.chunks = 0
        self.answered = False
        self.unavailable = False
        self.last_error = "no attempt made"
        self.overloaded: Error | None = None  # the current attempt's `overloaded` reply, to retry after a backoff
        self.overload_retries = 0
        self._payload = b""
        self._current = ""
        self._end = time.monotonic() + timeout  # the whole call's deadline: nothing runs after it
        self._deadline = 0.0  # the current attempt's end (extended to _end once its holder heartbeats)
        self._heard = 0.0
        self._stall_after: float | None = None  # first-contact time, then heartbeat periods of the current send

    def remaining(self) -> float:
        return max(self._end - time.monotonic(), 0.0)

    async def attempt(self, payload: bytes, share: float) -> None:
        """Start an attempt of ``share`` seconds: the query sent on a new reply subject."""
        self._payload = payload
        self._heard = time.monotonic()
        self._deadline = min(self._heard + share, self._end)
        self.unavailable, self.overloaded = False, None
        await self._send(flush=self.sends == 0)

    async def back_off(self) -> None:
        """Wait a jittered, doubling time before retrying `overloaded`; raise it if the deadline comes first."""
        assert self.overloaded is not None
        wait = min(OVERLOAD_BACKOFF_S * 2**self.overload_retries, OVERLOAD_BACKOFF_MAX_S) * random.uniform(0.5, 1.5)
        if wait >= self.remaining() or not self.client.retry_overloaded:
            detail = self.overloaded.error
            raise MeshError(detail.code.value, detail.message, self.query_id, self.overloaded, retries=self.overload_retries)
        await asyncio.sleep(wait)
        self.overload_retries += 1
        self.client.overload_retries += 1

    async def _send(self, *, flush: bool) -> None:
        """Send on a new reply subject: a late reply to an earlier send (a paused node waking up) is ignored."""
        self._current = f"{self.inbox}.{self.sends}"
        self.sends += 1
        if self.watch:  # a live node sends Progress at once; none by then: send again
            self._stall_after = self.stall_timeout if self.stall_timeout is not None else FIRST_CONTACT_S
        # a node reading this send late (held up in a partition) drops it: one Answer per query
        await self.client._send(self._payload, self._current, max(self.remaining(), 0.05), flush=flush, stale_s=self._stall_after if self.watch else None)

    async def replies(self, subscription: Subscription) -> AsyncIterator[Chunk | Answer]:
        """What the current attempt yields to the caller, until an Answer, the deadline, or no responders."""
        while True:
            wait = self._next_wait()
            if wait is None:
                self.last_error = f"no answer within {self.timeout:g}s"
                return
            if self.overloaded is not None:
                return
            if denial := self._denial_for(self.client.target):  # reported asynchronously: look each round
                raise MeshError("forbidden", denial, self.query_id)
            if wait <= 0:
                await self.silence()
                continue
            try:
                msg = await subscription.next_msg(timeout=min(wait, DENIAL_POLL_S))
            except NatsTimeoutError:
                continue
            if is_no_responders(msg.data, msg.headers):
                if msg.subject == self._current:
                    self.last_error, self.unavailable = f"no node serves {self.client.target}", True
                    return
                continue
            if (event := self.reply(msg)) is not None:
                yield event
                if self.answered:
                    return

    def _next_wait(self) -> float | None:
        """Seconds to wait for a message: None once the attempt ended, <= 0 once the stall timer fired."""
        now = time.monotonic()
        remaining = min(self._deadline, self._end) - now
        if remaining <= 0:
            return None
        return remaining if self._stall_after is None else min(remaining, self._heard + self._stall_after - now)

    def reply(self, msg: Msg) -> Chunk | Answer | None:
        """A message on the inbox: an Answer or Chunk for the caller, or None; an Error raises."""
        reply = _read(msg.data, self.query_id)
        current = msg.subject == self._current
        if isinstance(reply, Answer) and (current or not self.chunks):
            self.answered = True  # any send's Answer will do, unless Chunks of the current one went out
            return reply
        if not current:
            return None  # a stale send's heartbeat, chunk or error: the current send decides
        self._heard = time.monotonic()
        if isinstance(reply, Progress):
            if self.watch:
                self._stall_after = self.stall_timeout if self.stall_timeout is not None else max(HEARTBEAT_MISSES * reply.every, 0.5)
                self._deadline = self._end  # a holder that heartbeats keeps the query until the call's deadline
            return None
        if isinstance(reply, Error):
            if reply.error.code == ErrorCode.OVERLOADED and not self.chunks:
                self.overloaded = reply  # nothing was started: safe to send again after a backoff
                return None
            raise MeshError(reply.error.code.value, reply.error.message, reply.id, reply, retries=self.overload_retries)
        if not self.stream:
            raise MeshError("bad_reply", "a streamed chunk arrived for a query that did not ask to stream", self.query_id)
        self.chunks += 1
        return reply

    async def silence(self) -> None:
        """The holder went silent for the stall time: it died (or its connection did). Send again."""
        if self.stream and self.chunks:
            s = "s" if self.chunks != 1 else ""
            raise MeshError(
                "interrupted", f"the node streaming the answer went silent after {self.chunks} chunk{s}; ask again for a whole new answer", self.query_id
            )
        self.client.resends += 1  # again and again until the deadline: each send may reach a live node
        await self._send(flush=False)
        self._heard = time.monotonic()

    def attempt_over(self) -> None:
        """The attempt ended without an Answer (deadline or no responders); a streamed one cannot be retried."""
        if self.stream and self.chunks:  # a new send would stream a second text after the first one's start
            raise MeshError("timeout", f"the streamed answer did not finish within {self.timeout:g}s", self.query_id)

    def gave_up(self, retries: int) -> MeshError:
        code = "unavailable" if self.last_error.startswith("no node") else "timeout"
        s = "s" if self.sends != 1 else ""
        return MeshError(code, f"{self.last_error} (after {self.sends} send{s})", self.query_id, retries=self.overload_retries)


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
