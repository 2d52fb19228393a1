"""`disrouter demo` as a new user runs it: the self-aware model family (and SmolLM2, by topology) as
real node processes on embedded NATS, graded answers, and the utility against Largest-only."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path

import pytest
from test_cli import BIN, run_cli

from disrouter.local.demo_questions import GENERAL, family_questions
from disrouter.local.nats_server import free_port
from disrouter.topologies import topology_path

pytestmark = pytest.mark.slow
SUMMARY = re.compile(r"^(mesh \(self-routed\)|largest only \((\S+), the same questions\)): (\d+)/(\d+) right, mean cost ([\d.]+), utility (-?[\d.]+) \(alpha 0\.5\)$", re.M)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def summaries(out: str) -> dict[str, tuple[str | None, int, int, float, float]]:
    """The two summary lines: who -> (largest tier, right, n, mean cost, utility); checks utility = accuracy - 0.5 * cost."""
    found = {}
    for who, tier, right, n, cost, utility in SUMMARY.findall(out):
        assert float(utility) == pytest.approx(int(right) / int(n) - 0.5 * float(cost), abs=1e-3), who
        found["largest" if tier else "mesh"] = (tier or None, int(right), int(n), float(cost), float(utility))
    return found


async def test_the_demo_routes_the_familys_test_questions_and_compares_with_largest_only() -> None:
    code, out, err = await run_cli("disrouter", "demo", timeout=300)

    assert code == 0, out + err
    assert "10 questions from the model family's sa-test split (scenario: balance)" in out
    assert re.search(r"3 nodes live after [\d.]+ s: family-s-1, family-m-1, family-l-1", out)
    for task in family_questions():
        assert task.question in out
    paths = re.findall(r"family-s \((?:reject|answer)\)", out)
    assert len(paths) == 10  # every question enters at the cheapest tier
    found = summaries(out)
    tier, _, n, cost, _ = found["largest"]
    assert (tier, n) == ("family-l", 10) and cost == pytest.approx(0.9)  # every answer came from tier l
    assert found["mesh"][2] == 10 and 0.13 <= found["mesh"][3] <= 0.9
    assert re.search(r"utility = accuracy - alpha \* cost: the mesh -?[\d.]+ vs largest only -?[\d.]+, (above|not above)", out)
    url = re.search(r"nats://127\.0\.0\.1:\d+", out).group(0)
    await asyncio.sleep(0.5)
    assert processes_mentioning(url) == []


async def test_the_kept_demo_serves_ask_and_status_until_sigterm() -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    demo = await asyncio.create_subprocess_exec(
        str(BIN / "disrouter"), "demo", "--keep", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output = b""
        while b"The mesh is running" not in output:
            line = await asyncio.wait_for(demo.stdout.readline(), 300)
            assert line, output.decode()
            output += line

        code, out, err = await run_cli("disrouter", "ask", "--nats", url, "--json", family_questions()[0].question, timeout=120)
        assert code == 0, err
        answer = json.loads(out)
        assert answer["model"] in {"family-s", "family-m", "family-l"} and answer["path"][0]["model"] == "family-s"
        code, out, err = await run_cli("disrouter", "status", "--nats", url, "--json")
        assert code == 0, err
        assert sorted(card["model_key"] for card in json.loads(out)) == ["family-l", "family-m", "family-s"]
    finally:
        demo.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(demo.wait(), 60)
    assert code == 0
    assert processes_mentioning(url) == []


async def test_the_smollm2_demo_stays_reachable_by_topology() -> None:
    code, out, err = await run_cli("disrouter", "demo", "--topology", str(topology_path("smollm2")), timeout=900)

    assert code == 0, out + err
    assert f"{len(GENERAL)} questions from general knowledge" in out
    assert "smollm2-small (" in out
    found = summaries(out)
    assert found["largest"][0] == "smollm2-expert" and found["largest"][3] == pytest.approx(0.9)
    assert found["mesh"][2] == len(GENERAL)
