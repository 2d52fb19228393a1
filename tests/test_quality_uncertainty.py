"""`disrouter bench quality`'s paired bootstrap on known per-query outcomes: intervals, paired differences,
the comparisons in results.json, and how results.md and the README show them."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest

from disrouter.bench.quality import readme, report, uncertainty
from disrouter.bench.quality.metrics import Outcome, summarise

TIERS = ["small", "large"]
COST = {"small": 0.1, "large": 0.9}


def _outcomes(correct: list[bool], tiers: list[str] | str, prefix: str = "q") -> list[Outcome]:
    """One outcome per query ``q0``, ``q1``, ... answered by ``tiers`` (one tier for all, or one per query)."""
    tiers = [tiers] * len(correct) if isinstance(tiers, str) else tiers
    return [Outcome(f"{prefix}{i}", ok, tier, COST[tier], COST[tier], 1.0, 1) for i, (ok, tier) in enumerate(zip(correct, tiers))]


def _random_outcomes(seed: int, n: int = 60, p: float = 0.6) -> list[Outcome]:
    rng = random.Random(seed)
    return _outcomes([rng.random() < p for _ in range(n)], [rng.choice(TIERS) for _ in range(n)])


def _row(method: str, outcomes: list[Outcome] | None, alpha: float = 0.5, split: str = "in_domain", pool: str = "all") -> dict[str, Any]:
    """A row as run.row makes it: the summary plus its transient outcomes."""
    figures = summarise(outcomes, alpha, TIERS) if outcomes is not None else {}
    return {"split": split, "pool": pool, "alpha": alpha, "method": method, "status": "ok" if outcomes else "not configured",
            **figures, "outcomes": outcomes}


def test_identical_methods_differ_by_exactly_zero() -> None:
    outcomes = _random_outcomes(1)
    found = uncertainty.compare(outcomes, list(reversed(outcomes)), 0.5)  # order does not matter: paired by query id
    assert found == {"n": 60, "difference": 0.0, "ci95": [0.0, 0.0], "p_better": 0.0}
    assert uncertainty.verdict(found["ci95"]) == "within noise"


def test_a_method_right_wherever_the_baseline_is_wrong_is_above_in_every_resample() -> None:
    truth = [i % 3 != 0 for i in range(30)]
    better = _outcomes([True] * 30, "large")
    worse = _outcomes(truth, "large")  # same cost, wrong on every third query
    found = uncertainty.compare(better, worse, 0.2)
    assert found["difference"] == pytest.approx(10 / 30)
    assert found["ci95"][0] > 0 and found["p_better"] == 1.0
    assert uncertainty.verdict(found["ci95"]) == "above"
    assert uncertainty.verdict(uncertainty.compare(worse, better, 0.2)["ci95"]) == "below"


def test_the_point_difference_is_the_difference_of_the_row_utilities() -> None:
    method, baseline = _random_outcomes(2, p=0.7), _random_outcomes(3, p=0.5)
    for alpha in (0.2, 0.5, 0.8):
        found = uncertainty.compare(method, baseline, alpha)
        rows = summarise(method, alpha, TIERS)["utility"], summarise(baseline, alpha, TIERS)["utility"]
        assert found["difference"] == pytest.approx(rows[0] - rows[1], abs=1e-12)
        assert found["ci95"][0] - 1e-9 <= found["difference"] <= found["ci95"][1] + 1e-9  # float slack only


def test_the_resamples_are_the_same_query_draws_for_both_methods() -> None:
    method, baseline = _random_outcomes(4), _random_outcomes(5)
    ids = sorted(o.query_id for o in method)
    picks = uncertainty.draws(len(ids))
    assert picks.shape == (uncertainty.RESAMPLES, len(ids))
    gaps = uncertainty.utilities(method, ids, 0.5, picks)[1] - uncertainty.utilities(baseline, ids, 0.5, picks)[1]
    found = uncertainty.compare(method, baseline, 0.5)
    assert found["ci95"] == [float(np.percentile(gaps, 2.5)), float(np.percentile(gaps, 97.5))]
    assert found["p_better"] == float(np.mean(gaps > 0))


def test_a_seeded_run_is_reproducible_and_the_seed_matters() -> None:
    method, baseline = _random_outcomes(6), _random_outcomes(7)
    assert uncertainty.compare(method, baseline, 0.5) == uncertainty.compare(method, baseline, 0.5)
    assert uncertainty.utility_ci95(method, 0.5) == uncertainty.utility_ci95(method, 0.5)
    assert uncertainty.utility_ci95(method, 0.5, seed=1) != uncertainty.utility_ci95(method, 0.5, seed=2)


def test_only_queries_both_methods_have_are_paired() -> None:
    method, baseline = _random_outcomes(8, n=40), _random_outcomes(9, n=40)[:25]
    found = uncertainty.compare(method, baseline, 0.5)
    assert found["n"] == 25
    expected = summarise(method[:25], 0.5, TIERS)["utility"] - summarise(baseline, 0.5, TIERS)["utility"]
    assert found["difference"] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="no queries"):
        uncertainty.compare(method, _outcomes([True], "large", prefix="other"), 0.5)


def _shuffled(right: int, seed: int, tier: str = "large", n: int = 60) -> list[Outcome]:
    """Exactly ``right`` of ``n`` queries correct (in a seeded order), every one answered by ``tier``."""
    correct = [i < right for i in range(n)]
    random.Random(seed).shuffle(correct)
    return _outcomes(correct, tier)


def _results_rows() -> list[dict[str, Any]]:
    """Two splits and two alphas: largest 48 / 60 right, knn 36, mlp 42, cascade 30 but on the small tier (so the best
    centralized router is mlp at alpha 0.2, cascade at 0.8), sftrl_probe mixed tiers; sft_probe not configured."""
    methods = [("largest", _shuffled(48, 0)), ("knn", _shuffled(36, 1)), ("mlp", _shuffled(42, 2)), ("cascade", _shuffled(30, 3, "small")),
               ("sftrl_probe", _random_outcomes(4, p=0.7))]
    rows = [_row(name, outcomes, alpha, split) for split in ("in_domain", "ood") for alpha in (0.2, 0.8) for name, outcomes in methods]
    return rows + [_row("sft_probe", None), _row("oracle", _outcomes([True] * 60, "small"))]


def test_annotate_gives_every_measured_row_an_interval_and_compares_against_the_best_centralized_and_largest() -> None:
    rows = _results_rows()
    comparisons = uncertainty.annotate(rows)

    assert all("outcomes" not in r for r in rows)
    for r in rows:
        if r["status"] == "ok":
            assert r["utility_ci95"][0] - 1e-9 <= r["utility"] <= r["utility_ci95"][1] + 1e-9  # float slack only
        else:
            assert "utility_ci95" not in r
    assert [(c["split"], c["alpha"], c["method"], c["baseline"]) for c in comparisons] == [
        (split, alpha, "sftrl_probe", baseline) for split in ("in_domain", "ood") for alpha, best in ((0.2, "mlp"), (0.8, "cascade"))
        for baseline in (best, "largest")]
    by_key = {(r["split"], r["alpha"], r["method"]): r for r in rows}
    for c in comparisons:
        assert set(c) == {"split", "pool", "alpha", "method", "baseline", "n", "difference", "ci95", "p_better"}
        assert c["n"] == 60 and c["pool"] == "all"
        mine, theirs = by_key[(c["split"], c["alpha"], c["method"])], by_key[(c["split"], c["alpha"], c["baseline"])]
        assert c["difference"] == pytest.approx(mine["utility"] - theirs["utility"], abs=1e-12)
    assert uncertainty.annotate(copy.deepcopy(_results_rows())) == comparisons  # seeded: the same again


def test_results_md_and_the_readme_show_the_comparisons() -> None:
    rows = _results_rows()
    comparisons = uncertainty.annotate(rows)
    payload = {"rows": rows, "comparisons": comparisons, "headline": None,
               "meta": {"preset": "test", "command": "disrouter bench quality", "commit": "abc", "dirty": False, "date": "today",
                        "machine": "here", "accelerator": None, "elapsed_s": 1.0}}
    page = report.markdown(payload)
    assert "## Is the difference real? (paired bootstrap, 2000 resamples)" in page
    first = comparisons[0]
    cell = f"[{first['ci95'][0]:+.3f}, {first['ci95'][1]:+.3f}]"
    assert f"| in_domain | all | 0.2 | sftrl_probe | mlp | 60 | {first['difference']:+.3f} | {cell} | {first['p_better']:.2f} |" in page
    assert "Not in this results.json" in report.markdown({**payload, "comparisons": None})

    table = readme.significance_table(comparisons)
    assert len([line for line in table if line.startswith("| in_domain") or line.startswith("| ood")]) == 4  # largest is not in it
    assert f"| in_domain | 0.2 | mlp | {first['difference']:+.3f} | {cell} | {first['p_better']:.2f} |" in "\n".join(table)
    assert readme.significance_table([c for c in comparisons if c["baseline"] == "largest"]) == []
