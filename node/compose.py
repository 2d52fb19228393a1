"""The composition root: the one place that wires a card, backend, policy and routing into a Node.

The `disrouter-node` command line and both test harnesses build their nodes here, so the
policy/backend compatibility check (``Policy.needs``) holds for every node, not only the CLI's.
"""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS

from disrouter.mesh.membership import NodeCard
from disrouter.mesh.subjects import Subjects

from .backends import Backend
from .backends.split import SplitBackend
from .calibration import Calibration, CalibrationError
from .policies import make_policy
from .routing import CascadeRouting, PeerListRouting
from .runtime import Node
from .settings import ConfigError, NodeSettings

log = structlog.get_logger("disrouter.node.compose")
THRESHOLDED = ("probe", "confidence")  # the policies that compare a score with the calibration's thresholds


def check_answer_model(card: NodeCard) -> None:
    """ConfigError unless a card that names an answer model runs the probe policy (its decision is a prefill, not an answer)."""
    if card.answer_model and card.policy != "probe":
        raise ConfigError(f"--answer-model needs --policy probe, not {card.policy}: under {card.policy} the answer is the decision")


def check_calibration(policy: str, calibration: Calibration | None) -> None:
    """CalibrationError when ``calibration`` says it was made for the other thresholded policy than ``policy``."""
    made_for = calibration.policy if calibration else None
    if made_for and made_for != policy and policy in THRESHOLDED:
        raise CalibrationError(f"the calibration's thresholds are on the {made_for} policy's score, not {policy}'s: "
                               f"run --policy {made_for}, or give a {policy} calibration with --calibration FILE")


async def build_node(
    nc: NATS,
    card: NodeCard,
    backend: Backend,
    subjects: Subjects,
    *,
    peers: list[str] | None = None,
    calibration: Calibration | None = None,
    settings: NodeSettings | None = None,
    answer_backend: Backend | None = None,
) -> Node:
    """A Node running ``card.policy`` over ``backend``: hands off along ``peers``, else the cost cascade.

    With ``answer_backend`` (probe policy only) ``backend`` decides and ``answer_backend`` writes the answers.
    Raises ConfigError (after closing the backends) when the policy needs what the backend cannot do,
    CalibrationError when ``calibration`` was made for another thresholded policy.
    """
    if answer_backend is not None:
        card = card.model_copy(update={"answer_model": card.answer_model or answer_backend.model_name})
        backend = SplitBackend(backend, answer_backend)
        try:
            check_answer_model(card)
        except ConfigError:
            await backend.close()
            raise
        log.info("answer_model", node_id=card.node_id, decides=card.model, answers=card.answer_model)
    try:
        check_calibration(card.policy, calibration)
    except CalibrationError:
        await backend.close()
        raise
    policy = make_policy(card.policy, calibration)
    missing = policy.needs - backend.capabilities
    if missing:
        await backend.close()
        raise ConfigError(f"policy {policy.name} needs a backend that can {', '.join(sorted(missing))}; {card.backend} cannot")
    card = card.model_copy(update={"context_length": backend.context_length, "capabilities": sorted(backend.capabilities)})
    routing = PeerListRouting(subjects, peers) if peers is not None else CascadeRouting(subjects)
    return Node(nc, card, backend, policy, routing, subjects, settings)
