"""The paper's maths (disrouter.mesh.objective): scenarios, the reject label, the reward, utility."""

from __future__ import annotations

import math

import pytest

from disrouter.mesh.objective import (
    DEFAULT_ALPHAS,
    SCENARIOS,
    ScenarioError,
    answer_pays_threshold,
    check_alphas,
    parse_scenario,
    reward,
    scenario_alpha,
    scenario_title,
    should_reject,
    system_utility,
    utility,
)


def test_named_scenarios_and_their_alphas() -> None:
    assert SCENARIOS == {"performance": 0.2, "balance": 0.5, "cost": 0.8}
    assert DEFAULT_ALPHAS == (0.2, 0.5, 0.8)
    assert [scenario_alpha(name) for name in SCENARIOS] == [0.2, 0.5, 0.8]
    assert scenario_alpha(0.35) == 0.35 and scenario_alpha("0.35") == 0.35
    assert scenario_title(0.2) == "Performance First" and scenario_title(0.8000001) == "Cost First"
    assert scenario_title(0.35) == "alpha=0.35"


@pytest.mark.parametrize("value", ["cheap", "", -0.1, 1.5, "2", True, None, float("nan")])
def test_a_bad_scenario_is_one_clear_error(value: object) -> None:
    with pytest.raises(ScenarioError, match="scenario"):
        parse_scenario(value)  # type: ignore[arg-type]


def test_parse_keeps_names_and_turns_numbers_into_alphas() -> None:
    assert parse_scenario("cost") == "cost"
    assert parse_scenario(0) == 0.0 and parse_scenario("1") == 1.0
    assert isinstance(parse_scenario(1), float)


def test_label_is_competence_below_one_minus_alpha() -> None:
    assert should_reject(0.0, 0.5) and should_reject(0.75, 0.2) and should_reject(0.125, 0.8)
    assert not should_reject(0.5, 0.5)  # exactly at the boundary: answer
    assert not should_reject(0.2, 0.8)  # 1 - 0.8 is 0.19999... in floating point
    assert not should_reject(0.3, 0.7)  # 1 - 0.7 is 0.30000000000000004: still a tie, answer
    assert not should_reject(0.8, 0.2)
    assert should_reject(0.3 - 1e-6, 0.7)


def test_reward_and_where_answering_pays() -> None:
    assert reward(False, 1.0, 0.5) == 1.0 and reward(False, 0.0, 0.5) == 0.0
    assert reward(True, 1.0, 0.2) == pytest.approx(math.sqrt(0.8))  # a reject earns the same, right or wrong
    assert reward(True, 0.0, 0.5, gamma=1.0) == pytest.approx(0.5)
    assert [round(answer_pays_threshold(a), 3) for a in (0.2, 0.5, 0.8)] == [0.894, 0.707, 0.447]
    for alpha in (0.2, 0.5, 0.8):  # at the threshold, answering with that chance of being right ties rejecting
        p = answer_pays_threshold(alpha)
        assert reward(False, p, alpha) == pytest.approx(reward(True, 0.0, alpha))


def test_utility_is_the_mean_reward_and_system_utility_weighs_cost() -> None:
    assert utility([], 0.5) == 0.0
    assert utility([(False, 1.0), (False, 0.0), (True, 0.0), (True, 1.0)], 0.5) == pytest.approx((1 + 2 * math.sqrt(0.5)) / 4)
    assert system_utility(0.9, 0.5, 0.2) == pytest.approx(0.8)
    assert system_utility(0.9, 0.5, 0.8) == pytest.approx(0.5)


def test_training_alphas_are_checked_once() -> None:
    assert check_alphas([0.2, 0.5, 0.8]) == []
    assert check_alphas([]) == ["alphas must not be empty"]
    assert check_alphas([0.0, 0.5, 0.5]) == ["alphas [0.0] must lie strictly between 0 and 1", "alphas must not repeat"]
