"""Which peers a node may hand a rejected query to, in the order to try them.

Two strategies: the cost cascade over live members (a node that joins with a cost slots in by
itself), and an explicit ordered `--peers` list. Both skip models already on the query's path,
so a query can never loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from disrouter.mesh.membership import NodeCard
from disrouter.mesh.protocol import Query
from disrouter.mesh.subjects import Subjects


@dataclass(frozen=True)
class Target:
    model_key: str
    subject: str  # the model's queue-group subject: any live replica may take the query


class Routing(ABC):
    @abstractmethod
    def targets(self, query: Query, me: NodeCard, live: list[NodeCard]) -> list[Target]:
        """Hand-off targets in order of preference; empty means this node must answer."""


class CascadeRouting(Routing):
    """Live members strictly more expensive than this node, cheapest first, one target per model."""

    def __init__(self, subjects: Subjects) -> None:
        self._subjects = subjects

    def targets(self, query: Query, me: NodeCard, live: list[NodeCard]) -> list[Target]:
        visited = query.visited_models() | {me.model_key}
        targets: dict[str, Target] = {}
        for card in sorted(live, key=lambda c: c.cost):
            if card.cost > me.cost and card.model_key not in visited and card.model_key not in targets:
                targets[card.model_key] = Target(card.model_key, self._subjects.model(card.model_key))
        return list(targets.values())


class PeerListRouting(Routing):
    """An explicit ordered fallback list of model keys (``--peers a,b``), live or not."""

    def __init__(self, subjects: Subjects, peers: list[str]) -> None:
        self._targets = [Target(key, subjects.model(key)) for key in peers]

    def targets(self, query: Query, me: NodeCard, live: list[NodeCard]) -> list[Target]:
        visited = query.visited_models() | {me.model_key}
        return [t for t in self._targets if t.model_key not in visited]
