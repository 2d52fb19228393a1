"""Live membership: one NodeCard per node in a JetStream key-value bucket with a TTL.

A node heartbeats its card well inside the TTL and deletes it on clean shutdown; a crashed node's
card expires. Every node watches the bucket and keeps a PeerTable of live members.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.js import api as js_api
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import BaseModel, Field, ValidationError

from .nats_internals import kv_origin
from .subjects import Subjects

log = structlog.get_logger("disrouter.mesh.membership")

DEFAULT_REGISTRY_TTL_S = 10.0
HEARTBEAT_RETRY_S = 0.5  # after a failed heartbeat, the next try comes this soon (not a whole interval later)
START_RETRY_S = 30.0  # how long joining retries while JetStream is unavailable (e.g. a cluster electing leaders)


class NodeCard(BaseModel):
    """What a node tells the mesh about itself."""

    node_id: str
    model_key: str
    model: str
    cost: float
    position: int | None = None  # index in the topology file, when the node is in it
    entry: bool = False
    policy: str = "generate"
    answer_model: str | None = None  # the weights that write answers, when not the deciding model (probe policy)
    backend: str = "transformers"
    context_length: int = 2048
    capabilities: list[str] = Field(default_factory=list)
    version: str = ""
    load: int = 0  # queries in flight
    # Live stats (cards from older nodes lack them and read as the defaults):
    max_in_flight: int | None = None  # the node's in-flight limit
    decisions: dict[str, int] = Field(default_factory=dict)  # queries finished here, by decision (answer, reject, forced, overflow)
    errors: int = 0  # Error replies sent
    recent_ms: float | None = None  # mean time to answer over the node's last answers
    started_at: float = Field(default_factory=time.time)
    heartbeat_at: float = Field(default_factory=time.time)


async def retry_while_unavailable(step: Callable[[], Any]) -> Any:
    """``step()``, retried for up to START_RETRY_S while JetStream times out or has no leader yet."""
    deadline = time.monotonic() + START_RETRY_S
    while True:
        try:
            return await step()
        except (NatsTimeoutError, ServiceUnavailableError, NoStreamResponseError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("registry_unavailable_retrying", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(0.5)


async def open_registry(nc: NATS, subjects: Subjects, ttl: float = DEFAULT_REGISTRY_TTL_S) -> KeyValue:
    """Open the mesh's registry bucket, creating it with the given TTL if it does not exist."""
    js = nc.jetstream()
    try:
        return await js.key_value(subjects.registry_bucket)
    except (BucketNotFoundError, NotFoundError):
        pass
    return await _create_registry(nc, subjects.registry_bucket, ttl)


async def _create_registry(nc: NATS, bucket: str, ttl: float) -> KeyValue:
    """Create the bucket (idempotent for the same settings). In a NATS cluster it is replicated on
    3 servers, so losing one server loses no registry; a lone server (which refuses 3) keeps 1."""
    js = nc.jetstream()
    for replicas in (3, 1):
        config = js_api.KeyValueConfig(
            bucket=bucket,
            history=1,
            ttl=ttl,
            limit_marker_ttl=ttl,
            storage=js_api.StorageType.MEMORY,
            replicas=replicas,
            description="DiSRouter live nodes (one NodeCard per key)",
        )
        try:
            return await js.create_key_value(config)
        except ServiceUnavailableError:
            raise  # no JetStream leader yet (a new cluster): the caller retries; 1 replica would lose redundancy
        except APIError:
            if replicas > 1:
                continue  # e.g. fewer than 3 JetStream servers in the cluster
            break
        except Exception:
            break
    # another node created it between our calls
    return await js.key_value(bucket)


async def registry_ttl(kv: KeyValue, fallback: float = DEFAULT_REGISTRY_TTL_S) -> float:
    """The TTL the bucket was created with: it, not a node's own setting, decides expiry."""
    try:
        return (await kv.status()).ttl or fallback
    except Exception:
        return fallback


def _card_key(node_id: str) -> str:
    return node_id.replace(".", "_")


async def list_cards(kv: KeyValue) -> list[NodeCard]:
    """Current cards in the bucket (a snapshot; expired cards are gone)."""
    cards = []
    watcher = await kv.watchall()
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=2.0)
            except Exception:
                break
            if entry is None:
                break
            card = _parse(entry.value) if entry.operation not in (KV_DEL, KV_PURGE) else None
            if card is not None:
                cards.append(card)
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()
    return sorted(cards, key=lambda c: (c.cost, c.node_id))


def _parse(value: bytes | None) -> NodeCard | None:
    if not value:
        return None
    try:
        return NodeCard.model_validate_json(value)
    except ValidationError:
        log.warning("registry_card_unreadable")
        return None


