"""The routing-quality headline (cost saving at >= 95% of Largest-only's accuracy) on known rows, and
the README's generated quality block against the committed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from disrouter.bench.quality import readme
from disrouter.bench.quality.headline import best_saving, headline
from disrouter.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "quality" / "results.json"


def _row(method: str, alpha: float, accuracy: float, cost: float, split: str = "in_domain", pool: str = "all") -> dict:
    """A results row as the benchmark writes it (figures the headline does not read are fixed)."""
    return {"split": split, "pool": pool, "alpha": alpha, "method": method, "status": "ok", "n": 10,
            "accuracy": accuracy, "cost": cost, "utility": accuracy - alpha * cost, "full_cost": cost,
            "full_utility": accuracy - alpha * cost, "latency_ms_p50": 1.0, "latency_ms_p95": 2.0, "hops": 1.0,
            "share_by_tier": {"l": 1.0}, "errors": 0}


def _rows() -> list[dict]:
    rows = [_row("largest", a, 0.80, 0.9) for a in (0.2, 0.5, 0.8)]
    rows += [_row("oracle", a, 0.85, 0.3) for a in (0.2, 0.5, 0.8)]
    # sftrl_probe: alpha 0.2 keeps 100% at cost 0.6, alpha 0.5 keeps 0.77/0.80 = 96.25% at cost 0.45 (the best), 0.8 keeps 75%.
    rows += [_row("sftrl_probe", 0.2, 0.80, 0.6), _row("sftrl_probe", 0.5, 0.77, 0.45), _row("sftrl_probe", 0.8, 0.60, 0.2)]
    # knn keeps 95% (0.76) only at alpha 0.2 (cost 0.72); mlp at alpha 0.2 (cost 0.54) and 0.5 (0.7: less saving).
    rows += [_row("knn", 0.2, 0.76, 0.72), _row("knn", 0.5, 0.70, 0.3), _row("knn", 0.8, 0.5, 0.2)]
    rows += [_row("mlp", 0.2, 0.78, 0.54), _row("mlp", 0.5, 0.79, 0.7), _row("mlp", 0.8, 0.5, 0.2)]
    rows += [_row("cascade", a, 0.5, 0.2) for a in (0.2, 0.5, 0.8)]
    # Other groups and statuses never count.
    rows += [_row("sftrl_probe", 0.8, 0.99, 0.1, pool="no_middle"), _row("knn", 0.8, 0.99, 0.1, split="ood"),
             {"split": "in_domain", "pool": "all", "alpha": 0.8, "method": "sftrl_generate", "status": "not configured"}]
    return rows


def test_the_headline_picks_the_largest_saving_that_keeps_95_percent_of_largest() -> None:
    result = headline(_rows())

    ours = result["disrouter"]["sftrl_probe"]
    assert ours["alpha"] == 0.5
    assert ours["cost_saving"] == pytest.approx(1 - 0.45 / 0.9)
    assert ours["accuracy_share"] == pytest.approx(0.77 / 0.80)
    best = result["best_centralized"]
    assert best["method"] == "mlp" and best["alpha"] == 0.2
    assert best["cost_saving"] == pytest.approx(1 - 0.54 / 0.9)
    assert result["disrouter"]["sftrl_generate"]["alpha"] is None
    assert result["line"] == (
        "DiSRouter SFT+RL, probe: 50% cheaper than Largest-only at 96% of its accuracy (alpha 0.5: accuracy 0.770 vs 0.800, "
        "cost 0.450 vs 0.900); best centralized router (MLP router (MiniLM)): 40% cheaper than Largest-only at 98% of its "
        "accuracy (alpha 0.2: accuracy 0.780 vs 0.800, cost 0.540 vs 0.900).")


def test_no_qualifying_alpha_is_said_plainly() -> None:
    rows = [r for r in _rows() if r["method"] not in ("mlp", "sftrl_probe")]
    rows = [r for r in rows if r["method"] != "knn" or r["alpha"] != 0.2]

    result = headline(rows)

    assert result["best_centralized"]["method"] is None
    assert best_saving(rows, "sftrl_probe")["alpha"] is None
    assert "DiSRouter SFT+RL, probe: no measured alpha keeps 95% of Largest-only's accuracy" in result["line"]
    assert "centralized routers (kNN router (MiniLM), MLP router (MiniLM), FrugalGPT-style cascade): no measured alpha" in result["line"]


def test_report_only_rewrites_the_headline_and_the_readme_without_running(tmp_path: Path) -> None:
    payload = json.loads(RESULTS.read_text())
    payload["rows"] = _rows() + [_row("largest", 0.5, 0.8, 0.9, split="ood")]
    payload.pop("headline", None)
    (tmp_path / "results.json").write_text(json.dumps(payload))
    page = tmp_path / "README.md"
    page.write_text(f"# Title\n\n{readme.BEGIN}\nold\n{readme.END}\n\n## Next\n")

    assert cli(["bench", "quality", "--out", str(tmp_path), "--report-only", "--readme", str(page)]) == 0

    written = json.loads((tmp_path / "results.json").read_text())
    assert written["headline"]["best_centralized"]["method"] == "mlp"
    assert written["headline"]["line"] in (tmp_path / "results.md").read_text()
    text = page.read_text()
    assert readme.section(text) == readme.render(written, str(tmp_path / "results.json"))
    assert text.startswith("# Title\n") and text.endswith("\n## Next\n")
    assert "| DiSRouter SFT+RL, probe | **0.680** | 0.545 | **0.440** |" in text  # knn's 0.550 is the best at 0.5
    assert "alpha 0.5: 0.545 vs 0.550 (knn), **below**" in text
    assert "78% of the oracle's utility at alpha 0.5 (0.545 / 0.700; target ≥ 80%: **missed**)" in text


def test_report_only_without_results_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["bench", "quality", "--out", str(tmp_path), "--report-only"]) != 0
    err = capsys.readouterr().err
    assert "--report-only needs the results of a run" in err and "Traceback" not in err


def test_the_readme_quality_block_is_the_committed_results_file() -> None:
    results = json.loads(RESULTS.read_text())
    assert results["headline"] == headline(results["rows"]), "results.json's headline is stale"
    assert readme.section((ROOT / "README.md").read_text()) == readme.render(results), (
        "README's quality block differs from bench/results/quality/results.json; regenerate it: "
        "disrouter bench quality --out bench/results/quality --report-only --readme README.md")
