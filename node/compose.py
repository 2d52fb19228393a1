"""The composition root: the one place that wires a card, backend, policy and routing into a Node.

The `disrouter-node` command line and both test harnesses build their nodes here, so the
policy/backend compatibility check (``Policy.needs``) holds for every node, not only the CLI's.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from disrouter.mesh.membership import NodeCard
from disrouter.mesh.subjects import Subjects

from .backends import Backend
from .calibration import Calibration
from .policies import make_policy
from .routing import CascadeRouting, PeerListRouting
from .runtime import Node
from .settings import ConfigError, NodeSettings


async def build_node(
    nc: NATS,
    card: NodeCard,
    backend: Backend,
    subjects: Subjects,
    *,
    peers: list[str] | None = None,
    calibration: Calibration | None = None,
    settings: NodeSettings | None = None,
) -> Node:
    """A Node running ``card.policy`` over ``backend``: hands off along ``peers``, else the cost cascade.

    Raises ConfigError (after closing ``backend``) when the policy needs what the backend cannot do.
    """
    policy = make_policy(card.policy, calibration)
    missing = policy.needs - backend.capabilities
    if missing:
        await backend.close()
        raise ConfigError(f"policy {policy.name} needs a backend that can {', '.join(sorted(missing))}; {card.backend} cannot")
    card = card.model_copy(update={"context_length": backend.context_length, "capabilities": sorted(backend.capabilities)})
    routing = PeerListRouting(subjects, peers) if peers is not None else CascadeRouting(subjects)
    return Node(nc, card, backend, policy, routing, subjects, settings)
