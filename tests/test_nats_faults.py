"""NATS faults: a nats-server restart, and a server of a 3-server cluster killed under load.

Nodes reconnect and re-register (the registry bucket and its watchers come back even when the
server lost them), queries sent after the restart are answered, a query in flight across it is
answered (NATS buffers the reply, or the client retries with the same id), and clients and nodes
fail over to the rest of the cluster with no query lost. Figures print with ``-s``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for
from instant_nodes import InstantMesh, start_cli_node, stop_process
from disrouter.bench.wire import WireCount

from disrouter.local.nats_server import NatsCluster, NatsServer
from disrouter.mesh.connection import connect
from disrouter.mesh.membership import Membership, NodeCard, list_cards, open_registry
from disrouter.mesh.subjects import Subjects

BIN = Path(sys.executable).parent
DOWNTIME_S = 2.5
CLIENT_INBOX = "_INBOX.faults"  # the test client's reply subjects, tapped to count replies on the wire


def report(scenario: str, **figures: object) -> None:
    print(f"\n[reliability] {scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


async def status_json(urls: str, prefix: str, within: float = 0.0) -> list[dict]:
    """`disrouter status --json`, retried for ``within`` seconds (a cluster electing leaders)."""
    deadline = time.monotonic() + within
    while True:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "disrouter"), "status", "--nats", urls, "--prefix", prefix, "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        if proc.returncode == 0 or time.monotonic() > deadline:
            assert proc.returncode == 0, err.decode()
            return json.loads(out)
        await asyncio.sleep(0.5)


async def test_the_registry_comes_back_after_a_restart_that_lost_it(tmp_path: Path) -> None:
    """The registry bucket is in memory: a restarted server has lost it. A node recreates it,
    re-registers, and its watcher sees the mesh again (within about one heartbeat)."""
    server = NatsServer(store_dir=tmp_path / "js").start()
    nc = await connect(server.url)
    subjects = Subjects("heal")
    membership = Membership(await open_registry(nc, subjects, ttl=2.0), ttl=2.0)
    try:
        await membership.start(NodeCard(node_id="a", model_key="a", model="a", cost=0.1))
        await wait_for(lambda: [c.node_id for c in membership.live()] == ["a"], 10, "the watcher to see its own card")

        await asyncio.to_thread(server.restart, 0.5, kill=True)
        restarted = time.monotonic()
        back = await registry_lists(server.url, "heal", {"a"}) - restarted  # the node recreated the bucket
        await asyncio.sleep(2.5)  # longer than the TTL: only a card heartbeated since the restart is live
        assert [c.node_id for c in membership.live()] == ["a"]
        other = await connect(server.url)
        kv = await open_registry(other, subjects, ttl=2.0)
        peer = Membership(kv, ttl=2.0)
        await peer.start(NodeCard(node_id="b", model_key="b", model="b", cost=0.2))
        seen = await wait_for(lambda: {"a", "b"} <= {c.node_id for c in membership.live()}, 10, "the watcher to see a new card")

        assert [c.node_id for c in await list_cards(kv)] == ["a", "b"]
        report("registry-heal", seconds_to_card_back_in_registry=round(back, 2), seconds_to_see_a_new_peer=round(seen, 2))
        await peer.stop()
        await other.close()
    finally:
        await membership.stop()
        await nc.close()
        server.stop()


async def test_a_watcher_that_died_with_the_server_is_restarted(tmp_path: Path) -> None:
    """Someone else recreates the lost bucket first, so this node's heartbeats succeed again, but its
    watcher's consumer died with the server: the node notices its own heartbeat never came back
    through the watcher and restarts it, so it sees peers that join afterwards."""
    server = NatsServer(store_dir=tmp_path / "js").start()
    nc = await connect(server.url)
    subjects = Subjects("rewatch")
    membership = Membership(await open_registry(nc, subjects, ttl=8.0), ttl=8.0)  # heartbeat every 2 s
    other = None
    try:
        await membership.start(NodeCard(node_id="a", model_key="a", model="a", cost=0.1))
        await asyncio.to_thread(server.restart, 0.2, kill=True)
        other = await connect(server.url)
        kv = await open_registry(other, subjects, ttl=8.0)  # recreated before the node's next heartbeat
        await wait_for(lambda: nc.is_connected, 10, "the node to reconnect")
        peer = Membership(kv, ttl=8.0)
        await peer.start(NodeCard(node_id="b", model_key="b", model="b", cost=0.2))
        seen = await wait_for(lambda: "b" in {c.node_id for c in membership.live()}, 6, "the node to see a peer that joined after the restart")
        report("watcher-heal", seconds_to_see_a_new_peer=round(seen, 2), heartbeat_s=membership.heartbeat_interval)
        await peer.stop()
    finally:
        await membership.stop()
        await nc.close()
        if other is not None:
            await other.close()
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_nodes_and_queries_survive_a_nats_server_restart(tmp_path: Path, kill: bool) -> None:
    server = NatsServer(store_dir=tmp_path / "js").start()
    mesh = InstantMesh(server.url)
    proc = None
    try:
        small = await mesh.add("small", 0.1, entry=True)
        large = await mesh.add("large", 0.9, policy="always")
        # A `disrouter-node` process too: a replica of the large tier.
        proc = await start_cli_node(server.url, mesh.prefix, "large", 0.9, "large-cli", "--policy", "always")
        await wait_for(mesh.all_see_each_other, 10, "nodes to see each other")
        await wait_for(lambda: "large-cli" in {c.node_id for c in small.membership.live()}, 30, "the node process to join")
        client = await mesh.client(inbox_prefix=CLIENT_INBOX)
        wire = WireCount()
        await wire.tap(client.nc, f"{CLIENT_INBOX}.>")
        before = await client.ask("#reject before", timeout=5)
        assert [hop.model for hop in before.path] == ["small", "large"]

        # Down for longer than the client's per-attempt timeout: the reply to the first attempt is
        # buffered by the node's NATS client, or lost and the client re-sends the same id; either
        # way exactly one Answer comes back (in_flight_attempts reports which happened).
        across = asyncio.create_task(client.ask("#slow across", timeout=10, retries=4, query_id="across-1"))
        await wait_for(lambda: "#slow across" in small.backend.prompts, 5, "the slow query to reach the node")
        down = time.monotonic()
        server.halt(kill=kill)
        during = [asyncio.create_task(client.ask(f"during {i}", timeout=16, retries=3)) for i in range(10)]
        await asyncio.sleep(DOWNTIME_S)
        await asyncio.to_thread(server.start)
        up = time.monotonic()
        registered = asyncio.create_task(registry_lists(server.url, mesh.prefix, {small.card.node_id, large.card.node_id, "large-cli"}))

        async def forwarded() -> bool:
            try:
                answer = await client.ask("#reject probe", timeout=1, retries=0)
            except Exception:
                return False
            return answer.model == "large"

        while not await forwarded():
            assert time.monotonic() - up < 30, "no forwarded query reached tier 2 within 30 s of the restart"
            await asyncio.sleep(0.1)
        recovered = time.monotonic() - up
        answer_across = await across
        assert answer_across.text == "ok" and answer_across.id == "across-1"
        assert small.backend.prompts.count("#slow across") >= 1
        answered_during = await asyncio.gather(*during)
        after = await asyncio.gather(*(client.ask(f"{'#reject ' if i % 2 else ''}after {i}", timeout=15, retries=2) for i in range(50)))
        listed = {card["node_id"] for card in await status_json(server.url, mesh.prefix)}
        reregistered = await registered

        assert len({a.id for a in after}) == 50  # one Answer per query
        await asyncio.sleep(0.5)  # late replies, if any, arrive now
        assert wire.duplicated_per_send == 0, f"a send got more than one final reply: {wire.finals.most_common(3)}"
        assert {a.id for a in [*after, *answered_during, answer_across]} <= set(wire.answers)  # seen on the wire
        assert all(a.model == ("large" if i % 2 else "small") for i, a in enumerate(after))
        assert {a.node_id for a in after if a.model == "large"} <= {large.card.node_id, "large-cli"}
        assert len(answered_during) == 10
        assert listed == {small.card.node_id, large.card.node_id, "large-cli"}
        assert proc.returncode is None  # the node process rode out the restart
        # Watchers work again: after a TTL only cards heartbeated since the restart are live, and a
        # node that joins now is seen by everyone.
        await asyncio.sleep(mesh.registry_ttl_s + 0.5)
        assert mesh.all_see_each_other()
        await mesh.add("late", 0.5)
        joined = await wait_for(mesh.all_see_each_other, 3, "every node to see a node that joined after the restart")
        report(
            f"nats-restart-{'sigkill' if kill else 'sigterm'}",
            downtime_s=round(up - down, 2),
            seconds_to_forwarded_answer_after_restart=round(recovered, 2),
            seconds_to_all_reregistered=round(reregistered - up, 2),
            in_flight_attempts=small.backend.prompts.count("#slow across"),
            sent_during_downtime=10, answered_during=len(answered_during),
            sent_after=50, answered_after=len(after), duplicated_on_wire=wire.duplicated, answered_again_after_a_resend=wire.answered_again,
            resends=client.resends, seconds_until_all_see_a_new_node=round(joined, 2),
        )
    finally:
        if proc is not None:
            await stop_process(proc)
        await mesh.close()
        server.stop()


async def registry_lists(url: str, prefix: str, node_ids: set[str], timeout: float = 30.0) -> float:
    """Poll the registry bucket (without creating it) until it lists ``node_ids``; when it did."""
    nc = await connect(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                kv = await nc.jetstream(timeout=1).key_value(Subjects(prefix).registry_bucket)
                if node_ids <= {card.node_id for card in await list_cards(kv)}:
                    return time.monotonic()
            except Exception:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"the registry did not list {sorted(node_ids)} within {timeout}s")
    finally:
        await nc.close()


async def jetstream_ready(urls: str, timeout: float = 45.0) -> None:
    """Wait until the cluster's JetStream has a meta leader and can place a 3-replica bucket."""
    nc = await connect(urls)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                kv = await open_registry(nc, Subjects("ready"), ttl=2.0)
                if (await kv.status()).stream_info.config.num_replicas == 3:
                    await nc.jetstream().delete_key_value("disrouter-nodes-ready")
                    return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"JetStream cluster not ready: {exc}") from None
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


