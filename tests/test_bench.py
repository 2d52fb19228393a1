"""`disrouter bench perf --quick`: the benchmark runs end to end and reports every figure.

It checks that the measuring machinery works (real nodes, real NATS, real SmolLM2); the figures
themselves come from the full run whose table is in the README.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run_cli
from test_demo import processes_mentioning

pytestmark = pytest.mark.slow

FIGURES = [
    "hop_overhead_ratio", "hop_overhead_ms_p50", "hop_overhead_ms_p99", "mesh_qps", "raw_qps",
    "batching_speedup", "reject_cost_ratio", "vllm_vs_transformers", "node_rss_mb", "rss_growth_mb",
]


async def test_quick_perf_run_prints_the_table_and_writes_every_figure(tmp_path: Path) -> None:
    out_file = tmp_path / "perf.json"

    code, out, err = await run_cli("disrouter", "bench", "perf", "--quick", "--json", str(out_file), timeout=600)

    assert code == 0, (out + err)[-3000:]
    figures = json.loads(out_file.read_text())
    assert set(FIGURES) <= set(figures)
    assert all(key in out for key in FIGURES)
    # latencies and rates are real measurements: positive, and the mesh pays at least raw NATS
    assert figures["mesh_latency_ms_p50"] >= figures["raw_chain_ms_p50"] > 0
    assert figures["mesh_qps"] > 0 and figures["raw_qps"] > 0
    assert figures["batching_speedup"] > 0 and 0 < figures["reject_cost_ratio"]
    assert 100 < figures["node_rss_mb"] < 5000
    assert figures["vllm_vs_transformers"] is None and "disabled" in figures["vllm_note"]
    assert figures["targets"]["mesh_qps"]["target"] == ">= 5000"
    assert processes_mentioning("bench-tier") == [] and processes_mentioning("disrouter.bench.echo") == []
