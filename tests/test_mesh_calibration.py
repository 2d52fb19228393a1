"""Mesh-utility calibration (training.mesh_calibration, training.mesh_run): known P(reject) and
correctness give known thresholds and utilities; the command writes the node's calibration files."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from disrouter.mesh.protocol import Query
from disrouter.node.backends import load_backend
from disrouter.node.calibration import Calibration, load_calibration
from disrouter.node.policies import make_policy
from disrouter.training.config import TrainingConfigError
from disrouter.training.mesh_calibration import NEVER, Thresholds, TierOutcome, TierRows, calibrate_mesh, mesh_result, oracle_result
from disrouter.training.mesh_run import calibrate_arm, load_mesh_config, measure_all, write_tier_calibrations
from disrouter.training.tasks import load_tasks

IDS = ["q0", "q1", "q2", "q3"]


def tiers() -> list[TierRows]:
    """s knows q0 (and is sure it does not know q3), m knows q0-q2, l knows everything but q3."""
    s = {"q0": (0.1, True), "q1": (0.6, False), "q2": (0.7, False), "q3": (0.95, False)}
    m = {"q0": (0.2, True), "q1": (0.3, True), "q2": (0.4, True), "q3": (0.9, False)}
    return [
        TierRows("s", 0.1, {i: TierOutcome(p, c) for i, (p, c) in s.items()}),
        TierRows("m", 0.3, {i: TierOutcome(p, c) for i, (p, c) in m.items()}),
        TierRows("l", 0.9, {i: TierOutcome(None, i != "q3") for i in IDS}),
    ]


def test_mesh_result_arithmetic() -> None:
    # s answers q0 (right, 0.1); q1 and q2 go to m (right, 0.3 each); q3 skips past m to l (wrong, 0.9)
    result = mesh_result(tiers(), [Thresholds(0.35, 0.9), Thresholds(0.5)], 0.5, IDS)
    assert result.accuracy == pytest.approx(3 / 4)
    assert result.cost == pytest.approx((0.1 + 0.3 + 0.3 + 0.9) / 4)
    assert result.utility == pytest.approx(0.75 - 0.5 * 0.4)
    assert result.share == {"s": 0.25, "m": 0.5, "l": 0.25}
    # without the skip, q3 reaches m, which forwards it (0.9 > 0.5) to l: the same answer, the same cost
    assert mesh_result(tiers(), [Thresholds(0.35), Thresholds(0.5)], 0.5, IDS).utility == pytest.approx(result.utility)


def test_top_down_choice() -> None:
    # m first, given l: answering q0-q2 (right at 0.3) beats l (right at 0.9); q3 wrong either way, m cheaper:
    # the best m threshold answers everything (1.0, degenerate), skip never (m's next tier is the strongest)
    # s next, given m: answer q0 only (0.35 = midpoint of 0.1 and 0.6); never skip (l would cost more on q3)
    thresholds, results = calibrate_mesh(tiers(), 0.5, IDS)
    assert thresholds[1] == Thresholds(1.0, NEVER) and thresholds[1].degenerate
    assert thresholds[0] == Thresholds(0.35, NEVER) and not thresholds[0].degenerate
    assert results[0].accuracy == pytest.approx(0.75)
    assert results[0].cost == pytest.approx((0.1 + 0.3 * 3) / 4)
    assert results[0].utility == pytest.approx(0.75 - 0.5 * 0.25)
    assert results[1].utility == pytest.approx(0.75 - 0.5 * 0.3)  # the mesh from m up (m, l)
    oracle = oracle_result(tiers(), 0.5, IDS)
    assert oracle.accuracy == pytest.approx(0.75) and oracle.cost == pytest.approx((0.1 + 0.3 + 0.3 + 0.1) / 4)  # q3: nobody is right, s is cheapest


def test_skip_chosen_when_the_middle_tier_is_wrong_and_dear() -> None:
    # make m wrong on q1 and q2 and sure of it: then s should skip them... only if l is right and worth its cost
    rows = tiers()
    rows[1] = TierRows("m", 0.3, {**rows[1].outcomes, "q1": TierOutcome(0.3, False), "q2": TierOutcome(0.4, False)})
    thresholds, results = calibrate_mesh(rows, 0.2, IDS)
    # m: answering q1/q2 wrong at 0.3 vs l right at 0.9 (utility +1 - 0.2 * 0.6 each): m forwards them
    assert 0.2 <= thresholds[1].answer < 0.3
    # s: q1 and q2 (P 0.6, 0.7) go to l either way; a skip there saves nothing in cost-the-paper's-way, so never skip wins the tie
    assert thresholds[0].skip == NEVER
    assert results[0].accuracy == pytest.approx(3 / 4)


def test_config_errors(tmp_path: Path) -> None:
    (tmp_path / "v.jsonl").write_text("")
    config = tmp_path / "mesh.yaml"
    config.write_text("val: v.jsonl\nout: o\ntiers:\n  - {key: a, cost: 0.5, checkpoints: {sft: x}}\n  - {key: b, cost: 0.1, model: y}\n")
    with pytest.raises(TrainingConfigError, match="cheapest first"):
        load_mesh_config(config)
    config.write_text("val: v.jsonl\nout: o\nbogus: 1\ntiers: []\n")
    with pytest.raises(TrainingConfigError, match="unknown keys"):
        load_mesh_config(config)


SMOKE = Path(__file__).resolve().parents[1] / "training" / "configs" / "family-smoke.yaml"
FAMILY = Path(__file__).resolve().parents[1] / "training" / "family" / "weights"


def test_a_confidence_tier_is_measured_with_its_policy_and_its_file_says_so(tmp_path: Path) -> None:
    """A tier with ``policy: confidence``: its scores are the confidence node's doubt, and its calibration names the policy."""
    val = tmp_path / "val.jsonl"
    val.write_text("".join((FAMILY / "data" / "sa-val.jsonl").read_text().splitlines(keepends=True)[:4]))
    shutil.copytree(FAMILY / "s", tmp_path / "s")  # the calibration is written beside the tier: never into the committed one
    config_file = tmp_path / "mesh.yaml"
    config_file.write_text(f"val: {val}\nout: {tmp_path / 'out'}\nalphas: [0.5]\nmax_tokens: 8\ntiers:\n"
                           f"  - {{key: s, cost: 0.13, checkpoints: {{arm: {tmp_path / 's'}}}, policy: confidence}}\n"
                           f"  - {{key: l, cost: 0.9, model: {FAMILY / 'l'}}}\n")
    config = load_mesh_config(config_file)
    assert [tier.policy for tier in config.tiers] == ["confidence", "probe"]

    measured = measure_all(config, progress=False)

    backend = load_backend("transformers", str(tmp_path / "s"))
    lifted = Calibration(thresholds={0.5: 1.0}, skip_thresholds={0.5: 1.0}, demonstrations=False)
    queries = {task.id: Query(messages=task.prompt_messages(), scenario=0.5, max_tokens=8, temperature=0.0) for task in load_tasks(val)}

    async def scores(policy: str) -> dict[str, float]:
        chosen = make_policy(policy, lifted)
        return {query_id: (await chosen.decide(backend, query)).reject_prob for query_id, query in queries.items()}

    doubt, probe = asyncio.run(scores("confidence")), asyncio.run(scores("probe"))
    got = {query_id: outcome.p_reject for query_id, outcome in measured[tmp_path / "s"][0.5].items()}
    assert got == pytest.approx(doubt, abs=1e-6) and got != pytest.approx(probe, abs=1e-3)
    [path] = write_tier_calibrations(config, "arm", calibrate_arm(config, "arm", measured))
    assert json.loads(path.read_text())["policy"] == "confidence" and load_calibration(None, tmp_path / "s").policy == "confidence"


