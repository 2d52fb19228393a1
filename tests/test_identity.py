"""One NATS identity per node (issue 13 part 2): a real nats-server runs the shipped
k8s/nats/disrouter-auth.conf with two node users minted by k8s/nats/mint-node-user.sh; nodes cannot
impersonate each other, clients cannot publish to mesh subjects, and a forged reply_to is refused."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from instant_nodes import InstantMesh

from disrouter.local.nats_server import NatsServer
from disrouter.mesh.client import MeshClient
from disrouter.mesh.connection import MeshPermissionError, NatsAuth, connect
from disrouter.mesh.membership import list_cards, open_registry
from disrouter.mesh.protocol import ErrorCode, HandOff, Query, decode_reply, encode
from disrouter.mesh.subjects import Subjects

BIN = Path(sys.executable).parent
K8S_NATS = Path(__file__).resolve().parents[1] / "k8s" / "nats"
SUBJECTS = Subjects("disrouter")
NODES = {"alpha": "small", "beta": "large"}  # node id -> model key
PASSWORDS = {name: "pw" + secrets.token_urlsafe(18) for name in ("client", "node", "gateway", "admin", *NODES)}


def minted_config(folder: Path) -> Path:
    """The shipped config with one minted user per node added to its users list."""
    entries = "".join(
        subprocess.run([str(K8S_NATS / "mint-node-user.sh"), node_id, key], check=True, capture_output=True, text=True).stdout
        for node_id, key in NODES.items()
    )
    shipped = (K8S_NATS / "disrouter-auth.conf").read_text()
    anchor = "    { user: admin"
    assert anchor in shipped
    path = folder / "auth.conf"
    path.write_text(shipped.replace(anchor, entries + anchor, 1))
    return path


def server_env() -> dict[str, str]:
    env = {f"DISROUTER_{name.upper()}_PASSWORD": PASSWORDS[name] for name in ("client", "node", "gateway", "admin")}
    return env | {f"DISROUTER_NODE_{node_id.upper()}_PASSWORD": PASSWORDS[node_id] for node_id in NODES}


def as_node(node_id: str) -> NatsAuth:
    return NatsAuth(user=f"node-{node_id}", password=PASSWORDS[node_id])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(config=minted_config(tmp_path_factory.mktemp("identity")), env=server_env()) as running:
        yield running


async def spy(nc: NATS, subject: str) -> list[bytes]:
    seen: list[bytes] = []

    async def record(msg) -> None:  # noqa: ANN001
        seen.append(msg.data)

    await nc.subscribe(subject, cb=record)
    await nc.flush()
    return seen


async def test_a_node_writes_only_its_own_card(server: NatsServer) -> None:
    admin = await connect(server.url, auth=NatsAuth(user="admin", password=PASSWORDS["admin"]))
    alpha = await connect(server.url, auth=as_node("alpha"))
    beta = await connect(server.url, auth=as_node("beta"))
    try:
        kv_alpha = await open_registry(alpha, SUBJECTS)
        kv_beta = await open_registry(beta, SUBJECTS)
        await kv_alpha.put("alpha", b'{"mine": true}')
        await kv_beta.put("beta", b"beta's card")
        for attack in (lambda: kv_alpha.put("beta", b"forged"), lambda: kv_alpha.delete("beta"), lambda: kv_alpha.purge("beta")):
            with pytest.raises((MeshPermissionError, NatsTimeoutError, asyncio.TimeoutError)):
                await attack()
        kv_admin = await open_registry(admin, SUBJECTS)
        assert (await kv_admin.get("beta")).value == b"beta's card"
        assert (await kv_admin.get("alpha")).value == b'{"mine": true}'
    finally:
        for nc in (admin, alpha, beta):
            await nc.close()


async def test_a_node_cannot_read_another_nodes_subject_or_inboxes(server: NatsServer) -> None:
    admin = await connect(server.url, auth=NatsAuth(user="admin", password=PASSWORDS["admin"]))
    alpha = await connect(server.url, auth=as_node("alpha"))
    try:
        stolen = await spy(alpha, SUBJECTS.node("beta"))
        inbox = await spy(alpha, "_INBOX.node-beta.x")
        own = await spy(alpha, SUBJECTS.node("alpha"))
        await asyncio.sleep(0.3)
        for subject in (SUBJECTS.node("beta"), "_INBOX.node-beta.x", SUBJECTS.node("alpha")):
            await admin.publish(subject, b"hello")
        await admin.flush()
        await asyncio.sleep(0.5)
        assert stolen == [] and inbox == [] and own == [b"hello"]
    finally:
        await admin.close()
        await alpha.close()


async def test_a_client_cannot_publish_to_model_or_node_subjects(server: NatsServer) -> None:
    admin = await connect(server.url, auth=NatsAuth(user="admin", password=PASSWORDS["admin"]))
    client = await connect(server.url, auth=NatsAuth(user="client", password=PASSWORDS["client"]))
    try:
        seen = await spy(admin, "disrouter.>")
        for subject in (SUBJECTS.model("small"), SUBJECTS.node("alpha")):
            await client.publish(subject, encode(Query(messages=[{"role": "user", "content": "hi"}])), reply="_INBOX.client.x")
        await client.flush()
        await asyncio.sleep(0.5)
        assert seen == [] and client.denial_for(SUBJECTS.model("small"))
    finally:
        await admin.close()
        await client.close()


async def test_real_nodes_with_their_own_identities_answer_and_hand_off(server: NatsServer, tmp_path: Path) -> None:
    """`disrouter-node` processes logged in as node-alpha (entry, small) and node-beta (large) serve a
    question that small rejects and large answers: the minted permissions are enough for the mesh."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISROUTER_NATS")}
    procs = []
    for node_id, key in NODES.items():
        extra = ["--entry"] if key == "small" else ["--policy", "always"]
        procs.append(subprocess.Popen(
            [str(BIN / "disrouter-node"), "--backend", "instant", "--model", "instant", "--key", key, "--cost", "0.1" if key == "small" else "0.9",
             "--node-id", node_id, "--nats", server.url, "--nats-user", f"node-{node_id}", *extra],
            env=env | {"DISROUTER_NATS_PASSWORD": PASSWORDS[node_id]}, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{node_id}.log", "wb"),
        ))
    try:
        admin = await connect(server.url, auth=NatsAuth(user="admin", password=PASSWORDS["admin"]))
        kv = await open_registry(admin, SUBJECTS)
        for _ in range(100):
            if {c.node_id for c in await list_cards(kv)} >= set(NODES):
                break
            await asyncio.sleep(0.3)
        await admin.close()
        async with await MeshClient.connect(server.url, auth=NatsAuth(user="client", password=PASSWORDS["client"])) as client:
            answer = await client.ask("#reject hand me on", timeout=20)
        assert [hop.model for hop in answer.path] == ["small", "large"], answer
        logs = "".join((tmp_path / f"{n}.log").read_text() for n in NODES)
        assert "denied" not in logs.lower() and "permission" not in logs.lower(), logs[-2000:]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


