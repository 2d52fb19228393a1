"""Routing through real nodes on a real nats-server: cascades, joins, leaves, replicas, limits."""

from __future__ import annotations

import asyncio
import json
import time

import nats
from conftest import REPLIES, Mesh

from disrouter.mesh.protocol import Query, decode_reply, encode


def route(answer) -> list[tuple[str, str]]:  # noqa: ANN001
    return [(hop.model, hop.decision) for hop in answer.path]


async def test_three_tier_cascade_rejects_until_the_last_tier_answers(mesh: Mesh) -> None:
    await mesh.add("t1", 0.1, "reject", entry=True)
    await mesh.add("t2", 0.5, "reject")
    last = await mesh.add("t3", 0.9, "reject")  # its model "wants" to reject too
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()

    answer = await client.ask("Who was the mayor of Ulm in 1712?", timeout=30, max_tokens=12)

    assert route(answer) == [("t1", "reject"), ("t2", "reject"), ("t3", "forced")]
    assert answer.node_id == last.card.node_id and answer.model == "t3"
    assert answer.text and answer.text != REPLIES["reject"]
    assert all(hop.ms > 0 and hop.prompt_tokens > 0 for hop in answer.path)


async def test_a_node_joining_at_runtime_between_two_tiers_receives_forwarded_queries(mesh: Mesh) -> None:
    await mesh.add("small", 0.1, "reject", entry=True)
    await mesh.add("large", 0.9, "tier-c", policy="always")
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()
    assert route(await client.ask("q1", timeout=30)) == [("small", "reject"), ("large", "answer")]

    middle = await mesh.add("middle", 0.5, "tier-b")  # nobody restarts, nobody edits a file
    await mesh.all_see({middle.card.node_id})

    answer = await client.ask("q2", timeout=30)
    assert route(answer) == [("small", "reject"), ("middle", "answer")]
    assert answer.text == REPLIES["tier-b"]


async def test_after_a_clean_stop_peers_stop_forwarding_to_the_node(mesh: Mesh) -> None:
    await mesh.add("small", 0.1, "reject", entry=True)
    middle = await mesh.add("middle", 0.5, "tier-b")
    await mesh.add("large", 0.9, "tier-c", policy="always")
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()
    assert route(await client.ask("q", timeout=30))[-1] == ("middle", "answer")

    await mesh.remove(middle)
    await mesh.all_see({middle.card.node_id}, present=False, timeout=2)  # deleted key, not TTL

    answers = await asyncio.gather(*(client.ask(f"q{i}", timeout=30) for i in range(5)))
    assert all(route(a) == [("small", "reject"), ("large", "answer")] for a in answers)


async def test_two_replicas_of_one_model_share_the_load(mesh: Mesh) -> None:
    await mesh.add("small", 0.1, "reject", entry=True)
    first = await mesh.add("large", 0.9, "tier-c", policy="always")
    second = await mesh.add("large", 0.9, "tier-c", policy="always")
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()

    answers = await asyncio.gather(*(client.ask(f"q{i}", timeout=30) for i in range(30)))

    served = {a.node_id for a in answers}
    assert served == {first.card.node_id, second.card.node_id}
    assert first.stats.answered + second.stats.answered == 30


async def test_a_dead_peer_in_the_list_is_skipped_for_the_next_live_one(mesh: Mesh) -> None:
    await mesh.add("small", 0.1, "reject", entry=True, peers=["ghost", "large"])
    await mesh.add("large", 0.9, "tier-c", policy="always")
    client = await mesh.client()

    answer = await client.ask("q", timeout=30)

    assert route(answer) == [("small", "reject"), ("large", "answer")]


async def test_peers_that_point_at_each_other_cannot_loop(mesh: Mesh) -> None:
    await mesh.add("a", 0.1, "reject", entry=True, peers=["b"])
    await mesh.add("b", 0.2, "reject", peers=["a"])
    client = await mesh.client()

    answer = await client.ask("q", timeout=30, max_tokens=8)

    assert route(answer) == [("a", "reject"), ("b", "forced")]


async def test_max_hops_limits_the_path(mesh: Mesh) -> None:
    for key, cost in (("t1", 0.1), ("t2", 0.3), ("t3", 0.6), ("t4", 0.9)):
        await mesh.add(key, cost, "reject", entry=key == "t1")
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()

    answer = await client.ask("q", timeout=30, max_hops=2, max_tokens=8)

    assert route(answer) == [("t1", "reject"), ("t2", "forced")]


async def test_an_expired_deadline_gets_a_deadline_error(mesh: Mesh) -> None:
    await mesh.add("only", 0.1, "paris", entry=True, policy="always")
    nc = await nats.connect(mesh.url)
    query = Query(messages=[{"role": "user", "content": "q"}], deadline=time.time() - 1)

    reply = decode_reply((await nc.request(f"{mesh.prefix}.ingress", encode(query), timeout=10)).data)
    await nc.close()

    assert reply.error.code.value == "deadline_exceeded" and reply.id == query.id


async def test_a_deadline_that_passes_during_generation_stops_it_with_an_error(mesh: Mesh) -> None:
    await mesh.add("only", 0.1, "babble", entry=True, policy="always")
    nc = await nats.connect(mesh.url)
    query = Query(messages=[{"role": "user", "content": "talk forever"}], max_tokens=8000, deadline=time.time() + 1.0)

    started = time.monotonic()
    reply = decode_reply((await nc.request(f"{mesh.prefix}.ingress", encode(query), timeout=20)).data)
    await nc.close()

    assert reply.error.code.value == "deadline_exceeded"
    assert time.monotonic() - started < 5, "generation ran past the deadline"


async def test_a_raw_nats_request_with_minimal_json_gets_a_json_answer(mesh: Mesh) -> None:
    await mesh.add("only", 0.1, "paris", entry=True, policy="always")
    nc = await nats.connect(mesh.url)

    msg = await nc.request(f"{mesh.prefix}.ingress", b'{"messages": [{"role": "user", "content": "Capital of France?"}]}', timeout=30)
    await nc.close()

    answer = json.loads(msg.data)
    assert answer["text"] == REPLIES["paris"]
    assert answer["node_id"] == mesh.nodes[0].card.node_id
    assert answer["path"][0]["decision"] == "answer"


async def test_one_long_generation_does_not_block_a_short_one(mesh: Mesh) -> None:
    await mesh.add("babbler", 0.1, "babble", entry=True, policy="always")
    client = await mesh.client()

    long_query = asyncio.create_task(client.ask("long", timeout=60, max_tokens=1500))
    await asyncio.sleep(0.3)
    short = await client.ask("short", timeout=60, max_tokens=3)

    assert short.completion_tokens <= 3
    assert not long_query.done(), "the short query waited for the long generation"
    assert (await long_query).completion_tokens == 1500
