"""`disrouter status --watch` against a live mesh: nodes by tier with their counts, a node joining mid-watch."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from instant_nodes import InstantMesh

DISROUTER = str(Path(sys.executable).parent / "disrouter")


@pytest.fixture
async def instant(nats_url: str) -> AsyncIterator[InstantMesh]:
    harness = InstantMesh(nats_url, registry_ttl_s=1.0)  # cards heartbeat every 0.25 s
    yield harness
    await harness.close()


async def watch(nats_url: str, prefix: str, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        DISROUTER, "status", "--watch", "--nats", nats_url, "--prefix", prefix, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )


async def watching(proc: asyncio.subprocess.Process) -> None:
    """Wait for the line the watch writes to stderr once it has read the registry."""
    line = await asyncio.wait_for(proc.stderr.readline(), 30)
    assert line.startswith(b"disrouter status: watching"), line


def row(output: str, node_id: str) -> list[str]:
    """The cells of the table row naming ``node_id``."""
    line = next(line for line in output.splitlines() if node_id in line)
    return [cell.strip() for cell in re.split(r"[│┃]", line) if cell.strip()]


async def test_watch_shows_tiers_counts_and_a_node_joining(nats_url: str, instant: InstantMesh) -> None:
    small = await instant.add("small", 0.1, entry=True)
    large = await instant.add("large", 0.9, policy="always")
    await instant.all_see({small.card.node_id, large.card.node_id})
    client = await instant.client()
    for question in ("one", "two", "#reject three"):
        await client.ask(question, timeout=20)

    proc = await watch(nats_url, instant.prefix, "--interval", "0.5", "--iterations", "6")
    await watching(proc)
    await asyncio.sleep(1.0)  # a couple of refreshes in
    middle = await instant.add("middle", 0.5, node_id="middle-joined")
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    output = out.decode()

    assert proc.returncode == 0, err.decode()
    assert "3 live node(s)" in output
    # tier, node, entry, cost, load, answer, forced, reject, overflow, errors, recent ms, up (empty cells dropped)
    small_row, large_row = row(output, small.card.node_id), row(output, large.card.node_id)
    assert small_row[:3] == ["small", small.card.node_id, "yes"] and small_row[4:10] == ["0/64", "2", "0", "1", "0", "0"]
    assert large_row[:2] == ["large", large.card.node_id] and large_row[3:9] == ["0/64", "1", "0", "0", "0", "0"]
    assert float(small_row[10]) == pytest.approx(small.card.recent_ms, abs=0.05) and float(large_row[9]) >= 0
    assert row(output, "middle-joined")[:2] == ["middle", "middle-joined"]
    lines = output.splitlines()
    order = [next(i for i, line in enumerate(lines) if node in line) for node in (small.card.node_id, "middle-joined", large.card.node_id)]
    assert order == sorted(order), "tiers cheapest first"
    assert re.search(r"joined middle-joined \(middle, cost 0\.5\)", output)
    assert "watching: 2 node(s) live" in output
    assert not re.search(rf"joined {small.card.node_id}", output), "nodes there at the start are not joins"
    assert middle.card.node_id == "middle-joined"


async def test_watch_shows_a_node_leaving(nats_url: str, instant: InstantMesh) -> None:
    stays = await instant.add("stays", 0.1, entry=True)
    leaves = await instant.add("leaves", 0.9, node_id="leaves-soon")
    await instant.all_see({stays.card.node_id, leaves.card.node_id})

    proc = await watch(nats_url, instant.prefix, "--interval", "0.5", "--iterations", "6")
    await watching(proc)
    await asyncio.sleep(1.0)
    await instant.remove(leaves)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    output = out.decode()

    assert proc.returncode == 0, err.decode()
    assert "1 live node(s)" in output and stays.card.node_id in output
    assert re.search(r"left\s+leaves-soon \(leaves\)", output) and "watching: 2 node(s) live" in output


async def test_watch_with_json_is_one_line() -> None:
    proc = await asyncio.create_subprocess_exec(DISROUTER, "status", "--watch", "--json", stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode != 0 and err.decode().strip().count("\n") == 0 and "--watch" in err.decode()


def test_a_card_from_an_older_node_reads_and_shows_zeros() -> None:
    """Cards without the live stats (nodes from before them) still parse, and the view shows zeros."""
    from rich.console import Console

    from disrouter.cli.watch import nodes_table
    from disrouter.mesh.membership import NodeCard

    old = NodeCard.model_validate_json('{"node_id": "old-1", "model_key": "old", "model": "m", "cost": 0.3, "load": 2}')
    console = Console(width=200, record=True)
    console.print(nodes_table([old], "p"))
    assert row(console.export_text(), "old-1") == ["old", "old-1", "0.3", "2", "0", "0", "0", "0", "0", "-", "0s"]
    newer = NodeCard.model_validate({**old.model_dump(), "a_field_from_a_later_version": 1})
    assert newer == old
