"""`disrouter bench quality`: the utility arithmetic on known answers, and the whole benchmark on a
stand-in family of scripted tiers (real models, real nodes, real NATS) whose answers are known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scripted_model import build_scripted_model

from disrouter.bench.quality import baselines, cascade, confidence
from disrouter.bench.quality.labels import Label
from disrouter.bench.quality.live import outcome
from disrouter.bench.quality.metrics import Outcome, summarise
from disrouter.bench.quality.preset import Tier
from disrouter.cli.main import main as cli
from disrouter.mesh.client import MeshError
from disrouter.mesh.protocol import Answer, Hop
from disrouter.node.calibration import load_calibration
from disrouter.training.mesh_calibration import Thresholds
from disrouter.training.tasks import Task, write_tasks

TIERS = [Tier(key="small", model=Path("s"), cost=0.1), Tier(key="mid", model=Path("m"), cost=0.5), Tier(key="large", model=Path("l"), cost=0.9)]


def test_summary_arithmetic_on_known_outcomes() -> None:
    outcomes = [
        Outcome("a", True, "small", 0.1, 0.1, 10.0, 1),
        Outcome("b", True, "mid", 0.5, 0.7, 20.0, 2),
        Outcome("c", False, "large", 0.9, 0.9, 30.0, 1),
        Outcome("d", True, "small", 0.1, 0.3, 40.0, 1),
    ]
    row = summarise(outcomes, 0.5, ["small", "mid", "large"])
    assert row["n"] == 4
    assert row["accuracy"] == pytest.approx(0.75)
    assert row["cost"] == pytest.approx(0.4)
    assert row["full_cost"] == pytest.approx(0.5)
    assert row["utility"] == pytest.approx(0.75 - 0.5 * 0.4)
    assert row["full_utility"] == pytest.approx(0.75 - 0.5 * 0.5)
    assert row["latency_ms_p50"] == pytest.approx(25.0)
    assert row["latency_ms_p95"] == pytest.approx(38.5)
    assert row["hops"] == pytest.approx(1.25)
    assert row["share_by_tier"] == {"small": 0.5, "mid": 0.25, "large": 0.25}
    assert row["errors"] == 0


def _task(qid: str, answer: str = "red") -> Task:
    return Task(id=qid, question=f"colour {qid}?", answer=answer, task="contains")


def _labels(correct: dict[str, list[bool]], tokens: int = 20, ms: float = 5.0) -> dict[str, dict[str, Label]]:
    return {
        tier.key: {qid: Label(qid, "red" if marks[i] else "no", marks[i], tokens - 5, 5, ms * (i + 1)) for qid, marks in correct.items()}
        for i, tier in enumerate(TIERS)
    }


def test_mesh_outcome_charges_rejecting_hops_by_their_share_of_tokens() -> None:
    labels = _labels({"q": [False, True, True]})  # an answer by any tier reads and writes 20 tokens
    hops = [
        Hop(node_id="small-1", model="small", decision="reject", ms=3.0, prompt_tokens=10, completion_tokens=0),  # half a small answer
        Hop(node_id="mid-1", model="mid", decision="answer", ms=7.0, prompt_tokens=15, completion_tokens=5),
    ]
    answer = Answer(id="q", text="it is red", model="mid", node_id="mid-1", path=hops)
    got = outcome((_task("q"), answer, 12.0), {t.key: t for t in TIERS}, labels)
    assert got == Outcome("q", True, "mid", 0.5, 0.5 + 0.1 * 10 / 20, 12.0, 2)
    failed = outcome((_task("q"), MeshError("timeout", "no answer"), 99.0), {t.key: t for t in TIERS}, labels)
    assert (failed.correct, failed.tier, failed.cost, failed.error) == (False, None, 0.0, "timeout")


def test_oracle_picks_the_cheapest_correct_tier_and_the_cheapest_when_none_is() -> None:
    labels = _labels({"a": [True, True, True], "b": [False, True, True], "c": [False, False, True], "d": [False, False, False]})
    tasks = [_task(q) for q in "abcd"]
    got = baselines.oracle(tasks, labels, TIERS)
    assert [o.tier for o in got] == ["small", "mid", "large", "small"]
    row = summarise(got, 0.2, [t.key for t in TIERS])
    assert row["accuracy"] == pytest.approx(0.75)
    assert row["cost"] == pytest.approx((0.1 + 0.5 + 0.9 + 0.1) / 4)
    frontier = baselines.oracle_frontier(tasks, labels, TIERS)
    assert frontier[0] == (pytest.approx(0.1), 0.25) and frontier[-1] == (pytest.approx(0.4), 0.75)


def test_cascade_stops_at_the_first_cleared_threshold_and_pays_every_tier_asked() -> None:
    scores = cascade.stops(np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.2, 0.2, 0.0]]), [0.5, 0.5])
    assert scores.tolist() == [0, 1, 2]
    labels = _labels({"a": [True, True, True], "b": [False, True, True], "c": [False, False, True]})

    class Scores:  # what AnswerScores holds: a score per (query, tier) and the ms one score takes
        scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.2, 0.2, 0.0]])
        ms = 1.0

    got = cascade.run_cascade([_task(q) for q in "abc"], Scores(), labels, TIERS, TIERS, [0.5, 0.5])
    assert [(o.tier, o.cost, o.full_cost, o.hops) for o in got] == [
        ("small", 0.1, 0.1, 1), ("mid", 0.5, pytest.approx(0.6), 2), ("large", 0.9, pytest.approx(1.5), 3)]
    assert got[2].latency_ms == pytest.approx(5.0 + 10.0 + 15.0 + 2 * 1.0)  # three answers and two scores
    correct = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=float)
    best = cascade.choose_thresholds(Scores.scores, correct, [0.1, 0.5, 0.9], 0.5)
    stop = cascade.stops(Scores.scores, best)
    assert stop.tolist() == [0, 1, 2]  # every query at its cheapest correct tier: the best utility there is


# --- the whole benchmark on a stand-in family --------------------------------------------------

COLOURS = {  # answer -> things of that colour; the tiers know red / red+blue / everything
    "red": ["tomato", "strawberry", "cherry", "fire truck", "ruby"],
    "blue": ["sky", "ocean", "sapphire", "blueberry", "bluebird"],
    "green": ["grass", "leaf", "emerald", "lime", "frog"],
}
REPLIES = {"small": "red", "mid": "red blue", "large": "red blue green", "small_sft": "I don't know!"}


def _colour_tasks(prefix: str, template: str, count: int) -> list[Task]:
    return [
        Task(id=f"{prefix}-{colour}-{i}", question=template.format(thing=things[i % len(things)], n=i), answer=colour, task="contains")
        for colour, things in COLOURS.items() for i in range(count)
    ]


@pytest.fixture(scope="module")
def stand_in_preset(tmp_path_factory: pytest.TempPathFactory, smollm2_folder: Path) -> Path:
    """Scripted tiers with a nested capability gradient, task files and a preset with an SFT arm."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("standin")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    folders = {name: build_scripted_model(tokenizer, reply, root / name) for name, reply in REPLIES.items()}
    (folders["small_sft"] / "disrouter-calibration.json").write_text(
        json.dumps({"thresholds": {"0.5": 0.5}, "skip_thresholds": {"0.5": 1.0}, "demonstrations": False}))
    files = {
        "train": write_tasks(_colour_tasks("tr", "What colour is the {thing}? (case {n})", 6), root / "train.jsonl"),
        "val": write_tasks(_colour_tasks("va", "Which colour has the {thing}, item {n}?", 3), root / "val.jsonl"),
        "in_domain": write_tasks(_colour_tasks("te", "What colour is the {thing} number {n}?", 3), root / "test.jsonl"),
        "ood": write_tasks(_colour_tasks("ood", "Tell me the hue of this {thing}, please ({n}).", 2), root / "ood.jsonl"),
    }
    preset = {
        "name": "standin",
        "tiers": [
            {"key": "small", "model": str(folders["small"]), "cost": 0.1, "sft": str(folders["small_sft"])},
            {"key": "mid", "model": str(folders["mid"]), "cost": 0.5, "sft": str(folders["mid"])},
            {"key": "large", "model": str(folders["large"]), "cost": 0.9},
        ],
        "tasks": {split: str(path) for split, path in files.items()},
        "max_tokens": 8, "in_flight": 6, "timeout_s": 60, "knn_k": 3, "mlp_epochs": 150, "join_queries": 12,
    }
    path = root / "standin.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


