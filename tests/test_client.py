"""MeshClient behaviour that needs no model: retries keep the query id; errors become MeshError."""

from __future__ import annotations

import uuid

import nats
import pytest

from disrouter.mesh.client import MeshClient, MeshError
from disrouter.mesh.protocol import Answer, Error, ErrorCode, decode_query, encode


async def test_a_timed_out_query_is_retried_with_the_same_id(nats_url: str) -> None:
    """The first attempt goes unanswered (a raw subscriber stands in for a node that died)."""
    prefix = f"c{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    nc = await nats.connect(nats_url)

    async def flaky_entry(msg) -> None:  # noqa: ANN001
        query = decode_query(msg.data)
        seen.append(query.id)
        if len(seen) > 1:
            await msg.respond(encode(Answer(id=query.id, text="ok", model="m", node_id="n", path=[])))

    await nc.subscribe(f"{prefix}.ingress", cb=flaky_entry)
    async with await MeshClient.connect(nats_url, prefix) as client:
        answer = await client.ask("q", timeout=0.5, retries=1)
    await nc.close()

    assert len(seen) == 2 and seen[0] == seen[1] == answer.id


async def test_an_error_reply_raises_mesh_error_with_its_code(nats_url: str) -> None:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(nats_url)

    async def failing_entry(msg) -> None:  # noqa: ANN001
        await msg.respond(encode(Error.of(ErrorCode.INTERNAL, "boom", "q1")))

    await nc.subscribe(f"{prefix}.ingress", cb=failing_entry)
    async with await MeshClient.connect(nats_url, prefix) as client:
        with pytest.raises(MeshError) as err:
            await client.ask("q", timeout=5)
    await nc.close()

    assert err.value.code == "internal" and err.value.message == "boom"


async def test_nobody_serving_the_ingress_is_an_unavailable_error(nats_url: str) -> None:
    async with await MeshClient.connect(nats_url, f"c{uuid.uuid4().hex[:8]}") as client:
        with pytest.raises(MeshError) as err:
            await client.ask("q", timeout=1, retries=1)

    assert err.value.code == "unavailable"
