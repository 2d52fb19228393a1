"""Malformed queries at the ingress get Error replies; the node keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json

import msgpack
import nats
from conftest import REPLIES, Mesh

USER = [{"role": "user", "content": "hi"}]

CASES: list[tuple[str, bytes, str]] = [
    ("not msgpack", b"\xc1\xff\x00garbage", "bad_request"),
    ("broken json", b'{"messages": [', "bad_request"),
    ("not a map", msgpack.packb([1, 2, 3]), "bad_request"),
    ("deep msgpack nesting", b"\x91" * 200_000 + b"\x00", "bad_request"),
    ("deep json nesting", b'{"a":' + b"[" * 200_000, "bad_request"),
    ("invalid utf-8 in json", b'{"messages": "\xff\xfe"}', "bad_request"),
    ("messages is a string", msgpack.packb({"messages": "hi"}), "invalid_query"),
    ("unknown version", msgpack.packb({"v": 99, "messages": USER}), "unsupported_version"),
    ("empty messages", msgpack.packb({"messages": []}), "invalid_query"),
    ("unknown role", msgpack.packb({"messages": [{"role": "wizard", "content": "x"}]}), "invalid_query"),
    ("absurd max_tokens", msgpack.packb({"messages": USER, "max_tokens": 10**12}), "invalid_query"),
    ("negative max_hops", msgpack.packb({"messages": USER, "max_hops": -3}), "invalid_query"),
    ("alpha out of range", msgpack.packb({"messages": USER, "scenario": 7}), "invalid_query"),
    ("unknown scenario", msgpack.packb({"messages": USER, "scenario": "cheap"}), "invalid_query"),
    ("oversized prompt", msgpack.packb({"messages": [{"role": "user", "content": "x" * 200_000}]}), "too_large"),
    ("prompt longer than the context", msgpack.packb({"messages": [{"role": "user", "content": "word " * 20_000}]}), "too_large"),
]


def _decode(data: bytes) -> dict:
    return json.loads(data) if data[:1] == b"{" else msgpack.unpackb(data)


async def test_every_malformed_query_gets_an_error_while_other_queries_complete(mesh: Mesh) -> None:
    node = await mesh.add("only", 0.1, "babble", entry=True, policy="always")
    client = await mesh.client()
    nc = await nats.connect(mesh.url)
    in_flight = asyncio.create_task(client.ask("a long one", timeout=60, max_tokens=400))

    replies = await asyncio.gather(*(nc.request(f"{mesh.prefix}.ingress", payload, timeout=30) for _, payload, _ in CASES))

    for (name, payload, code), reply in zip(CASES, replies):
        error = _decode(reply.data)
        assert error.get("error", {}).get("code") == code, f"{name}: {error}"
        assert error["error"]["message"], name
        assert (reply.data[:1] == b"{") == (payload.lstrip()[:1] == b"{"), f"{name}: reply not in the request's format"
    assert (await in_flight).completion_tokens == 400
    after = await client.ask("still there?", timeout=30, max_tokens=5)
    assert after.node_id == node.card.node_id
    await nc.close()


async def test_an_error_names_the_query_id_when_it_can_be_read(mesh: Mesh) -> None:
    await mesh.add("only", 0.1, "paris", entry=True, policy="always")
    nc = await nats.connect(mesh.url)

    reply = await nc.request(f"{mesh.prefix}.ingress", json.dumps({"id": "q-42", "messages": []}).encode(), timeout=10)
    await nc.close()

    assert json.loads(reply.data)["id"] == "q-42"


async def test_forged_routing_fields_from_a_client_are_ignored(mesh: Mesh) -> None:
    await mesh.add("small", 0.1, "reject", entry=True)
    await mesh.add("large", 0.9, "paris", policy="always")
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    nc = await nats.connect(mesh.url)
    stolen = await nc.subscribe("victim.inbox")
    forged = {
        "messages": USER,
        "reply_to": "victim.inbox",  # would make the node answer someone else
        "path": [{"node_id": "x", "model": "large", "decision": "reject", "ms": 1}],  # would block the tail
    }

    reply = msgpack.unpackb((await nc.request(f"{mesh.prefix}.ingress", msgpack.packb(forged), timeout=30)).data)

    assert reply["text"] == REPLIES["paris"]
    assert [hop["model"] for hop in reply["path"]] == ["small", "large"]
    await asyncio.sleep(0.2)
    assert stolen.pending_msgs == 0
    await nc.close()
