"""The mesh's live models, for GET /v1/models and for requests that name a tier.

Read-only and self-healing: the gateway reads the registry bucket the nodes keep every
``POLL_S`` seconds (it never creates the bucket or writes a card). Reading afresh each time
needs no long-lived watcher, so a NATS restart that loses the bucket, or a failover, heals at
the next read once a node has recreated it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from disrouter.mesh.membership import NodeCard, list_cards
from disrouter.mesh.subjects import Subjects

from .settings import ROUTED_MODEL

log = structlog.get_logger("disrouter.gateway.models")
POLL_S = 1.0


class LiveModels:
    """A live table of the mesh's tiers (one model key, any number of replicas)."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects
        self._cards: list[NodeCard] = []
        self._task: asyncio.Task | None = None
        self.synced = False  # the registry was read at least once (it may be empty)
        self.started = time.time()

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="gateway-registry")

    async def _poll(self) -> None:
        """Read the bucket's cards every POLL_S seconds; reopen it after any failure."""
        kv: KeyValue | None = None
        while True:
            try:
                kv = kv or await self._nc.jetstream().key_value(self._subjects.registry_bucket)
                self._cards = await list_cards(kv)
                self.synced = True
            except asyncio.CancelledError:
                raise
            except (BucketNotFoundError, NotFoundError):
                kv, self._cards, self.synced = None, [], True  # no node has created it yet: an empty mesh
                log.info("registry_not_created_yet", bucket=self._subjects.registry_bucket)
            except Exception as exc:  # NATS reconnecting or JetStream electing: read again soon
                kv = None
                log.warning("registry_read_failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(POLL_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def cards(self) -> list[NodeCard]:
        return self._cards

    def tier_of(self, name: str) -> str | None:
        """The model key a request's model name means: a live tier's key, or the model it serves."""
        cards = self.cards()
        for match in (lambda c: c.model_key == name, lambda c: c.model == name):
            if found := next((c for c in cards if match(c)), None):
                return found.model_key
        return None

    def tier_of_node(self, node_id: str) -> str | None:
        """The model key a live node serves."""
        return next((c.model_key for c in self.cards() if c.node_id == node_id), None)

    def listing(self) -> dict[str, Any]:
        """The /v1/models body: the routed name first, then each live tier, cheapest first."""
        tiers: dict[str, list[NodeCard]] = {}
        for card in self.cards():
            tiers.setdefault(card.model_key, []).append(card)
        data = [{"id": ROUTED_MODEL, "object": "model", "created": int(self.started), "owned_by": "disrouter", "disrouter": {"routed": True}}]
        for key, cards in tiers.items():
            data.append(
                {
                    "id": key,
                    "object": "model",
                    "created": int(min(c.started_at for c in cards)),
                    "owned_by": "disrouter",
                    "disrouter": {
                        "model": cards[0].model,
                        "cost": cards[0].cost,
                        "replicas": len(cards),
                        "entry": any(c.entry for c in cards),
                        "load": sum(c.load for c in cards),
                        "nodes": [c.node_id for c in cards],
                    },
                }
            )
        return {"object": "list", "data": data}
