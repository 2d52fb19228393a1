"""Does each trained tier pay its way in the mesh (training.mesh_baselines): hand-made outcomes of three tiers
give hand-computed mesh utilities for the trained tier and each baseline; the report carries them per split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from disrouter.training.mesh_baselines import compare_mesh, comparison_figures, table
from disrouter.training.mesh_calibration import Thresholds, TierOutcome, TierRows
from disrouter.training.mesh_run import load_mesh_config, tier_baselines, write_report

IDS = ["q0", "q1", "q2", "q3", "q4"]
ALPHA = 0.5
S = {"q0": (0.1, True), "q1": (0.6, False), "q2": (0.7, False), "q3": (0.95, False), "q4": (0.2, False)}
M = {"q0": (0.2, True), "q1": (0.3, True), "q2": (0.8, False), "q3": (0.9, False), "q4": (0.1, True)}
L = {"q0": True, "q1": True, "q2": True, "q3": False, "q4": True}
# s answers q0 (right) and q4 (wrong), skips q3 straight to l, forwards q1 and q2 to m; m answers q1, forwards q2
THRESHOLDS = [Thresholds(0.35, 0.9), Thresholds(0.5)]


def outcomes() -> list[dict[str, TierOutcome]]:
    return [{i: TierOutcome(p, c) for i, (p, c) in S.items()}, {i: TierOutcome(p, c) for i, (p, c) in M.items()},
            {i: TierOutcome(None, c) for i, c in L.items()}]


def tiers() -> list[TierRows]:
    return [TierRows(key, cost, rows) for key, cost, rows in zip(("s", "m", "l"), (0.1, 0.3, 0.9), outcomes())]


def test_baselines_of_the_cheapest_tier() -> None:
    s, _ = compare_mesh(tiers(), THRESHOLDS, ALPHA, IDS)
    # trained: q0 s right 0.1, q1 m right 0.3, q2 l right 0.9, q3 l wrong 0.9 (skipped), q4 s wrong 0.1
    assert s.trained.accuracy == pytest.approx(3 / 5) and s.trained.cost == pytest.approx(2.3 / 5)
    assert s.trained.utility == pytest.approx(0.6 - 0.5 * 0.46)  # 0.37
    assert s.reach == 1.0 and s.answer_rate == pytest.approx(2 / 5)
    # always-reject: everything to m, which answers q0, q1, q4 (right, 0.3) and forwards q2 (l right), q3 (l wrong)
    reject = s.baselines["always_reject"]
    assert (reject.accuracy, reject.cost, reject.utility) == pytest.approx((0.8, 2.7 / 5, 0.8 - 0.5 * 0.54))
    assert reject.share == pytest.approx({"s": 0.0, "m": 0.6, "l": 0.4})
    # always-answer: s answers all, right only on q0
    answer = s.baselines["always_answer"]
    assert (answer.accuracy, answer.cost, answer.utility) == pytest.approx((0.2, 0.1, 0.2 - 0.05))
    # random at s's own rate 0.4: 0.4 * always-answer + 0.6 * always-reject, exactly
    random = s.baselines["random"]
    assert (random.accuracy, random.cost) == pytest.approx((0.4 * 0.2 + 0.6 * 0.8, 0.4 * 0.1 + 0.6 * 0.54))
    assert random.utility == pytest.approx(0.4 * 0.15 + 0.6 * 0.53)  # 0.378
    # oracle: q0 (s right 0.95 > m right 0.85) and q3 (s wrong -0.05 > l wrong -0.45) answered; q1, q2, q4 forwarded
    oracle = s.baselines["oracle"]
    assert (oracle.accuracy, oracle.cost, oracle.utility) == pytest.approx((0.8, 1.7 / 5, 0.8 - 0.5 * 0.34))  # 0.63
    assert s.loses_to() == ["always_reject"]


def test_baselines_of_the_middle_tier_only_touch_what_reaches_it() -> None:
    _, m = compare_mesh(tiers(), THRESHOLDS, ALPHA, IDS)
    # only q1 and q2 reach m (q3 is skipped past it); m answers q1
    assert m.reach == pytest.approx(2 / 5) and m.answer_rate == pytest.approx(1 / 2)
    assert m.trained.utility == pytest.approx(0.37)
    # always-reject: q1, q2 to l (right, 0.9): q0 s .1 right, q3 l wrong, q4 s wrong
    assert m.baselines["always_reject"].utility == pytest.approx(3 / 5 - 0.5 * 2.9 / 5)  # 0.31
    # always-answer: m right on q1, wrong on q2
    assert m.baselines["always_answer"].utility == pytest.approx(2 / 5 - 0.5 * 1.7 / 5)  # 0.23
    assert m.baselines["random"].utility == pytest.approx(0.5 * 0.31 + 0.5 * 0.23)
    # oracle: q1 (m right 0.85 > l right 0.55) answered, q2 (m wrong -0.15 < l right 0.55) forwarded: the trained choice
    assert m.baselines["oracle"].utility == pytest.approx(0.37)
    assert m.loses_to() == []


def test_figures_and_table_flag_losses() -> None:
    s, m = (comparison_figures(c) for c in compare_mesh(tiers(), THRESHOLDS, ALPHA, IDS))
    assert s["loses_to"] == ["always_reject"] and s["n"] == 5 and s["random"]["utility"] == pytest.approx(0.378)
    lines = table({"test": {"sftrl": {"0.5": {"s": s, "m": m}}}})
    row_s, row_m = lines[-2], lines[-1]
    assert "| test (5) | sftrl | 0.5 | s | 1.00 | 0.40 | 0.370 | 0.530 | 0.150 | 0.378 | 0.630 |" in row_s
    assert "**LOSES** to always-reject (-0.160)" in row_s
    assert row_m.endswith("| 0.370 | 0.310 | 0.230 | 0.270 | 0.370 | - |")


def test_report_holds_both_splits(tmp_path: Path) -> None:
    """The run's glue: val's thresholds scored on each split's outcomes, into mesh-calibration.json / .md."""
    for name in ("s", "m", "l"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "val.jsonl").write_text("")
    config_file = tmp_path / "mesh.yaml"
    config_file.write_text("val: val.jsonl\ntest: test.jsonl\nout: out\nalphas: [0.5]\ntiers:\n  - {key: s, cost: 0.1, checkpoints: {arm: s}}\n"
                           "  - {key: m, cost: 0.3, checkpoints: {arm: m}}\n  - {key: l, cost: 0.9, model: l}\n")
    config = load_mesh_config(config_file)
    assert config.test == tmp_path / "test.jsonl"
    measured = {tmp_path / name: {ALPHA: rows} for name, rows in zip(("s", "m", "l"), outcomes())}
    held_out = {folder: {ALPHA: {i: TierOutcome(o.p_reject, not o.correct) for i, o in rows[ALPHA].items()}} for folder, rows in measured.items()}
    arms = {"arm": {ALPHA: {"thresholds": THRESHOLDS}}}
    baselines = tier_baselines(config, arms, {"val": measured, "test": held_out})
    assert baselines["val"]["arm"]["0.5"]["s"]["always_reject"]["utility"] == pytest.approx(0.53)
    # test: every correctness flipped; s still answers q0 and q4 (wrong, right) under val's thresholds
    flipped = baselines["test"]["arm"]["0.5"]["s"]
    assert flipped["trained"]["utility"] == pytest.approx(2 / 5 - 0.5 * 0.46) and flipped["answer_rate"] == pytest.approx(0.4)
    assert flipped["always_answer"]["utility"] == pytest.approx(4 / 5 - 0.05) and flipped["loses_to"] == ["always_answer"]
    calibrated = {"thresholds": THRESHOLDS, "mesh": compare_mesh(tiers(), THRESHOLDS, ALPHA, IDS)[0].trained}
    arms["arm"][ALPHA] |= {"mesh": [calibrated["mesh"]] * 2, "oracle": calibrated["mesh"], "largest": calibrated["mesh"]}
    report = write_report(config, arms, baselines)
    document = json.loads((config.out / "mesh-calibration.json").read_text())
    assert document["test"] == str(tmp_path / "test.jsonl") and set(document["baselines"]) == {"val", "test"}
    text = report.read_text()
    assert "## Does each trained tier pay its way in the mesh?" in text and "| test (5) | arm | 0.5 | s |" in text
