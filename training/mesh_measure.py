"""What each tier does on validation queries, measured through the node's own policy code.

A lower tier runs its node policy's ``decide`` (``probe``, or ``confidence``) with its thresholds
lifted to 1 (never reject), so one call gives both the score the node would compare with a threshold
(P(reject), or the doubt in its own answer) and the answer it would give when it answers (scenario
chat, reject phrase suppressed, greedy); the strongest tier runs ``AlwaysPolicy``. Answers are graded
by the project's graders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from rich.progress import Progress

from disrouter.mesh.protocol import Query
from disrouter.node.backends import load_backend
from disrouter.node.backends.split import SplitBackend
from disrouter.node.calibration import Calibration
from disrouter.node.policies import AlwaysPolicy, Policy, make_policy

from .graders import grade
from .mesh_calibration import TierOutcome
from .tasks import Task

Outcomes = dict[float, dict[str, TierOutcome]]
"""alpha -> query id -> outcome."""


def measuring_policy(strongest: bool, alphas: Sequence[float], demonstrations: bool, policy: str = "probe") -> Policy:
    """The node policy a tier serves (``policy``: one that compares a score with thresholds), with its
    thresholds lifted so it always answers."""
    if strongest:
        return AlwaysPolicy()
    never = {float(alpha): 1.0 for alpha in alphas}
    return make_policy(policy, Calibration(thresholds=never, skip_thresholds=never, demonstrations=demonstrations))


async def measure_tier(
    folder: Path, tasks: Sequence[Task], alphas: Sequence[float], *, strongest: bool, demonstrations: bool,
    max_tokens: int, in_flight: int, backend: str, progress: Progress, job: int, answer_folder: Path | None = None,
    policy: str = "probe",
) -> Outcomes:
    """Every task under every alpha (the strongest once: it ignores alpha) through ``folder``'s node ``policy``;
    with ``answer_folder`` the node's --answer-model: ``folder`` gives P(reject), ``answer_folder`` the answers."""
    loaded = await asyncio.to_thread(load_backend, backend, str(folder))
    if answer_folder is not None:
        loaded = SplitBackend(loaded, await asyncio.to_thread(load_backend, backend, str(answer_folder)))
    measuring = measuring_policy(strongest, alphas, demonstrations, policy)
    gate = asyncio.Semaphore(in_flight)
    measured_alphas = list(alphas)[:1] if strongest else list(alphas)

    async def one(task: Task, alpha: float) -> tuple[float, str, TierOutcome]:
        async with gate:
            query = Query(messages=task.prompt_messages(), scenario=alpha, max_tokens=max_tokens, temperature=0.0)
            decision = await measuring.decide(loaded, query)
        progress.advance(job)
        text = decision.generation.text if decision.generation else ""
        return alpha, task.id, TierOutcome(None if strongest else decision.reject_prob, grade(task, text))

    try:
        rows = await asyncio.gather(*(one(task, alpha) for alpha in measured_alphas for task in tasks))
    finally:
        await loaded.close()
    outcomes: Outcomes = {float(alpha): {} for alpha in alphas}
    for alpha, query_id, outcome in rows:
        for target in (alphas if strongest else [alpha]):
            outcomes[float(target)][query_id] = outcome
    return outcomes
