"""The demo's topology serves the self-aware family: checkpoints by name, the family's costs, graded questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from disrouter.local.demo_questions import FAMILY_TEST, GENERAL, family_questions, questions_for
from disrouter.mesh.topology import load_topology
from disrouter.node.backends import ModelNotFoundError
from disrouter.node.backends.sources import resolve
from disrouter.topologies import topology_path
from disrouter.training.graders import grade

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_serves_the_sftrl_tiers_with_probe_and_the_base_strongest_tier_at_the_familys_costs() -> None:
    demo = load_topology(topology_path("demo"))
    family = load_topology(ROOT / "training" / "family" / "weights" / "topology.yaml")

    assert [(e.key, e.model, e.policy) for e in demo.cascade()] == [
        ("family-s", "family-s-sftrl", "probe"), ("family-m", "family-m-sftrl", "probe"), ("family-l", "family-l", "always")]
    assert {e.key: e.cost for e in demo.models} == {e.key: e.cost for e in family.models}


def test_family_checkpoints_resolve_by_name_with_their_calibration() -> None:
    for tier in ("s", "m"):
        folder = resolve(f"family-{tier}-sftrl").folder
        assert folder == ROOT / "training" / "family" / "self-aware" / tier / "sftrl"
        assert (folder / "disrouter-calibration.json").is_file() and (folder / "config.json").is_file()
    assert resolve("family-l").folder == ROOT / "training" / "family" / "weights" / "l"
    with pytest.raises(ModelNotFoundError, match=r"self-aware/l/sftrl\).*run\.sh"):
        resolve("family-l-sftrl")


def test_the_demo_asks_the_familys_test_questions_for_the_family_and_general_ones_otherwise() -> None:
    asked = questions_for(load_topology(topology_path("demo")))
    test_ids = {line.split('"id":"', 1)[1].split('"', 1)[0] for line in FAMILY_TEST.read_text().splitlines() if line.strip()}

    assert [t.id for t in asked.tasks] == [t.id for t in family_questions()] and len(asked.tasks) == 10
    assert {t.id for t in asked.tasks} <= test_ids
    assert {t.meta["relation"] for t in asked.tasks} == {"city", "colour", "job", "year", "add"}
    assert questions_for(load_topology(topology_path("smollm2"))).tasks == GENERAL
    assert [grade(t, f"I think it is {t.answer}.") for t in GENERAL] == [True] * len(GENERAL)
    assert not any(grade(t, "I don't know!") for t in GENERAL)