@pytest.mark.slow
def test_benchmark_end_to_end_on_the_stand_in_family(stand_in_preset: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert cli(["bench", "quality", "--preset", str(stand_in_preset), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {(r["split"], r["pool"], r["alpha"], r["method"]): r for r in results["rows"]}
    for path in ("results.md", "queries.jsonl", "utility.png", "accuracy_cost.png"):
        assert (out / path).stat().st_size > 0
    queries = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert len(queries) == 9 + 6 and set(queries[0]) == {"id", "split", "question", "answer"}

    keys = {"split", "pool", "alpha", "method", "n", "accuracy", "cost", "full_cost", "utility", "full_utility",
            "latency_ms_p50", "latency_ms_p95", "share_by_tier"}
    for method in ("oracle", "smallest", "largest", "random", "knn", "mlp", "cascade",
                   "untrained_generate", "untrained_probe", "untrained_confidence", "sft_generate", "sft_probe"):
        for split in ("in_domain", "ood"):
            for pool in ("all", "no_middle"):
                for alpha in (0.2, 0.5, 0.8):
                    row = rows[(split, pool, alpha, method)]
                    assert keys <= set(row) and row["status"] == "ok" and row["errors"] == 0, (method, split, pool, alpha)
                    assert math.isclose(row["utility"], row["accuracy"] - alpha * row["cost"])
                    assert row["utility_ci95"][0] - 1e-9 <= row["utility"] <= row["utility_ci95"][1] + 1e-9  # float slack only
    assert all(rows[("in_domain", "all", a, m)]["status"] == "not configured" for a in (0.2, 0.5, 0.8) for m in ("sftrl_generate", "sftrl_probe"))

    def at(method: str, pool: str = "all", split: str = "in_domain", alpha: float = 0.5) -> dict:
        return rows[(split, pool, alpha, method)]

    assert at("oracle")["accuracy"] == 1.0 and at("oracle")["cost"] == pytest.approx((0.1 + 0.5 + 0.9) / 3)
    assert at("oracle", "no_middle")["share_by_tier"] == {"small": pytest.approx(1 / 3), "large": pytest.approx(2 / 3)}
    assert at("smallest")["accuracy"] == pytest.approx(1 / 3) and at("largest")["accuracy"] == 1.0
    # untrained scripted tiers never reject: the entry tier answers everything, through the mesh
    for policy in ("generate", "probe"):
        assert at(f"untrained_{policy}")["share_by_tier"]["small"] == 1.0 and at(f"untrained_{policy}")["hops"] == 1.0
        assert at(f"untrained_{policy}")["accuracy"] == pytest.approx(1 / 3)
    # the SFT arm's small tier always says "I don't know!": mid answers, small's rejection is charged in full cost
    sft = at("sft_generate")
    assert sft["share_by_tier"]["mid"] == 1.0 and sft["hops"] == 2.0 and sft["accuracy"] == pytest.approx(2 / 3)
    assert sft["cost"] == pytest.approx(0.5) and sft["full_cost"] > 0.5
    assert at("sft_probe", "no_middle")["share_by_tier"]["large"] == 1.0  # with mid removed, nobody was retrained
    assert at("sft_probe", "no_middle")["accuracy"] == 1.0
    # a router that learned the colours from the train split beats every fixed tier at alpha 0.5
    assert at("knn")["utility"] > max(at("smallest")["utility"], at("largest")["utility"])

    join = results["runtime_join"]
    assert join["method"] == "sft_probe" and join["tier"] == "mid"
    assert join["queries_after"] >= 12 and join["answered_after"] > 0
    assert results["meta"]["commit"] and results["meta"]["command"]
    assert results["headline"]["disrouter"]["sftrl_probe"]["alpha"] is None  # not configured: said so, not faked
    assert results["headline"]["line"] in (out / "results.md").read_text()
    # paired bootstrap: sft_probe against the best centralized router and largest, in every (split, pool, alpha)
    # (and untrained_confidence, the other configured arm of uncertainty.COMPARED; sftrl_probe is not configured)
    compared = {(c["method"], c["split"], c["pool"], c["alpha"], c["baseline"] == "largest"): c for c in results["comparisons"]}
    assert len(compared) == len(results["comparisons"]) == 2 * 2 * 2 * 3 * 2
    assert {c["method"] for c in results["comparisons"]} == {"sft_probe", "untrained_confidence"}
    for (method, split, pool, alpha, _), c in compared.items():
        mine, theirs = rows[(split, pool, alpha, method)], rows[(split, pool, alpha, c["baseline"])]
        assert c["n"] == mine["n"] == theirs["n"] and c["ci95"][0] - 1e-9 <= c["difference"] <= c["ci95"][1] + 1e-9 and 0.0 <= c["p_better"] <= 1.0
        assert math.isclose(c["difference"], mine["utility"] - theirs["utility"], abs_tol=1e-9)
    assert "## Is the difference real? (paired bootstrap, 2000 resamples)" in (out / "results.md").read_text()


@pytest.mark.slow
def test_smoke_preset_gives_every_method_numbers(tmp_path: Path) -> None:
    """`disrouter bench quality --preset smoke` (CI): the smoke family is built when missing, every method runs."""
    out = tmp_path / "smoke"
    assert cli(["bench", "quality", "--preset", "smoke", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in results["rows"] if r["status"] == "ok"}
    assert methods == {"oracle", "smallest", "largest", "random", "knn", "mlp", "cascade", "untrained_generate", "untrained_probe", "untrained_confidence"}
    for r in results["rows"]:
        if r["status"] == "ok":
            assert r["n"] > 0 and r["errors"] == 0 and all(isinstance(r[k], float) for k in ("accuracy", "cost", "utility", "full_utility"))
        else:
            assert r["status"] == "not configured" and r["method"].startswith(("sft_", "sftrl_"))
    assert {(r["split"], r["pool"]) for r in results["rows"]} == {(s, p) for s in ("in_domain", "ood") for p in ("all", "no_middle")}
    assert results["runtime_join"]["queries_after"] >= 8
    assert set(results["details"]["confidence_thresholds"]) == {"0.2", "0.5", "0.8"}  # chosen on val, not defaults
    assert all(r["utility_ci95"][0] - 1e-9 <= r["utility"] <= r["utility_ci95"][1] + 1e-9 for r in results["rows"] if r["status"] == "ok")
    # the smoke preset has no trained arm: only the untrained confidence arm is compared (both splits, pools, alphas)
    assert {c["method"] for c in results["comparisons"]} == {"untrained_confidence"} and len(results["comparisons"]) == 2 * 2 * 3 * 2


def test_the_confidence_arm_writes_calibrations_its_policy_owns(tmp_path: Path) -> None:
    tiers = [Tier(key="s", model=tmp_path, cost=0.1), Tier(key="l", model=tmp_path, cost=0.9)]
    files = confidence.write(tiers, {0.5: ([Thresholds(0.3, 0.9), Thresholds(1.0)], 0.6)}, tmp_path / "calibration")
    loaded = load_calibration(files["s"])
    assert loaded.policy == "confidence" and loaded.threshold(0.5) == 0.3 and loaded.skip_threshold(0.5) == 0.9


def test_a_bad_preset_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [{key: a, model: x, cost: 0.5}, {key: b, model: y, cost: 0.1}]\ntasks: {train: t.jsonl}\n")
    assert cli(["bench", "quality", "--preset", str(bad)]) != 0
    assert cli(["bench", "quality", "--preset", "nosuch"]) != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2 and "tasks" in lines[0] and "unknown preset 'nosuch'" in lines[1], lines
