"""The node runtime: serve one model on the mesh, answer or hand queries to a stronger peer.

Subjects served: ``<prefix>.ingress`` (entry nodes, queue group), ``<prefix>.model.<key>`` (queue
group shared by replicas) and ``<prefix>.node.<id>``. A message on the ingress subject is a
client request (a Query), answered on its NATS reply subject. A message on a model or node subject
that carries ``reply_to`` is a HandOff: the node confirms it at once on the NATS reply subject,
then publishes the final Answer or Error to ``reply_to``. Either way the node works on a HandOff.

Who does what: the Policy decides (answer or reject) and answers; the Routing orders the targets;
this runtime carries the outcome out (send the answer, or hand the query to the first target
that confirms).

Progress heartbeats: while a node holds a query that asked for them (``progress: true``, which
``MeshClient`` sets), it publishes a Progress message to ``reply_to`` at once and then every
``heartbeat_s`` seconds, until it hands the query on (the receiver takes over) or sends the final
Answer/Error. A client that hears nothing for a few periods knows the holder died and re-sends.
Plain request/reply clients do not ask for them, so their first reply is the Answer or Error.

At most one final reply per query: a client that asked for heartbeats re-sends once its holder is
silent for HEARTBEAT_MISSES periods, so a node that may have gone silent that long (paused, its NATS
connection down) drops the query instead of answering it; so does a node whose connection to NATS
was re-established after it confirmed a hand-off (the +ACK may not have reached the sender, which
then answers itself), and a sender whose own connection dropped, or that was paused, while a target
stayed silent (the target may have taken it: its +ACK can sit unread when the timer fires). Either way the client's re-send gets the one answer. Queries without
heartbeats keep the old rule: the sender falls back to its next target or answers itself.

Backpressure: a node holds at most ``max_in_flight`` queries (deciding, generating or waiting for a
hand-off to be confirmed). Beyond that it refuses hand-offs (``-NAK``, so the sender tries its
next target), and passes a new client request to a live replica or a stronger tier (a Hop with
decision ``overflow``), or, when none takes it, replies an Error ``overloaded``: never a silent drop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass, field, replace

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from disrouter.mesh import tracing
from disrouter.mesh.connection import MeshPermissionError
from disrouter.mesh.membership import Membership, NodeCard, open_registry, registry_ttl, retry_while_unavailable
from disrouter.mesh.protocol import (
    HANDOFF_ACCEPTED,
    HANDOFF_REFUSED,
    HEARTBEAT_MISSES,
    Answer,
    Chunk,
    Error,
    ErrorCode,
    HandOff,
    Hop,
    Progress,
    ProtocolError,
    Query,
    decode_inbound,
    encode,
    is_stale,
    stale_after_headers,
    query_id_of,
    wire_format_of,
)
from disrouter.mesh.subjects import Subjects

from .backends import Backend, PromptTooLongError
from .http import ProbeServer
from .metrics import NodeMetrics, TimedBackend
from .policies import Decision, Policy
from .routing import Routing, Target
from .settings import NodeSettings

STALL_S = 3.0  # the event loop did not run this long: the process was paused (SIGSTOP, a frozen VM)
WAKE_WINDOW_S = 1.0  # after such a stall, messages read this soon were buffered during it: their senders moved on
REPLY_PREFIXES_ENV = "DISROUTER_REPLY_PREFIXES"  # comma-separated subject prefixes allowed as reply_to besides _INBOX.


def reply_prefixes() -> tuple[str, ...]:
    """Subjects a node answers on: ``_INBOX.`` and any prefixes in ``$DISROUTER_REPLY_PREFIXES``."""
    extra = [p.strip() for p in os.environ.get(REPLY_PREFIXES_ENV, "").split(",") if p.strip()]
    return ("_INBOX.", *extra)

log = structlog.get_logger("disrouter.node")

RECENT_ANSWERS = 20  # answers averaged into the card's recent_ms


class _ChunkStream:
    """Publishes an answer's text deltas to the client's reply subject as numbered Chunks."""

    def __init__(self, node: "Node", handoff: HandOff) -> None:
        self._node = node
        self._handoff = handoff
        self._seq = 0
        self._pending: list[asyncio.Task] = []

    def send(self, delta: str) -> None:
        chunk = Chunk(id=self._handoff.query.id, chunk=delta, seq=self._seq, node_id=self._node.card.node_id)
        self._seq += 1
        payload = encode(chunk, self._handoff.wire)
        self._pending.append(asyncio.ensure_future(self._node.nc.publish(self._handoff.reply_to, payload)))

    async def flush(self) -> None:
        """Wait until every chunk is handed to NATS, so the final Answer comes after them."""
        await asyncio.gather(*self._pending, return_exceptions=True)


@dataclass
class _Holding:
    """A query this node answers for, and what tells whether its client may have re-sent it."""

    handoff: HandOff
    confirmed: bool  # taken as a hand-off: the sender waited for this node's +ACK
    reconnects: int  # the NATS connection's reconnect count when the node took it
    beat_at: float = field(default_factory=time.monotonic)  # last Progress published while connected
    lapsed: str | None = None  # why the client may have re-sent it; once set, for good


@dataclass
class NodeStats:
    answered: int = 0
    forwarded: int = 0
    errors: int = 0
    overflowed: int = 0  # client requests that arrived while the node was full
    refused: int = 0  # hand-offs refused (-NAK) because the node was full
    dropped: int = 0  # final replies not sent: the client may have re-sent the query (see _lapsed)
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
        self._held: dict[int, _Holding] = {}  # queries this node is responsible for, by id(handoff)
        self._overflowing = 0  # client requests being passed on because the node is full
        self._heartbeats: asyncio.Task | None = None
        self._stall_watch: asyncio.Task | None = None
        self._tick = time.monotonic()  # last run of the stall watcher
        self._woke = float("-inf")  # when the process last woke from a stall
        self._draining = False
        self._registered = False
        self._log = log.bind(node_id=card.node_id, model=card.model_key)
        self.metrics = NodeMetrics(card.node_id, card.model_key)
        self.metrics.watch(lambda: len(self._held), self.settings.max_in_flight, lambda: len(self._live()), lambda: float(not self.unready()))
        if backend.engine_metrics:
            self.metrics.include_engine(backend.engine_metrics)
        self._timed = TimedBackend(backend, self.metrics)  # what the policy calls: generation timed and traced
        self._recent_ms: deque[float] = deque(maxlen=RECENT_ANSWERS)
        self.card.max_in_flight = self.settings.max_in_flight
        self.probes: ProbeServer | None = None  # the --http-port endpoints (the CLI starts them before loading)

    async def start(self) -> None:
        """Register in the mesh and start serving."""
        kv = await retry_while_unavailable(lambda: open_registry(self.nc, self.subjects, ttl=self.settings.registry_ttl_s))
        self.membership = Membership(kv, ttl=await registry_ttl(kv, self.settings.registry_ttl_s))
        await self.membership.start(self.card)
        self._registered = True
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
        self._stall_watch = asyncio.create_task(self._watch_stalls())
        if self.probes is None and self.settings.http_port is not None:
            self.probes = await ProbeServer().start(self.settings.http_host, self.settings.http_port)
        if self.probes is not None:
            self.probes.attach(self.unready, self.metrics.render)
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
        for task in (self._heartbeats, self._stall_watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.membership is not None:
            await self.membership.stop()
        await self.backend.close()
        if self.probes is not None:
            await self.probes.stop()
        self._log.info("node_stopped", answered=self.stats.answered, forwarded=self.stats.forwarded)

    def unready(self) -> list[str]:
        """Why the node is not ready for queries (``/readyz``); empty when it is."""
        reasons = ["draining"] if self._draining else []
        if not self._registered:
            reasons.append("not registered in the mesh")
        if not self.nc.is_connected:
            reasons.append("NATS not connected")
        return reasons

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

    def _hold(self, handoff: HandOff, confirmed: bool) -> None:
        self._held[id(handoff)] = _Holding(handoff, confirmed, self._reconnects())
        self.card.load = len(self._held)

    def _reconnects(self) -> int:
        return self.nc.stats["reconnects"]

    def _lapsed(self, handoff: HandOff, *, final: bool = False) -> str | None:
        """Why the client may have re-sent this query (a final reply now could be its second); None if it cannot have.
        ``final``: also while disconnected (a final reply published now would reach the client after the reconnect)."""
        holding = self._held.get(id(handoff))
        if holding is None or not handoff.query.progress:
            return None  # without heartbeats the client never re-sends on silence
        if holding.lapsed is None:
            if holding.confirmed and self._reconnects() != holding.reconnects:
                holding.lapsed = "reconnected_after_ack"
            elif time.monotonic() - holding.beat_at > (HEARTBEAT_MISSES - 0.25) * self.settings.heartbeat_s:
                holding.lapsed = "silent_too_long"  # paused, or the loop starved: the client's stall timer ran out
        if final and holding.lapsed is None and not self.nc.is_connected:
            return "disconnected"
        return holding.lapsed

    def _release(self, handoff: HandOff) -> None:
        """This node no longer answers for the query (answered, failed, or handed on): stop its heartbeats."""
        if self._held.pop(id(handoff), None) is not None:
            self.card.load = len(self._held)

    async def _progress(self, handoff: HandOff) -> None:
        # no beat for a lapsed query (its client waits on a re-send), none buffered while reconnecting (it would come late)
        if not handoff.query.progress or self._lapsed(handoff) or not self.nc.is_connected:
            return
        beat = Progress(id=handoff.query.id, node_id=self.card.node_id, hops=len(handoff.path), every=self.settings.heartbeat_s)
        try:
            await self.nc.publish(handoff.reply_to, encode(beat, handoff.wire))
        except Exception as exc:  # the connection dropped: the next beat may get through
            self._log.debug("progress_failed", error=str(exc))
            return
        if (holding := self._held.get(id(handoff))) is not None:
            holding.beat_at = time.monotonic()

    async def _heartbeat_loop(self) -> None:
        """One timer for all held queries: a Progress to each that asked for them, every heartbeat_s."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            for holding in list(self._held.values()):
                if id(holding.handoff) in self._held:
                    await self._progress(holding.handoff)

    async def _watch_stalls(self) -> None:
        """Note when the process wakes from a pause: the loop ran nothing for STALL_S seconds."""
        while True:
            self._tick = time.monotonic()
            await asyncio.sleep(0.25)
            if time.monotonic() - self._tick > STALL_S:
                self._woke = time.monotonic()
                self._log.warning("woke_from_stall", stalled_s=round(self._woke - self._tick, 1))

    def _waking(self) -> bool:
        """True right after a pause (or during one the watcher has not seen yet): what arrives now is stale."""
        now = time.monotonic()
        return now - self._tick > STALL_S or now - self._woke < WAKE_WINDOW_S

    # --- intake: one message in, a HandOff to route (or a refusal, or an Error) ----------------

    async def _handle(self, msg: Msg, from_client: bool) -> None:
        """One span per hop: the child of the trace context the message carried (when tracing is on)."""
        with tracing.span("hop", carrier=msg.headers or {}, kind="server", node=self.card.node_id, model=self.card.model_key):
            await self._take(msg, from_client)

    async def _take(self, msg: Msg, from_client: bool) -> None:
        """The one place a message is taken on; any failure while routing it becomes an `internal` Error."""
        structlog.contextvars.bind_contextvars(node_id=self.card.node_id)
        try:
            arrived = decode_inbound(msg.data, from_client=from_client)
        except ProtocolError as exc:
            await self._reject_malformed(msg, exc)
            return
        handoff = await self._envelope(arrived, msg)
        if handoff is None:
            return
        structlog.contextvars.bind_contextvars(query_id=handoff.query.id)
        confirm = isinstance(arrived, HandOff) and bool(msg.reply)  # the sender waits for +ACK or -NAK
        stale = "stale_after_stall" if self._waking() else "stale_on_arrival" if is_stale(msg.headers) else None
        if stale:  # its sender moved on while this node was paused or the message was held up (a partition):
            self._log.info(stale, query_id=handoff.query.id)  # a hand-off's tries its next target, a client re-sent
            if confirm:
                await self._refuse(msg, full=False)
            return
        full = len(self._held) >= self.settings.max_in_flight
        if confirm and (full or self._draining):  # the sender tries its next target
            await self._refuse(msg, full=full and not self._draining)
            return
        if full:
            await self._overflow(handoff)
            return
        self._hold(handoff, confirm)  # no await since the check above: the bound is exact
        try:
            if confirm:
                await self._respond(msg, HANDOFF_ACCEPTED)
            await self._progress(handoff)
            await self._route(handoff)
        except Exception as exc:  # a node never dies of one query
            self._log.exception("query_failed", query_id=handoff.query.id)
            await self._fail(handoff, ErrorCode.INTERNAL, f"node {self.card.node_id} failed: {exc}")
        finally:
            self._release(handoff)

    async def _envelope(self, arrived: Query | HandOff, msg: Msg) -> HandOff | None:
        """The HandOff to work on: as received, or a client's Query wrapped with its reply subject and format.

        None when there is nowhere honest to answer: no reply subject, or one that is not an inbox
        (a forged ``reply_to`` naming a mesh subject would make this node publish there)."""
        if isinstance(arrived, HandOff):
            handoff = arrived
        elif not msg.reply:
            self._log.warning("query_without_reply_subject", query_id=arrived.id)
            return None
        else:
            handoff = HandOff(query=arrived, reply_to=msg.reply, wire=wire_format_of(msg.data))
        if not handoff.reply_to.startswith(reply_prefixes()):
            self.stats.errors += 1
            self.metrics.on_error(ErrorCode.INVALID_QUERY.value)
            self._log.warning("reply_to_refused", query_id=handoff.query.id, reply_to=handoff.reply_to[:128])
            if isinstance(arrived, HandOff) and msg.reply and msg.reply.startswith(reply_prefixes()):
                refusal = Error.of(ErrorCode.INVALID_QUERY, "reply_to must be an inbox subject", arrived.query.id)
                await self._respond(msg, encode(refusal, handoff.wire))
            return None
        return handoff.model_copy(update={"query": handoff.query.with_deadline(self.settings.default_timeout_s)})

    async def _refuse(self, msg: Msg, *, full: bool) -> None:
        """-NAK a hand-off: the sender tries its next target (counted when the node is full, not draining)."""
        if full:
            self.stats.refused += 1
            self.metrics.on_refused()
            self._log.info("handoff_refused_full", held=len(self._held))
        await self._respond(msg, HANDOFF_REFUSED)

    async def _overflow(self, handoff: HandOff) -> None:
        """A client request arrived while the node is full: a replica or stronger tier takes it, or `overloaded`."""
        self.stats.overflowed += 1
        if self._overflowing >= self.settings.max_overflow:  # passing queries on is bounded too
            await self._send(handoff, self._overloaded(handoff))
            return
        self._overflowing += 1
        try:
            started = time.perf_counter()
            targets = self.routing.overflow_targets(handoff, self.card, self._live())
            if await self._hand_off(handoff, self._hop(started), targets) == "declined":
                await self._send(handoff, self._overloaded(handoff))
        finally:
            self._overflowing -= 1

    def _overloaded(self, handoff: HandOff) -> Error:
        return Error.of(
            ErrorCode.OVERLOADED,
            f"node {self.card.node_id} holds its limit of {self.settings.max_in_flight} queries and no replica or stronger peer took the query",
            handoff.query.id,
            handoff.path,
        )

    async def _reject_malformed(self, msg: Msg, exc: ProtocolError) -> None:
        self.stats.errors += 1
        self.metrics.on_error(exc.code.value)
        self.card.errors += 1
        self._log.info("bad_request", code=exc.code.value, reason=exc.message)
        if msg.reply:
            error = Error.of(exc.code, exc.message, query_id_of(msg.data))
            await self._respond(msg, encode(error, wire_format_of(msg.data)))

    # --- routing: the policy decides, the routing orders targets, the node carries it out -------

    def _live(self) -> list[NodeCard]:
        return self.membership.live() if self.membership else []

    async def _route(self, handoff: HandOff) -> None:
        started = time.perf_counter()
        if handoff.query.expired():
            await self._fail(handoff, ErrorCode.DEADLINE_EXCEEDED, "the query's deadline passed before it was answered")
            return
        live = self._live()
        stream = _ChunkStream(self, handoff) if handoff.query.stream else None
        try:
            decision = await self._decide(handoff, live, stream, started)
            if decision.reject:
                targets = self.routing.targets(handoff, self.card, live, skip=decision.skip)
                if await self._hand_off(handoff, self._hop(started, decision), targets) != "declined":
                    return
                self._log.warning("no_peer_took_query", tried=[t.model_key for t in targets])
                decision = await self.policy.answer(self._timed, handoff.query, stream and stream.send, rejected=decision)
        except PromptTooLongError as exc:
            await self._fail(handoff, ErrorCode.TOO_LARGE, str(exc))
            return
        await self._deliver(handoff, decision, stream, started)

    async def _decide(self, handoff: HandOff, live: list[NodeCard], stream: _ChunkStream | None, started: float) -> Decision:
        """The policy's decision, timed; with no peer left to take the query, its answer for certain."""
        sink = stream.send if stream else None
        if not self.routing.targets(handoff, self.card, live):
            return await self.policy.answer(self._timed, handoff.query, sink)
        with tracing.span("decide", policy=self.policy.name):
            decision = await self.policy.decide(self._timed, handoff.query, sink)
            tracing.annotate(decision=decision.name, reject_prob=decision.reject_prob)
        return replace(decision, decide_ms=(time.perf_counter() - started) * 1000.0)

    async def _deliver(self, handoff: HandOff, decision: Decision, stream: _ChunkStream | None, started: float) -> None:
        """Send the answer (after any streamed Chunks), or `deadline_exceeded` when it came too late."""
        if stream is not None:
            await stream.flush()
        generation = decision.generation
        if generation.finish_reason == "deadline" or handoff.query.expired():
            await self._fail(handoff, ErrorCode.DEADLINE_EXCEEDED, "the query's deadline passed during generation")
            return
        hop = self._hop(started, decision)
        path = [*handoff.path, hop]
        answer = Answer(
            id=handoff.query.id,
            text=generation.text,
            model=self.card.model_key,
            node_id=self.card.node_id,
            path=path,
            prompt_tokens=sum(h.prompt_tokens for h in path),
            completion_tokens=sum(h.completion_tokens for h in path),
        )
        self.stats.answered += 1
        self.stats.by_decision[decision.name] = self.stats.by_decision.get(decision.name, 0) + 1
        self._finished(hop)
        self._recent_ms.append(hop.ms)
        self.card.recent_ms = round(sum(self._recent_ms) / len(self._recent_ms), 1)
        self._log.info("answered", decision=decision.name, hops=len(path), ms=round(hop.ms, 1))
        await self._send(handoff, answer)

    def _finished(self, hop: Hop) -> None:
        """This node's last step for a query (answered, or handed on): counted in the metrics and on its card."""
        self.metrics.on_hop(hop)
        self.card.decisions[hop.decision] = self.card.decisions.get(hop.decision, 0) + 1

    def _hop(self, started: float, decision: Decision | None = None) -> Hop:
        """This node's step on the path: its decision, or ``overflow`` (passed on without deciding)."""
        me = {"node_id": self.card.node_id, "model": self.card.model_key, "ms": (time.perf_counter() - started) * 1000.0}
        if decision is None:
            return Hop(**me, decision="overflow")
        generation = decision.generation
        return Hop(
            **me,
            decision=decision.name,
            reject_prob=decision.reject_prob,
            decide_ms=decision.decide_ms,
            prompt_tokens=(generation.prompt_tokens if generation else 0) + decision.prompt_tokens,
            completion_tokens=generation.completion_tokens if generation else 0,
        )

    # --- carrying it out: hand-off, final message ----------------------------------------------

    async def _hand_off(self, handoff: HandOff, hop: Hop, targets: list[Target]) -> str:
        """Give the query to the first target that confirms it: ``accepted``, ``declined`` (none did) or
        ``uncertain`` (a target stayed silent while this node's connection dropped or it was paused: it may hold the query)."""
        payload = encode(handoff.then(hop))
        for target in targets:
            if handoff.query.expired():
                return "declined"
            reconnects = self._reconnects()
            with tracing.span("hand-off", kind="client", target=target.model_key, decision=hop.decision):
                outcome = await self._offer(handoff, target, payload)
                tracing.annotate(outcome=outcome)
            self.metrics.on_handoff(target.model_key, outcome)
            if outcome == "accepted":
                self._release(handoff)  # the receiver holds it now and sends the heartbeats
                self.stats.forwarded += 1
                self._finished(hop)
                self._log.info("forwarded", target=target.model_key, ms=round(hop.ms, 1))
                return "accepted"
            if outcome == "silent" and handoff.query.progress and (reason := self._ack_may_be_lost(handoff, reconnects)):
                self._release(handoff)  # the client re-sends if nobody took it
                self._dropped(reason, target=target.model_key)
                return "uncertain"
        return "declined"

    def _ack_may_be_lost(self, handoff: HandOff, reconnects: int) -> str | None:
        """Why a silent target's +ACK may have come and gone unread (the connection dropped, or this node was
        paused: the timer fires before the buffered reply is read); None when the silence is the target's."""
        if lapsed := self._lapsed(handoff):
            return lapsed
        if not self.nc.is_connected or self._reconnects() != reconnects:
            return "reconnected_during_offer"
        return "paused_during_offer" if self._waking() else None

    async def _offer(self, handoff: HandOff, target: Target, payload: bytes) -> str:
        """Ask one target to take the query: ``accepted``, ``refused``, ``absent``, ``silent`` or ``denied``."""
        timeout = min(self.settings.handoff_timeout_s, max(handoff.query.deadline - time.time(), 0.05))
        try:
            reply = await self.nc.request(target.subject, payload, timeout=timeout, headers=stale_after_headers(tracing.headers(), timeout))
        except NoRespondersError:
            self._log.info("peer_absent", target=target.model_key)
            return "absent"
        except NatsTimeoutError:
            self._log.warning("peer_silent", target=target.model_key)
            return "silent"
        except MeshPermissionError as exc:  # this node's NATS user may not publish there
            self._log.warning("peer_denied", target=target.model_key, error=str(exc))
            return "denied"
        if reply.data == HANDOFF_ACCEPTED:
            return "accepted"
        self._log.info("peer_refused", target=target.model_key)
        return "refused"

    async def _fail(self, handoff: HandOff, code: ErrorCode, message: str) -> None:
        await self._send(handoff, Error.of(code, message, handoff.query.id, handoff.path))

    async def _send(self, handoff: HandOff, message: Answer | Error) -> None:
        lapsed = self._lapsed(handoff, final=True)
        self._release(handoff)  # no heartbeat after the final message
        if lapsed:  # the client has re-sent it, or will: its re-send gets the one answer
            self._dropped(lapsed)
            return
        if isinstance(message, Error):
            self.stats.errors += 1
            self.metrics.on_error(message.error.code.value)
            self.card.errors += 1
            self._log.info("error_reply", code=message.error.code.value, reason=message.error.message)
        try:
            await self.nc.publish(handoff.reply_to, encode(message, handoff.wire))
        except Exception as exc:
            self._log.warning("reply_failed", error=str(exc))

    def _dropped(self, reason: str, **where: str) -> None:
        """This node will send no final reply to a query it held: counted, logged (see _lapsed)."""
        self.stats.dropped += 1
        self.metrics.on_dropped(reason)
        self._log.warning("reply_dropped", reason=reason, **where)

    async def _respond(self, msg: Msg, payload: bytes) -> None:
        try:
            await msg.respond(payload)
        except Exception as exc:
            self._log.warning("respond_failed", error=str(exc))