def test_an_answer_model_tier_must_run_the_probe_policy(tmp_path: Path) -> None:
    (tmp_path / "v.jsonl").write_text("")
    config = tmp_path / "mesh.yaml"
    config.write_text(f"val: v.jsonl\nout: o\ntiers:\n  - {{key: s, cost: 0.1, checkpoints: {{arm: {FAMILY / 's'}}}, answer_model: {FAMILY / 's'}, "
                      f"policy: confidence}}\n  - {{key: l, cost: 0.9, model: {FAMILY / 'l'}}}\n")
    with pytest.raises(TrainingConfigError, match="tier s: answer_model needs policy probe, not confidence"):
        load_mesh_config(config)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "disrouter.cli.main", "train", *args, "--no-progress"], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_command_on_the_smoke_family(tmp_path: Path) -> None:
    """`disrouter train mesh` on tiny tiers: every lower tier gets a calibration file the node loads."""
    trained = _cli("family", "--config", str(SMOKE), "--out", str(tmp_path / "family"))
    assert trained.returncode == 0, trained.stderr[-2000:]
    s, m, l = (tmp_path / "family" / "tiers" / tier for tier in ("s", "m", "l"))
    val = tmp_path / "family" / "data" / "sa-val.jsonl"
    config = tmp_path / "mesh.yaml"
    copies = {}
    for tier in (s, m):
        copies[tier.name] = tmp_path / f"{tier.name}-ckpt"
        subprocess.run(["cp", "-r", str(tier), str(copies[tier.name])], check=True)
    config.write_text(
        f"val: {val}\ntest: {val}\nout: {tmp_path / 'out'}\nalphas: [0.2, 0.8]\nmax_tokens: 8\n"
        f"tiers:\n  - {{key: s, cost: 0.1, checkpoints: {{arm: {copies['s']}}}}}\n"
        f"  - {{key: m, cost: 0.3, checkpoints: {{arm: {copies['m']}}}}}\n  - {{key: l, cost: 0.9, model: {l}}}\n"
    )
    done = _cli("mesh", "--config", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("s", "m"):
        calibration = load_calibration(None, copies[name])
        assert set(calibration.thresholds) == {0.2, 0.8} and calibration.demonstrations is False
        written = json.loads((copies[name] / "disrouter-calibration.json").read_text())
        assert written["objective"] == "mesh" and set(written["mesh"]["val_utility_from_tier"]) == {"0.2", "0.8"} and written["policy"] == "probe"
    report = json.loads((tmp_path / "out" / "mesh-calibration.json").read_text())
    figures = report["arms"]["arm"]["0.8"]
    assert figures["mesh"]["utility"] == pytest.approx(figures["mesh"]["accuracy"] - 0.8 * figures["mesh"]["cost"], abs=1e-3)
    assert figures["mesh"]["utility"] <= figures["oracle"]["utility"] + 1e-9
    # the baselines on val (the calibrated mesh is the trained figure) and on the test split (here the same tasks, measured again)
    assert set(report["baselines"]) == {"val", "test"}
    assert report["baselines"]["val"]["arm"]["0.8"]["s"]["trained"]["utility"] == pytest.approx(figures["mesh"]["utility"], abs=1e-3)
    for tier in ("s", "m"):
        compared = report["baselines"]["test"]["arm"]["0.8"][tier]
        assert compared["oracle"]["utility"] >= max(compared[name]["utility"] for name in ("always_reject", "always_answer", "random")) - 1e-3
