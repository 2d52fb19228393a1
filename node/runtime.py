"""The node runtime: serve one model on the mesh, answer or hand queries to a stronger peer.

Subjects served: ``<prefix>.ingress`` (entry nodes, queue group), ``<prefix>.model.<key>`` (queue
group shared by replicas) and ``<prefix>.node.<id>``. A message on the ingress subject is a
client request, answered on its NATS reply subject; routing fields in it are ignored. A message on
a model or node subject that carries ``reply_to`` is a hand-off: the node confirms it at once on
the NATS reply subject, then publishes the final Answer or Error to ``reply_to``.

Progress heartbeats: while a node holds a query that asked for them (``progress: true``, which
``MeshClient`` sets), it publishes a Progress message to ``reply_to`` at once and then every
``heartbeat_s`` seconds, until it hands the query on (the receiver takes over) or sends the final
Answer/Error. A client that hears nothing for a few periods knows the holder died and re-sends.
Plain request/reply clients do not ask for them, so their first reply is the Answer or Error.

Backpressure: a node holds at most ``max_in_flight`` queries (deciding, generating or waiting for a
hand-off to be confirmed). Beyond that it refuses hand-offs (``-NAK``, so the sender tries its
next target), and passes a new client request to a live replica or a stronger tier (a Hop with
decision ``overflow``), or, when none takes it, replies an Error ``overloaded``: never a silent drop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from disrouter.mesh.connection import MeshPermissionError
from disrouter.mesh.membership import Membership, NodeCard, open_registry, registry_ttl
from disrouter.mesh.protocol import (
    Answer,
    Chunk,
    Error,
    ErrorCode,
    Hop,
    Progress,
    ProtocolError,
    Query,
    decode_query,
    encode,
    query_id_of,
    wire_format_of,
)
from disrouter.mesh.subjects import Subjects

from .backends import Backend, Generation, PromptTooLongError
from .policies import Policy, answer_forced
from .routing import Routing, Target
from .settings import NodeSettings

log = structlog.get_logger("disrouter.node")

HANDOFF_ACCEPTED = b"+ACK"
HANDOFF_REFUSED = b"-NAK"


@dataclass
class _Outcome:
    generation: Generation
    decision: str
    reject_prob: float | None = None
    decide_ms: float | None = None


class _ChunkStream:
    """Publishes an answer's text deltas to the client's reply subject as numbered Chunks."""

    def __init__(self, node: "Node", query: Query) -> None:
        self._node = node
        self._query = query
        self._seq = 0
        self._pending: list[asyncio.Task] = []

    def send(self, delta: str) -> None:
        chunk = Chunk(id=self._query.id, chunk=delta, seq=self._seq, node_id=self._node.card.node_id)
        self._seq += 1
        payload = encode(chunk, self._query.wire)
        self._pending.append(asyncio.ensure_future(self._node.nc.publish(self._query.reply_to, payload)))

    async def flush(self) -> None:
        """Wait until every chunk is handed to NATS, so the final Answer comes after them."""
        await asyncio.gather(*self._pending, return_exceptions=True)


@dataclass
class NodeStats:
    answered: int = 0
    forwarded: int = 0
    errors: int = 0
    overflowed: int = 0  # client requests that arrived while the node was full
    refused: int = 0  # hand-offs refused (-NAK) because the node was full
    by_decision: dict[str, int] = field(default_factory=dict)


class Node:
    """One model on the mesh. ``await start()``, then ``await stop()`` drains it."""

    def __init__(
        self,
        nc: NATS,
        card: NodeCard,
        backend: Backend,
        policy: Policy,
        routing: Routing,
        subjects: Subjects,
        settings: NodeSettings | None = None,
    ) -> None:
        self.nc = nc
        self.card = card
        self.backend = backend
        self.policy = policy
        self.routing = routing
        self.subjects = subjects
        self.settings = settings or NodeSettings()
        self.stats = NodeStats()
        self.membership: Membership | None = None
        self._subscriptions: list = []
        self._inflight: set[asyncio.Task] = set()
        self._held: dict[int, Query] = {}  # queries this node is responsible for, by id(query)
        self._overflowing = 0  # client requests being passed on because the node is full
        self._heartbeats: asyncio.Task | None = None
        self._draining = False
        self._log = log.bind(node_id=card.node_id, model=card.model_key)

    async def start(self) -> None:
        """Register in the mesh and start serving."""
        kv = await open_registry(self.nc, self.subjects, ttl=self.settings.registry_ttl_s)
        self.membership = Membership(kv, ttl=await registry_ttl(kv, self.settings.registry_ttl_s))
        await self.membership.start(self.card)
        model_subject = self.subjects.model(self.card.model_key)
        self._subscriptions.append(
            await self.nc.subscribe(model_subject, queue=self.subjects.model_queue, cb=self._on_internal)
        )
        self._subscriptions.append(await self.nc.subscribe(self.subjects.node(self.card.node_id), cb=self._on_internal))
        if self.card.entry:
            self._subscriptions.append(
                await self.nc.subscribe(self.subjects.ingress, queue=self.subjects.ingress_queue, cb=self._on_ingress)
            )
        await self.nc.flush()
        self._heartbeats = asyncio.create_task(self._heartbeat_loop())
        self._log.info("node_started", subjects=[s.subject for s in self._subscriptions], cost=self.card.cost)

    async def stop(self) -> None:
        """Drain: leave the registry, stop taking queries, finish those in flight, disconnect."""
        self._draining = True
        if self.membership is not None:
            await self.membership.leave()
        for sub in self._subscriptions:
            try:
                await sub.drain()
            except Exception:  # connection already gone
                pass
        if self._inflight:
            self._log.info("draining", inflight=len(self._inflight))
            await asyncio.wait(set(self._inflight), timeout=self.settings.drain_timeout_s)
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            await asyncio.gather(self._heartbeats, return_exceptions=True)
        if self.membership is not None:
            await self.membership.stop()
        await self.backend.close()
        self._log.info("node_stopped", answered=self.stats.answered, forwarded=self.stats.forwarded)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def held(self) -> int:
        """Queries this node holds now (bounded by ``max_in_flight``)."""
        return len(self._held)

    # --- message intake -------------------------------------------------------------------

    async def _on_ingress(self, msg: Msg) -> None:
        self._spawn(self._handle(msg, from_client=True))

    async def _on_internal(self, msg: Msg) -> None:
        self._spawn(self._handle(msg, from_client=False))

    def _spawn(self, coro) -> None:  # noqa: ANN001
        task = asyncio.create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)

    # --- holding queries: the in-flight bound and progress heartbeats -------------------------

    def _hold(self, query: Query) -> None:
        self._held[id(query)] = query
        self.card.load = len(self._held)

    def _release(self, query: Query) -> None:
        """This node no longer answers for the query (answered, failed, or handed on): stop its heartbeats."""
        if self._held.pop(id(query), None) is not None:
            self.card.load = len(self._held)

    async def _progress(self, query: Query) -> None:
        if not query.progress or query.reply_to is None:
            return
        beat = Progress(id=query.id, node_id=self.card.node_id, hops=len(query.path), every=self.settings.heartbeat_s)
        try:
            await self.nc.publish(query.reply_to, encode(beat, query.wire))
        except Exception as exc:  # reconnecting: the next beat may get through
            self._log.debug("progress_failed", error=str(exc))

    async def _heartbeat_loop(self) -> None:
        """One timer for all held queries: a Progress to each that asked for them, every heartbeat_s."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            for query in list(self._held.values()):
                if id(query) in self._held:
                    await self._progress(query)

    async def _handle(self, msg: Msg, from_client: bool) -> None:
        structlog.contextvars.bind_contextvars(node_id=self.card.node_id)
        try:
            query = decode_query(msg.data, from_client=from_client)
        except ProtocolError as exc:
            await self._reject_malformed(msg, exc)
            return
        structlog.contextvars.bind_contextvars(query_id=query.id)
        handoff = query.reply_to is not None and bool(msg.reply)  # confirm it (+ACK) or refuse it (-NAK)
        if query.reply_to is None:  # a client request (ingress, or straight to a tier)
            if not msg.reply:
                self._log.warning("query_without_reply_subject", query_id=query.id)
                return
            query.reply_to = msg.reply
            if not from_client:
                query.wire = wire_format_of(msg.data)
        if handoff and self._draining:
            await self._respond(msg, HANDOFF_REFUSED)
            return
        full = len(self._held) >= self.settings.max_in_flight
        if full and handoff:  # the sender tries its next target
            self.stats.refused += 1
            self._log.info("handoff_refused_full", held=len(self._held))
            await self._respond(msg, HANDOFF_REFUSED)
            return
        if query.deadline is None:
            query.deadline = time.time() + self.settings.default_timeout_s
        if full:
            await self._overflow(query)
            return
        self._hold(query)  # no await since the check above: the bound is exact
        try:
            if handoff:
                await self._respond(msg, HANDOFF_ACCEPTED)
            await self._progress(query)
            await self._route(query)
        except Exception as exc:  # a node never dies of one query
            self._log.exception("query_failed", query_id=query.id)
            await self._send(query, Error.of(ErrorCode.INTERNAL, f"node {self.card.node_id} failed: {exc}", query.id, query.path))
        finally:
            self._release(query)

    async def _overflow(self, query: Query) -> None:
        """A client request arrived while the node is full: a replica or stronger tier takes it, or `overloaded`."""
        self.stats.overflowed += 1
        if self._overflowing >= self.settings.max_overflow:  # passing queries on is bounded too
            await self._send(query, self._overloaded(query))
            return
        self._overflowing += 1
        try:
            started = time.perf_counter()
            targets = [] if len(query.path) + 1 >= query.max_hops else self._overflow_targets(query)
            hop = self._hop("overflow", None, started, None)
            if targets and await self._hand_off(query, hop, targets):
                return
            await self._send(query, self._overloaded(query))
        finally:
            self._overflowing -= 1

    def _overflow_targets(self, query: Query) -> list[Target]:
        """Other live replicas of this model (least loaded first), then the stronger tiers."""
        live = self.membership.live() if self.membership else []
        replicas = sorted(
            (c for c in live if c.model_key == self.card.model_key and c.node_id != self.card.node_id), key=lambda c: c.load
        )
        return [Target(c.model_key, self.subjects.node(c.node_id)) for c in replicas] + self.routing.targets(query, self.card, live)

    def _overloaded(self, query: Query) -> Error:
        return Error.of(
            ErrorCode.OVERLOADED,
            f"node {self.card.node_id} holds its limit of {self.settings.max_in_flight} queries and no replica or stronger peer took the query",
            query.id,
            query.path,
        )

    async def _reject_malformed(self, msg: Msg, exc: ProtocolError) -> None:
        self.stats.errors += 1
        self._log.info("bad_request", code=exc.code.value, reason=exc.message)
        if msg.reply:
            error = Error.of(exc.code, exc.message, query_id_of(msg.data))
            await self._respond(msg, encode(error, wire_format_of(msg.data)))

    # --- routing ----------------------------------------------------------------------------

    async def _route(self, query: Query) -> None:
        started = time.perf_counter()
        if query.expired():
            await self._send(query, Error.of(ErrorCode.DEADLINE_EXCEEDED, "the query's deadline passed before it was answered", query.id, query.path))
            return
        live = self.membership.live() if self.membership else []
        targets = [] if len(query.path) + 1 >= query.max_hops else self.routing.targets(query, self.card, live)
        stream = _ChunkStream(self, query) if query.stream else None
        sink = stream.send if stream else None
        try:
            if not targets:
                decision_name = "answer" if self.policy.never_rejects else "forced"
                outcome = _Outcome(await answer_forced(self.backend, query, sink), decision_name)
            else:
                decision = await self.policy.decide(self.backend, query, sink)
                decide_ms = (time.perf_counter() - started) * 1000.0
                if decision.reject:
                    hop = self._hop("reject", decision.generation, started, decision.reject_prob, decide_ms, decision.prompt_tokens)
                    if await self._hand_off(query, hop, targets[::-1] if decision.skip else targets):
                        return
                    self._log.warning("no_peer_took_query", tried=[t.model_key for t in targets])
                    outcome = _Outcome(await answer_forced(self.backend, query, sink), "forced", decision.reject_prob, decide_ms)
                else:
                    outcome = _Outcome(decision.generation, "answer", decision.reject_prob, decide_ms)
        except PromptTooLongError as exc:
            await self._send(query, Error.of(ErrorCode.TOO_LARGE, str(exc), query.id, query.path))
            return
        if stream is not None:
            await stream.flush()
        if outcome.generation.finish_reason == "deadline" or query.expired():
            await self._send(query, Error.of(ErrorCode.DEADLINE_EXCEEDED, "the query's deadline passed during generation", query.id, query.path))
            return
        hop = self._hop(outcome.decision, outcome.generation, started, outcome.reject_prob, outcome.decide_ms)
        path = [*query.path, hop]
        answer = Answer(
            id=query.id,
            text=outcome.generation.text,
            model=self.card.model_key,
            node_id=self.card.node_id,
            path=path,
            prompt_tokens=sum(h.prompt_tokens for h in path),
            completion_tokens=sum(h.completion_tokens for h in path),
        )
        self.stats.answered += 1
        self.stats.by_decision[outcome.decision] = self.stats.by_decision.get(outcome.decision, 0) + 1
        self._log.info("answered", decision=outcome.decision, hops=len(path), ms=round(hop.ms, 1))
        await self._send(query, answer)

    def _hop(
        self,
        decision: str,
        generation: Generation | None,
        started: float,
        reject_prob: float | None,
        decide_ms: float | None = None,
        prompt_tokens: int = 0,
    ) -> Hop:
        return Hop(
            node_id=self.card.node_id,
            model=self.card.model_key,
            decision=decision,
            reject_prob=reject_prob,
            ms=(time.perf_counter() - started) * 1000.0,
            decide_ms=decide_ms,
            prompt_tokens=generation.prompt_tokens if generation else prompt_tokens,
            completion_tokens=generation.completion_tokens if generation else 0,
        )

    async def _hand_off(self, query: Query, hop: Hop, targets) -> bool:  # noqa: ANN001
        """Give the query to the first target that confirms it; False if none did."""
        forwarded = query.model_copy(update={"path": [*query.path, hop]})
        payload = encode(forwarded)
        for target in targets:
            if query.expired():
                return False
            timeout = min(self.settings.handoff_timeout_s, max(query.deadline - time.time(), 0.05))
            try:
                reply = await self.nc.request(target.subject, payload, timeout=timeout)
            except NoRespondersError:
                self._log.info("peer_absent", target=target.model_key)
                continue
            except NatsTimeoutError:
                self._log.warning("peer_silent", target=target.model_key)
                continue
            except MeshPermissionError as exc:  # this node's NATS user may not publish there
                self._log.warning("peer_denied", target=target.model_key, error=str(exc))
                continue
            if reply.data == HANDOFF_ACCEPTED:
                self._release(query)  # the receiver holds it now and sends the heartbeats
                self.stats.forwarded += 1
                self._log.info("forwarded", target=target.model_key, ms=round(hop.ms, 1))
                return True
            self._log.info("peer_refused", target=target.model_key)
        return False

    async def _send(self, query: Query, message: Answer | Error) -> None:
        self._release(query)  # no heartbeat after the final message
        if isinstance(message, Error):
            self.stats.errors += 1
            self._log.info("error_reply", code=message.error.code.value, reason=message.error.message)
        try:
            await self.nc.publish(query.reply_to, encode(message, query.wire))
        except Exception as exc:
            self._log.warning("reply_failed", error=str(exc))

    async def _respond(self, msg: Msg, payload: bytes) -> None:
        try:
            await msg.respond(payload)
        except Exception as exc:
            self._log.warning("respond_failed", error=str(exc))