class Membership:
    """This node's card (heartbeated) plus a live table of every card in the mesh."""

    def __init__(
        self,
        kv: KeyValue,
        ttl: float = DEFAULT_REGISTRY_TTL_S,
        on_change: Callable[[], Any] | None = None,
    ) -> None:
        self._kv = kv
        self._ttl = ttl
        self._seen: dict[str, tuple[NodeCard, float]] = {}
        self._watcher: Any = None
        self._watch_task: asyncio.Task | None = None
        self._revisions: dict[str, int] = {}  # key -> last revision the watcher delivered
        self._put_revision = 0  # revision of this node's last heartbeat
        self._tasks: list[asyncio.Task] = []
        self._on_change = on_change
        self.card: NodeCard | None = None
        self.synced = asyncio.Event()

    @property
    def heartbeat_interval(self) -> float:
        return max(self._ttl / 4.0, 0.2)

    async def start(self, card: NodeCard | None = None) -> None:
        """Watch the registry; if a card is given, register it and keep it alive."""
        await retry_while_unavailable(self._start_watching)
        await asyncio.wait_for(self.synced.wait(), timeout=10)
        if card is not None:
            self.card = card
            await retry_while_unavailable(self.publish)
            self._tasks.append(asyncio.create_task(self._heartbeat(), name="registry-heartbeat"))

    async def publish(self) -> None:
        if self.card is None:
            return
        self.card.heartbeat_at = time.time()
        self._put_revision = await self._kv.put(_card_key(self.card.node_id), self.card.model_dump_json().encode())

    async def leave(self) -> None:
        """Stop heartbeating and delete this node's card so peers stop forwarding to it."""
        for task in self._tasks:
            if task.get_name() == "registry-heartbeat":
                task.cancel()
        if self.card is not None:
            try:
                await self._kv.delete(_card_key(self.card.node_id))
            except (KeyNotFoundError, Exception) as exc:  # leaving must never fail shutdown
                log.warning("registry_delete_failed", error=str(exc))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_watching()

    def live(self) -> list[NodeCard]:
        """Cards heard from within the TTL, cheapest first."""
        now = time.monotonic()
        cards = [card for card, seen in self._seen.values() if now - seen <= self._ttl]
        return sorted(cards, key=lambda c: (c.cost, c.node_id))

    async def _heartbeat(self) -> None:
        """Re-put the card every interval; after a failed beat try again every HEARTBEAT_RETRY_S, so the
        card outlives a leader election or failover that ends within the TTL."""
        wait = self.heartbeat_interval
        while True:
            await asyncio.sleep(wait)
            wait = self.heartbeat_interval if await self._beat() else min(HEARTBEAT_RETRY_S, self.heartbeat_interval)

    async def _beat(self) -> bool:
        """One heartbeat; False when it failed (logged)."""
        try:
            previous = self._put_revision
            await self.publish()
            await self._heal_watcher(previous)
            return True
        except asyncio.CancelledError:
            raise
        except (NoStreamResponseError, BucketNotFoundError, NotFoundError) as exc:
            # The bucket is gone (e.g. a restarted nats-server whose memory store was lost): recreate it.
            log.warning("registry_lost", error=str(exc) or type(exc).__name__)
            try:
                await self._reopen()
                return True
            except asyncio.CancelledError:
                raise
            except Exception as again:  # NATS still recovering: try again soon
                log.warning("registry_reopen_failed", error=str(again) or type(again).__name__)
        except Exception as exc:  # NATS reconnecting: keep trying, the TTL is the judge
            log.warning("registry_heartbeat_failed", error=str(exc))
        return False

    async def _heal_watcher(self, previous: int) -> None:
        """Restart the watcher if it did not deliver this node's previous heartbeat (one interval
        ago): after a NATS restart or failover its consumer can be gone, and peers would expire."""
        if self.card is None or not previous:
            return
        if self._revisions.get(_card_key(self.card.node_id)) not in (previous, self._put_revision):
            log.warning("registry_watch_restarted", missed_revision=previous)
            await self._stop_watching()
            await self._start_watching()

    async def _reopen(self) -> None:
        """Recreate the registry bucket with its settings, then watch it afresh and re-register."""
        nc, bucket = kv_origin(self._kv)
        try:  # in a cluster the bucket may only be electing a new leader: do not recreate it then
            self._kv = await nc.jetstream(timeout=max(self.heartbeat_interval, 1.0)).key_value(bucket)
        except BucketNotFoundError:
            self._kv = await _create_registry(nc, bucket, self._ttl)
        await self._stop_watching()
        self._revisions.clear()
        self._put_revision = 0
        await self._start_watching()
        await self.publish()
        log.info("registry_reopened")

    async def _start_watching(self) -> None:
        self._watcher = await self._kv.watchall()
        self._watch_task = asyncio.create_task(self._watch(self._watcher), name="registry-watch")

    async def _stop_watching(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:  # its consumer may be gone with the server
                pass
            self._watcher = None

    async def _watch(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                self.synced.set()
                continue
            self._revisions[entry.key] = entry.revision
            if entry.operation in (KV_DEL, KV_PURGE):
                self._seen.pop(entry.key, None)
            else:
                card = _parse(entry.value)
                if card is not None:
                    self._seen[entry.key] = (card, time.monotonic())
            if entry.delta == 0:
                self.synced.set()
            if self._on_change is not None:
                self._on_change()
