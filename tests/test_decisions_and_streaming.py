"""Probe policy thresholds and skip-hop, micro-batching, and streamed answers, on real nodes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import REPLIES, Mesh

from disrouter.mesh.client import MeshError
from disrouter.mesh.protocol import Answer, Chunk
from disrouter.node.backends import GenerationRequest, load_backend
from disrouter.node.backends.instant import InstantBackend
from disrouter.node.calibration import CALIBRATION_FILENAME, Calibration, load_calibration
from disrouter.node.compose import ConfigError


def route(answer: Answer) -> list[tuple[str, str]]:
    return [(hop.model, hop.decision) for hop in answer.path]


async def test_probe_forwards_above_the_threshold_and_answers_below_it(mesh: Mesh) -> None:
    never_skip = Calibration(skip_thresholds={0.5: 1.0})
    await mesh.add("small", 0.1, "reject", entry=True, policy="probe", calibration=never_skip)
    await mesh.add("mid", 0.5, "tier-b", policy="probe", calibration=never_skip)
    await mesh.add("large", 0.9, "tier-c", policy="always")
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()

    answer = await client.ask("q", timeout=30)

    assert route(answer) == [("small", "reject"), ("mid", "answer")]
    small, mid = answer.path
    assert small.reject_prob > 0.99 and small.completion_tokens == 0 and small.prompt_tokens > 0
    assert mid.reject_prob < 0.01 and answer.text == REPLIES["tier-b"]
    assert small.decide_ms is not None and small.decide_ms <= small.ms


async def test_a_very_confident_rejection_skips_to_the_strongest_peer(mesh: Mesh) -> None:
    await mesh.add("t1", 0.1, "reject", entry=True, policy="probe")  # P(reject) ~ 1 > skip threshold
    await mesh.add("t2", 0.3, "tier-b", policy="probe")
    await mesh.add("t3", 0.6, "tier-b", policy="probe")
    await mesh.add("t4", 0.9, "tier-c", policy="always")
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()

    answer = await client.ask("q", timeout=30)

    assert route(answer) == [("t1", "reject"), ("t4", "answer")]


async def test_a_policy_the_backend_cannot_serve_is_refused_when_the_node_is_built(mesh: Mesh) -> None:
    """The probe policy scores the reject phrase: build_node refuses a backend that cannot score."""

    class GenerateOnly(InstantBackend):
        capabilities = frozenset({"stream"})

    with pytest.raises(ConfigError, match="policy probe needs a backend that can score"):
        await mesh.add("small", 0.1, "instant", entry=True, policy="probe", backend=GenerateOnly())
    assert mesh.nodes == []


async def test_the_threshold_comes_from_the_calibration_file(tmp_path: Path, scripted_models: dict[str, Path]) -> None:
    folder = scripted_models["reject"]
    (tmp_path / CALIBRATION_FILENAME).write_text(json.dumps({"thresholds": {"0.2": 0.1, "0.8": 0.9}, "skip_thresholds": {"0.5": 1.0}}))

    calibration = load_calibration(None, tmp_path)

    assert calibration.threshold(0.5) == pytest.approx(0.5) and calibration.threshold(0.0) == 0.1
    assert load_calibration(None, folder) == Calibration()  # no file beside the model: defaults


async def test_concurrent_queries_share_batched_generate_calls(scripted_models: dict[str, Path]) -> None:
    backend = load_backend("transformers", str(scripted_models["paris"]), max_batch=16)
    requests = [GenerationRequest(messages=[{"role": "user", "content": "x " * i}], max_tokens=8) for i in range(1, 17)]

    results = await asyncio.gather(*(backend.generate(r) for r in requests))
    batches = backend.batches_run
    await backend.close()

    assert all(r.text == REPLIES["paris"] for r in results)
    assert batches <= 4, f"16 concurrent queries took {batches} generate calls"


async def test_a_streamed_answer_arrives_in_order_and_ends_with_the_answer(mesh: Mesh) -> None:
    await mesh.add("small", 0.1, "reject", entry=True)  # rejects: must stream nothing
    large = await mesh.add("large", 0.9, "paris", policy="always")
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()

    events = [event async for event in client.stream("Capital of France?", timeout=30)]

    chunks, answer = events[:-1], events[-1]
    assert isinstance(answer, Answer) and all(isinstance(c, Chunk) for c in chunks)
    assert len(chunks) > 1 and [c.seq for c in chunks] == list(range(len(chunks)))
    assert "".join(c.chunk for c in chunks) == answer.text == REPLIES["paris"]
    assert {c.node_id for c in chunks} == {large.card.node_id}
    assert route(answer) == [("small", "reject"), ("large", "answer")]


async def test_a_generate_node_that_rejects_streams_nothing_even_when_forced_later(mesh: Mesh) -> None:
    only = await mesh.add("only", 0.1, "reject", entry=True, peers=["ghost"])  # rejects, no peer takes it
    client = await mesh.client()

    events = [event async for event in client.stream("q", timeout=30, max_tokens=6)]

    assert route(events[-1]) == [("only", "forced")]
    assert "".join(e.chunk for e in events[:-1]) == events[-1].text  # only the forced answer
    assert not any("know!" in e.chunk for e in events[:-1])
    assert only.stats.answered == 1


async def test_streaming_with_nobody_at_the_ingress_is_unavailable(mesh: Mesh) -> None:
    client = await mesh.client()
    with pytest.raises(MeshError) as err:
        [event async for event in client.stream("q", timeout=5)]
    assert err.value.code == "unavailable"
