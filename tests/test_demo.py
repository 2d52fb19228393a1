"""`disrouter demo` as a new user runs it: real SmolLM2 nodes as subprocesses on embedded NATS."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path

import pytest
from test_cli import BIN, run_cli

from disrouter.local.nats_server import free_port

pytestmark = pytest.mark.slow


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


async def test_the_demo_answers_from_two_nodes_and_leaves_nothing_running() -> None:
    code, out, err = await run_cli("disrouter", "demo", timeout=900)

    assert code == 0, out + err
    assert "6/6 answered, by 2 node(s)" in out
    assert "smollm2-expert" in out and "reject" in out
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
            line = await asyncio.wait_for(demo.stdout.readline(), 600)
            assert line, output.decode()
            output += line

        code, out, err = await run_cli("disrouter", "ask", "--nats", url, "--json", "Which planet is known as the Red Planet?", timeout=120)
        assert code == 0, err
        assert "Mars" in json.loads(out)["text"]
        code, out, err = await run_cli("disrouter", "status", "--nats", url, "--json")
        assert code == 0, err
        assert sorted(card["model_key"] for card in json.loads(out)) == ["smollm2-expert", "smollm2-small"]
    finally:
        demo.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(demo.wait(), 60)
    assert code == 0
    assert processes_mentioning(url) == []
