"""The chaos soak's CI preset: `disrouter bench chaos --minutes 2` against real node processes on a
3-server NATS cluster, with node kills, pauses, drains and a NATS server kill under load.

Asserted (the issue's target): nothing lost, no final message twice on one reply subject and no
second Answer for one id (counted on the wire), every error a retryable code, every kind of fault
applied and recovered from, the files written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_chaos_ci_preset(tmp_path: Path) -> None:
    out = tmp_path / "chaos"
    run = subprocess.run([str(BIN / "disrouter"), "bench", "chaos", "--minutes", "2", "--out", str(out), "--log-level", "warning"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads((out / "chaos.json").read_text())
    print("\n[chaos] " + ", ".join(f"{k}={figures[k]}" for k in ("sent", "answered", "lost", "duplicated_per_send", "answered_again",
                                                               "errors_by_code", "latency_ms_p50", "latency_ms_p99", "latency_ms_p99_during_faults")))
    for key in ("sent", "answered", "lost", "duplicated", "errors_by_code", "faults", "latency_ms_p50", "latency_ms_p99"):
        assert key in figures
    assert figures["sent"] >= 0.9 * figures["rate_per_s"] * 120
    assert figures["lost"] == 0
    assert figures["duplicated_per_send"] == 0 and figures["answered_again"] == 0
    assert figures["non_retryable_errors"] == {}
    assert figures["answered"] + sum(figures["errors_by_code"].values()) == figures["sent"]
    applied = [f for f in figures["faults"] if not f["skipped"]]
    assert {f["kind"] for f in applied} == {"kill_node", "pause_node", "kill_nats", "drain_node"}
    assert all(f["recovered_s"] is not None for f in applied), figures["faults"]
    assert (out / "chaos.md").read_text().startswith("# Chaos soak") and (out / "chaos.png").stat().st_size > 10_000
