"""The paper's maths in one place: scenarios and their alpha, the reject label, the reward, and utility.

alpha weighs cost against accuracy: the system utility is ``accuracy - alpha * cost``. A node
trained for a scenario learns when to answer and when to reject (forward to a stronger model):

- SFT label: reject when the base model's competence p (its chance of answering correctly)
  is below ``1 - alpha`` (``should_reject``). Mesh-aware option (``should_reject_in_mesh``,
  ``mesh_reward``): answer anyway when no tier above does better on the task (hopeless above).
- RL reward per query: 1 correct, 0 wrong, ``(1 - alpha) ** gamma`` for a rejection
  (``reward``), so answering pays in expectation when p exceeds ``(1 - alpha) ** gamma``
  (``answer_pays_threshold``). The two boundaries differ (0.8 vs 0.894 at alpha 0.2); each
  stage keeps the paper's own, and the evaluation headline is the mean reward (``utility``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

ScenarioName = Literal["performance", "balance", "cost"]
SCENARIOS: dict[str, float] = {"performance": 0.2, "balance": 0.5, "cost": 0.8}
"""Named scenarios and their alpha, as in the paper."""
SCENARIO_TITLES: dict[str, str] = {"performance": "Performance First", "balance": "Balance", "cost": "Cost First"}
"""How the scenario instruction names each scenario to the model."""
assert set(get_args(ScenarioName)) == set(SCENARIOS) == set(SCENARIO_TITLES)

DEFAULT_ALPHAS: tuple[float, ...] = tuple(SCENARIOS.values())
"""The alphas a training run covers unless its config says otherwise."""
DEFAULT_GAMMA = 0.5
"""The paper's exponent on the reward of a rejection."""
LABEL_TOLERANCE = 1e-9
"""Slack in the reject label so that floating point never flips a tie: competence exactly
1 - alpha (e.g. 0.3 at alpha 0.7, where 1 - 0.7 is 0.30000000000000004) is labelled answer."""


class ScenarioError(ValueError):
    """A scenario that is neither a known name nor an alpha in [0, 1]."""


def parse_scenario(value: str | float) -> str | float:
    """A scenario name as is, or an alpha (number or numeric text) in [0, 1]; anything else raises ScenarioError."""
    if isinstance(value, str) and value in SCENARIOS:
        return value
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"scenario must be one of {', '.join(SCENARIOS)} or an alpha in [0, 1], not {value!r}") from None
    if isinstance(value, bool) or not 0.0 <= alpha <= 1.0:
        raise ScenarioError(f"scenario alpha must be within [0, 1], not {value!r}")
    return alpha


def scenario_alpha(scenario: str | float) -> float:
    """The alpha of a scenario name or number."""
    parsed = parse_scenario(scenario)
    return SCENARIOS[parsed] if isinstance(parsed, str) else parsed


def scenario_title(alpha: float) -> str:
    """The scenario's name for the model: its title when alpha is a named one, else ``alpha=0.35``."""
    named = {round(value, 2): SCENARIO_TITLES[name] for name, value in SCENARIOS.items()}
    return named.get(round(alpha, 2), f"alpha={alpha:.2f}")


def check_alphas(alphas: Sequence[float]) -> list[str]:
    """Problems with a list of training alphas: empty, repeated, or outside (0, 1)."""
    if not alphas:
        return ["alphas must not be empty"]
    bad = [a for a in alphas if not 0.0 < a < 1.0]
    problems = [f"alphas {bad} must lie strictly between 0 and 1"] if bad else []
    if len(set(alphas)) != len(alphas):
        problems.append("alphas must not repeat")
    return problems


def should_reject(competence: float, alpha: float) -> bool:
    """The SFT label: reject when competence is below 1 - alpha (ties answer, see LABEL_TOLERANCE)."""
    return competence < 1.0 - alpha - LABEL_TOLERANCE


def forwarding_helps(competence: float, ceiling: float) -> bool:
    """Whether a tier above can do better on a task: ``ceiling`` (the best competence among the tiers
    above) beats this tier's own ``competence`` by more than LABEL_TOLERANCE."""
    return ceiling > competence + LABEL_TOLERANCE


def should_reject_in_mesh(competence: float, alpha: float, ceiling: float) -> bool:
    """The mesh-aware SFT label: the paper's (``should_reject``), except that a tier answers a task no
    tier above does better on (``forwarding_helps`` false): there its own answer is the cheapest one."""
    return should_reject(competence, alpha) and forwarding_helps(competence, ceiling)


def reject_reward(alpha: float, gamma: float = DEFAULT_GAMMA) -> float:
    """What a rejection earns: (1 - alpha) ** gamma."""
    return (1.0 - alpha) ** gamma


def answer_pays_threshold(alpha: float, gamma: float = DEFAULT_GAMMA) -> float:
    """The chance of being right above which answering beats rejecting in expected reward."""
    return reject_reward(alpha, gamma)


def reward(rejected: bool, correct: float, alpha: float, gamma: float = DEFAULT_GAMMA) -> float:
    """The paper's reward of one decision: ``correct`` (1 right, 0 wrong, or an expected
    correctness) when answered, (1 - alpha) ** gamma when rejected."""
    return reject_reward(alpha, gamma) if rejected else float(correct)


def mesh_reward(rejected: bool, correct: float, alpha: float, gamma: float = DEFAULT_GAMMA, forward_helps: bool = True) -> float:
    """The RL reward in a mesh: the paper's (``reward``), except that rejecting a task no tier above does
    better on earns 0, a wrong answer's reward, so it never earns more than answering."""
    return 0.0 if rejected and not forward_helps else reward(rejected, correct, alpha, gamma)


def utility(decisions: Sequence[tuple[bool, float]], alpha: float, gamma: float = DEFAULT_GAMMA) -> float:
    """Mean reward of ``(rejected, correct)`` decisions: a node's utility under ``alpha``
    (0 for no decisions)."""
    if not decisions:
        return 0.0
    return sum(reward(rejected, correct, alpha, gamma) for rejected, correct in decisions) / len(decisions)


def system_utility(accuracy: float, cost: float, alpha: float) -> float:
    """The mesh's objective: accuracy minus alpha times the (normalised) cost spent."""
    return accuracy - alpha * cost