@pytest.mark.slow
async def test_a_killed_cluster_server_loses_no_query() -> None:
    total, kill_at, in_flight = 200, 60, 20
    with NatsCluster(3) as cluster:
        await jetstream_ready(cluster.urls)
        mesh = InstantMesh(cluster.urls, registry_ttl_s=10.0)  # the default TTL: it rides out a leader election
        proc = None
        try:
            # Everyone connects to the first server of the list, which is then killed.
            small = await mesh.add("small", 0.1, entry=True, dont_randomize=True)
            small2 = await mesh.add("small", 0.1, entry=True, dont_randomize=True)
            large = await mesh.add("large", 0.9, policy="always", dont_randomize=True)
            # A `disrouter-node` process given the whole server list (it picks one at random).
            proc = await start_cli_node(cluster.urls, mesh.prefix, "large", 0.9, "large-cli", "--policy", "always", registry_ttl_s=10.0)
            await wait_for(mesh.all_see_each_other, 15, "nodes to see each other")
            await wait_for(lambda: "large-cli" in {c.node_id for c in small.membership.live()}, 30, "the node process to join")
            client = await mesh.client(dont_randomize=True, inbox_prefix=CLIENT_INBOX)
            wire = WireCount()  # every reply reaching the client's connection, whichever server it is on
            await wire.tap(client.nc, f"{CLIENT_INBOX}.>")
            victim = cluster.servers[0]
            assert all(n.nc.connected_url.port == victim.port for n in mesh.nodes) and client.nc.connected_url.port == victim.port
            kv = await open_registry(client.nc, mesh.subjects)
            assert (await kv.status()).stream_info.config.num_replicas == 3

            gate = asyncio.Semaphore(in_flight)
            answers, failures, latencies, sent_at, latencies_by_id = {}, [], [], {}, {}
            killed_at: list[float] = []

            async def one(i: int) -> None:
                async with gate:
                    qid = f"q{i:03d}"
                    sent_at[qid] = time.monotonic()
                    try:
                        answer = await client.ask(f"{'#reject ' if i % 2 else ''}steady {i}", timeout=15, retries=4, query_id=qid)
                    except Exception as exc:
                        failures.append((qid, repr(exc)))
                        return
                    latencies.append(time.monotonic() - sent_at[qid])
                    latencies_by_id[qid] = latencies[-1]
                    answers[qid] = answer

            reconnected: dict[str, float] = {}

            async def killer() -> None:
                await wait_for(lambda: len(answers) >= kill_at, 30, f"{kill_at} answers")
                killed_at.append(time.monotonic())
                victim.halt(kill=True)
                members = {"client": client.nc, **{n.card.node_id: n.nc for n in mesh.nodes}}
                while len(reconnected) < len(members):
                    for name, nc in members.items():
                        if name not in reconnected and nc.is_connected and nc.connected_url.port != victim.port:
                            reconnected[name] = time.monotonic() - killed_at[0]
                    await asyncio.sleep(0.01)

            started = time.monotonic()
            tasks = [asyncio.create_task(one(i)) for i in range(total)]
            await asyncio.gather(killer(), *tasks)
            elapsed = time.monotonic() - started

            assert failures == []
            assert sorted(answers) == [f"q{i:03d}" for i in range(total)]
            assert all(answer.id == qid for qid, answer in answers.items())
            await asyncio.sleep(1.0)  # late replies, if any, arrive now
            # On the wire: no send got two final replies, and every query's Answer came back.
            assert wire.duplicated_per_send == 0, f"a send got more than one final reply: {wire.finals.most_common(3)}"
            assert set(answers) <= set(wire.answers)
            assert client.nc.connected_url.port != victim.port
            assert all(n.nc.connected_url.port != victim.port for n in mesh.nodes)
            # After the failover the registry still works: a forwarded query reaches tier 2.
            await wait_for(mesh.all_see_each_other, 15, "nodes to see each other after the failover")
            late = [a for qid, a in answers.items() if sent_at[qid] > killed_at[0] and int(qid[1:]) % 2]
            after = await client.ask("#reject after failover", timeout=5)
            assert after.model == "large"
            listed = {card["node_id"] for card in await status_json(cluster.urls, mesh.prefix, within=30)}
            status_ok = time.monotonic() - killed_at[0]
            assert listed == {small.card.node_id, small2.card.node_id, large.card.node_id, "large-cli"}
            assert proc.returncode is None
            # The watchers work after the failover: a node that joins now (its start waits out the
            # cluster's leader elections) is seen by everyone.
            await mesh.add("late", 0.5)
            await wait_for(mesh.all_see_each_other, 15, "every node to see a node that joined after the failover")
            joined_ok = time.monotonic() - killed_at[0]
            across = [latencies_by_id[qid] for qid in answers if sent_at[qid] <= killed_at[0] < sent_at[qid] + latencies_by_id[qid]]
            report(
                "cluster-failover",
                sent=total, answered=len(answers), lost=total - len(answers), duplicated_on_wire=wire.duplicated,
                duplicated_per_send=wire.duplicated_per_send, answered_again_after_a_resend=wire.answered_again, resends=client.resends,
                forwarded_after_kill_reaching_tier2=sum(a.model == "large" for a in late), forwarded_after_kill=len(late),
                in_flight_at_kill=len(across), max_latency_in_flight_at_kill_s=round(max(across, default=0), 2),
                max_latency_s=round(max(latencies), 2), p50_latency_s=round(sorted(latencies)[len(latencies) // 2], 3),
                run_s=round(elapsed, 1), max_reconnect_s=round(max(reconnected.values()), 2),
                status_cli_ok_after_s=round(status_ok, 1), new_node_joined_and_seen_after_s=round(joined_ok, 1),
            )
        finally:
            if proc is not None:
                await stop_process(proc)
            await mesh.close()
