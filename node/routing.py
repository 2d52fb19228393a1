"""Where a node may send a query it does not answer, in the order to try them.

The one home of target order: the stronger peers a rejected query goes to (cheapest first, or
strongest first when the policy is sure enough to skip), and where a request goes when this node
is full (other replicas, least loaded first, then the stronger peers). Two strategies pick the
stronger peers: the cost cascade over live members (a node that joins with a cost slots in by
itself), and an explicit ordered `--peers` list. Both skip models already on the query's path,
so a query can never loop, and nobody forwards once the path reaches ``max_hops``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from disrouter.mesh.membership import NodeCard
from disrouter.mesh.protocol import HandOff
from disrouter.mesh.subjects import Subjects


@dataclass(frozen=True)
class Target:
    model_key: str
    subject: str  # a model's queue-group subject (any live replica may take it), or one node's


class Routing(ABC):
    """Orders hand-off targets; subclasses only say which stronger peers exist (``stronger``)."""

    def __init__(self, subjects: Subjects) -> None:
        self.subjects = subjects

    @abstractmethod
    def stronger(self, handoff: HandOff, me: NodeCard, live: list[NodeCard]) -> list[Target]:
        """Stronger models not yet on the path, cheapest first."""

    def targets(self, handoff: HandOff, me: NodeCard, live: list[NodeCard], *, skip: bool = False) -> list[Target]:
        """Where a rejected query goes, in order (strongest first when ``skip``); empty: this node must answer."""
        if len(handoff.path) + 1 >= handoff.query.max_hops:
            return []
        found = self.stronger(handoff, me, live)
        return found[::-1] if skip else found

    def overflow_targets(self, handoff: HandOff, me: NodeCard, live: list[NodeCard]) -> list[Target]:
        """Where a request goes while this node is full: other live replicas (least loaded first), then stronger peers."""
        if len(handoff.path) + 1 >= handoff.query.max_hops:
            return []
        replicas = sorted((c for c in live if c.model_key == me.model_key and c.node_id != me.node_id), key=lambda c: c.load)
        return [Target(c.model_key, self.subjects.node(c.node_id)) for c in replicas] + self.stronger(handoff, me, live)


class CascadeRouting(Routing):
    """Live members strictly more expensive than this node, cheapest first, one target per model."""

    def stronger(self, handoff: HandOff, me: NodeCard, live: list[NodeCard]) -> list[Target]:
        visited = handoff.visited_models() | {me.model_key}
        targets: dict[str, Target] = {}
        for card in sorted(live, key=lambda c: c.cost):
            if card.cost > me.cost and card.model_key not in visited and card.model_key not in targets:
                targets[card.model_key] = Target(card.model_key, self.subjects.model(card.model_key))
        return list(targets.values())


class PeerListRouting(Routing):
    """An explicit ordered fallback list of model keys (``--peers a,b``), live or not."""

    def __init__(self, subjects: Subjects, peers: list[str]) -> None:
        super().__init__(subjects)
        self._targets = [Target(key, subjects.model(key)) for key in peers]

    def stronger(self, handoff: HandOff, me: NodeCard, live: list[NodeCard]) -> list[Target]:
        visited = handoff.visited_models() | {me.model_key}
        return [t for t in self._targets if t.model_key not in visited]