async def test_a_forged_reply_to_on_a_model_subject_is_refused(nats_url: str) -> None:
    """A hand-off whose reply_to names a mesh subject gets invalid_query back and nothing is published there."""
    mesh = InstantMesh(nats_url)
    try:
        await mesh.add("small", 0.1, entry=True, policy="always")
        nc = await connect(nats_url)
        victim = mesh.subjects.node(f"victim-{uuid.uuid4().hex[:6]}")
        landed = await spy(nc, victim)
        query = Query(messages=[{"role": "user", "content": "forged"}])
        forged = HandOff(query=query, reply_to=victim)
        reply = await nc.request(mesh.subjects.model("small"), encode(forged), timeout=5)
        error = decode_reply(reply.data)
        assert error.error.code == ErrorCode.INVALID_QUERY and "reply_to" in error.error.message
        # A client Query whose NATS reply subject is a mesh subject: nothing is sent there either.
        await nc.publish(mesh.subjects.ingress, encode(query), reply=victim)
        await nc.flush()
        await asyncio.sleep(1.0)
        assert landed == [] and mesh.nodes[0].stats.answered == 0
        # An honest hand-off still works.
        honest = await nc.request(mesh.subjects.model("small"), encode(HandOff(query=query, reply_to=nc.new_inbox())), timeout=5)
        assert honest.data != reply.data
        await nc.close()
    finally:
        await mesh.close()
