"""The real `disrouter-node` and `disrouter` commands: node processes that crash or drain, errors, ask/status."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import REGISTRY_TTL_S, REPLIES, Mesh, wait_for

BIN = Path(sys.executable).parent


async def run_cli(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run a console script without blocking the event loop the in-process nodes share."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / args[0]), *args[1:], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def start_node_process(mesh: Mesh, model: str, key: str, cost: float, node_id: str, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(BIN / "disrouter-node"), "--model", str(mesh.models[model]), "--key", key, "--cost", str(cost),
        "--nats", mesh.url, "--prefix", mesh.prefix, "--node-id", node_id, "--registry-ttl", str(REGISTRY_TTL_S),
        *extra, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )


async def test_a_sigkilled_node_is_routed_around_and_expires_from_the_registry(mesh: Mesh) -> None:
    await mesh.add("small", 0.1, "reject", entry=True)
    await mesh.add("large", 0.9, "tier-c", policy="always")
    proc = await start_node_process(mesh, "tier-b", "middle", 0.5, "middle-proc")
    await mesh.all_see({"middle-proc"}, timeout=60)
    client = await mesh.client()
    assert (await client.ask("q", timeout=30)).node_id == "middle-proc"

    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    during = await asyncio.gather(*(client.ask(f"q{i}", timeout=30) for i in range(10)))
    await mesh.all_see({"middle-proc"}, present=False, timeout=REGISTRY_TTL_S * 3)
    after = await asyncio.gather(*(client.ask(f"r{i}", timeout=30) for i in range(10)))

    assert all(a.model == "large" for a in during + after)
    assert all([h.model for h in a.path] == ["small", "large"] for a in during + after)


async def test_sigterm_finishes_in_flight_queries_then_deregisters(mesh: Mesh) -> None:
    await mesh.add("small", 0.1, "reject", entry=True)
    proc = await start_node_process(mesh, "babble", "talker", 0.9, "talker-proc", "--policy", "always")
    await mesh.all_see({"talker-proc"}, timeout=60)
    client = await mesh.client()
    started = mesh.nodes[0].stats.forwarded
    in_flight = asyncio.create_task(client.ask("long", timeout=60, max_tokens=600))
    await wait_for(lambda: mesh.nodes[0].stats.forwarded > started, what="the hand-off")

    proc.send_signal(signal.SIGTERM)
    answer = await in_flight
    code = await asyncio.wait_for(proc.wait(), 30)

    assert code == 0
    assert answer.node_id == "talker-proc" and answer.path[-1].completion_tokens == 600
    await mesh.all_see({"talker-proc"}, present=False, timeout=1.0)  # key deleted, no TTL wait
    _, stderr = await proc.communicate()
    events = [json.loads(line)["event"] for line in stderr.decode().splitlines() if line.startswith("{")]
    assert "draining" in events and events[-1] == "node_stopped"


async def test_ask_and_status_commands_talk_to_a_live_mesh(mesh: Mesh) -> None:
    node = await mesh.add("only", 0.1, "paris", entry=True, policy="always")

    code, out, err = await run_cli("disrouter", "ask", "--nats", mesh.url, "--prefix", mesh.prefix, "--json", "Capital of France?")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["text"] == REPLIES["paris"] and answer["node_id"] == node.card.node_id

    code, out, err = await run_cli("disrouter", "ask", "--nats", mesh.url, "--prefix", mesh.prefix, "Capital of France?")
    assert code == 0 and out.strip() == REPLIES["paris"]
    assert node.card.node_id in err

    code, out, err = await run_cli("disrouter", "status", "--nats", mesh.url, "--prefix", mesh.prefix, "--json")
    assert code == 0, err
    assert [card["node_id"] for card in json.loads(out)] == [node.card.node_id]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["disrouter-node", "--model", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["disrouter-node", "--cost", "1"], "required: --model"),
        (["disrouter-node", "--model", "/no/such/model", "--cost", "1"], "is not a known name"),
        (["disrouter-node", "--model", "smollm2-135m"], "give its cost with --cost"),
        (["disrouter-node", "--model", "smollm2-135m", "--cost", "1", "--nats", "nats://127.0.0.1:1"], "cannot reach NATS"),
        (["disrouter-node", "--model", "smollm2-135m", "--topology", "/no/such.yaml"], "does not exist"),
        (["disrouter", "ask", "--nats", "nats://127.0.0.1:1", "hi"], "cannot reach NATS"),
        (["disrouter", "ask", "--scenario", "cheap", "--nats", "nats://127.0.0.1:1", "hi"], "--scenario must be"),
        (["disrouter", "status", "--nats", "nats://127.0.0.1:1"], "cannot reach NATS"),
        (["disrouter", "frobnicate"], "invalid choice"),
    ],
)
async def test_every_command_fails_with_one_readable_line(args: list[str], expected: str) -> None:
    code, out, err = await run_cli(*args)

    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0] and "Traceback" not in err


async def test_a_taken_port_and_a_bad_topology_field_are_one_line_errors(nats_url: str, tmp_path: Path) -> None:
    port = nats_url.rsplit(":", 1)[1]
    code, _, err = await run_cli("disrouter", "nats", "--port", port)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "already in use" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - key: a\n    model: smollm2-135m\n    cost: cheap\n")
    code, _, err = await run_cli("disrouter-node", "--model", "a", "--topology", str(bad))
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "models.0.cost" in err


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
async def test_disrouter_nats_serves_jetstream_in_the_foreground(tmp_path: Path) -> None:
    from disrouter.local.nats_server import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "disrouter"), "nats", "--port", str(port), "--store-dir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output = b""
    while b"Server is ready" not in output:
        output += await asyncio.wait_for(proc.stdout.readline(), 15)
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    info = await nc.jetstream().account_info()
    await nc.close()
    proc.terminate()
    await proc.wait()
    assert info.limits is not None
