"""`disrouter bench perf`: the benchmark runs end to end and reports every figure, and the README's
performance table is the committed results file's.

The quick run checks that the measuring machinery works (real nodes, real NATS, a real relay
chain, real SmolLM2); the figures themselves come from the full run whose table is in the README.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run_cli
from test_demo import processes_mentioning

from disrouter.bench import readme_table

ROOT = Path(__file__).resolve().parent.parent
PERF_JSON = ROOT / "bench" / "results" / "perf.json"
FIGURES = [
    "hop_overhead_ratio", "hop_overhead_ratio_vs_round_trips", "hop_overhead_ms_p50", "hop_overhead_ms_p99",
    "mesh_latency_ms_p50", "relay_chain_ms_p50", "round_trips_ms_p50", "leg_payload_bytes",
    "throughput_ratio", "mesh_qps", "raw_qps", "batching_speedup", "batch_completion_tokens",
    "reject_cost_ratio", "reject_cost_ratio_served", "reject_cost_samples", "rejected_questions_ms", "generate_answer_ms", "generate_reject_ms",
    "probe_answer_ms", "probe_reject_ms", "probe_reject_ms_no_cache", "vllm_vs_transformers", "node_rss_mb", "rss_growth_mb",
]


@pytest.mark.slow
async def test_quick_perf_run_prints_the_table_and_writes_every_figure(tmp_path: Path) -> None:
    out_file, readme = tmp_path / "perf.json", tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## Performance\n\n{readme_table.BEGIN}\nold table\n{readme_table.END}\n\n## Next\n")

    code, out, err = await run_cli("disrouter", "bench", "perf", "--quick", "--json", str(out_file), "--readme", str(readme), timeout=900)

    assert code == 0, (out + err)[-3000:]
    figures = json.loads(out_file.read_text())
    assert set(FIGURES) <= set(figures)
    assert all(key in out for key in ("hop_overhead_ratio", "relay_chain_ms_p50", "throughput_ratio", "reject_cost_ratio"))
    run = figures["run"]
    assert run["command"] == f"disrouter bench perf --quick --json {out_file} --readme {readme}"
    assert len(run["commit"]) == 40 and run["date"].endswith("Z") and run["machine"]["cpus"] > 0 and len(run["load_average_start"]) == 3
    # real measurements: the mesh pays at least what a raw relay of the same messages pays
    assert figures["mesh_latency_ms_p50"] >= figures["relay_chain_ms_p50"] > 0 and figures["round_trips_ms_p50"] > 0
    assert len(figures["leg_payload_bytes"]) == 4 and figures["leg_payload_bytes"][1] > figures["leg_payload_bytes"][0]  # hand-offs carry the path
    assert figures["throughput_ratio"] == pytest.approx(figures["mesh_qps"] / figures["raw_qps"], abs=1e-3)
    one, many = figures["batch_completion_tokens"]
    assert one == many > 0  # both arms generated the same tokens
    assert figures["batching_speedup"] > 0
    assert figures["reject_cost_questions"] == 0 or figures["reject_cost_ratio"] > figures["reject_cost_ratio_served"] > 0
    assert figures["probe_reject_ms"] < figures["probe_reject_ms_no_cache"]  # the prefix cache saves prefill work
    assert 100 < figures["node_rss_mb"] < 5000
    assert figures["vllm_vs_transformers"] is None and "disabled" in figures["vllm_note"]
    assert figures["targets"]["hop_overhead_ratio"]["target"] == "<= 1.5"
    assert readme_table.section(readme.read_text()) == readme_table.render(figures, str(out_file))
    assert readme.read_text().startswith("# Title\n") and readme.read_text().endswith("\n## Next\n")
    for helper in ("bench-tier", "disrouter.bench.echo", "disrouter.bench.relay"):
        assert processes_mentioning(helper) == [], helper


def test_the_readme_performance_table_is_the_committed_results_file() -> None:
    results = json.loads(PERF_JSON.read_text())

    assert readme_table.section((ROOT / "README.md").read_text()) == readme_table.render(results), (
        "README.md's performance table differs from bench/results/perf.json: "
        "python -m disrouter.bench.readme_table bench/results/perf.json README.md"
    )


def test_the_committed_results_name_their_full_run() -> None:
    results = json.loads(PERF_JSON.read_text())

    run = results["run"]
    assert run["command"].startswith("disrouter bench perf") and "--quick" not in run["command"]
    assert len(run["commit"]) == 40 and run["date"] and run["machine"]["cpus"]
    assert results["config"]["latency_samples"] >= 500 and results["config"]["mesh_queries"] >= 10_000
    assert set(FIGURES) <= set(results)
