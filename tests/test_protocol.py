"""Protocol, prompts, topology and routing units (no NATS needed)."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from pydantic import ValidationError

from disrouter.mesh.membership import NodeCard
from disrouter.mesh.protocol import (
    Answer,
    ErrorCode,
    HandOff,
    Hop,
    ProtocolError,
    Query,
    decode_inbound,
    decode_query,
    decode_reply,
    encode,
    wire_format_of,
)
from disrouter.mesh.subjects import Subjects
from disrouter.mesh.topology import TopologyError, load_topology
from disrouter.node.prompts import REJECT_PHRASE, is_reject, scenario_instruction, with_scenario
from disrouter.node.routing import CascadeRouting, PeerListRouting
from disrouter.topologies import topology_path


def test_a_minimal_json_query_gets_every_default() -> None:
    payload = b'{"messages": [{"role": "user", "content": "hi"}]}'
    query = decode_query(payload)

    assert wire_format_of(payload) == "json" and query.scenario == "balance" and query.alpha == 0.5
    assert query.id and query.max_hops == 8 and not {"path", "reply_to", "wire"} & set(query.model_dump())


def test_the_question_shorthand_and_a_numeric_alpha_are_accepted() -> None:
    payload = msgpack.packb({"question": "hi", "scenario": 0.3})
    query = decode_query(payload)

    assert query.messages[0].content == "hi" and query.alpha == 0.3 and wire_format_of(payload) == "msgpack"


@pytest.mark.parametrize("wire", ["json", "msgpack"])
def test_answers_round_trip_in_both_formats(wire: str) -> None:
    hop = Hop(node_id="n", model="m", decision="answer", ms=1.5, prompt_tokens=3, completion_tokens=4)
    answer = Answer(id="q", text="Paris", model="m", node_id="n", path=[hop])

    assert decode_reply(encode(answer, wire)) == answer


def test_routing_state_from_a_client_is_discarded_but_kept_between_nodes() -> None:
    payload = msgpack.packb({"messages": [{"role": "user", "content": "hi"}], "reply_to": "x", "path": []})

    assert isinstance(decode_inbound(payload, from_client=True), Query)  # reply_to dropped
    assert decode_inbound(payload, from_client=False).reply_to == "x"


def test_a_handoff_is_the_query_plus_three_keys_on_the_wire_and_is_never_changed_in_place() -> None:
    query = Query(id="q", messages=[{"role": "user", "content": "hi"}], deadline=5.0)
    handoff = HandOff(query=query, reply_to="_INBOX.c.0", wire="json")
    hop = Hop(node_id="n", model="m", decision="reject", ms=1)

    forwarded = handoff.then(hop)
    flat = msgpack.unpackb(encode(forwarded))
    assert flat == {**query.model_dump(mode="json"), "path": [hop.model_dump(mode="json")], "reply_to": "_INBOX.c.0", "wire": "json"}
    assert decode_inbound(encode(forwarded), from_client=False) == forwarded
    assert handoff.path == [] and query.with_deadline(60) is query
    with pytest.raises(ValidationError):
        query.id = "changed"


def test_a_non_map_payload_is_a_bad_request() -> None:
    with pytest.raises(ProtocolError) as err:
        decode_query(b"[1, 2]")
    assert err.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("text", ["I don't know!", "i don't know", "  \"I DON'T KNOW!\" ", "I don\u2019t know."])
def test_spellings_of_the_reject_phrase_are_rejections(text: str) -> None:
    assert is_reject(text)


@pytest.mark.parametrize("text", ["Paris.", "I don't know the exact number, but about 5.", ""])
def test_answers_are_not_rejections(text: str) -> None:
    assert not is_reject(text)


def test_the_scenario_instruction_names_the_phrase_and_leads_the_chat() -> None:
    chat = with_scenario([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}], 0.8)

    assert chat[0]["role"] == "system" and REJECT_PHRASE in chat[0]["content"] and "Be brief." in chat[0]["content"]
    assert chat[-1] == {"role": "user", "content": "q"}
    assert "45%" in scenario_instruction(0.8) and "89%" in scenario_instruction(0.2)


def test_the_demo_topology_is_a_cost_ordered_cascade() -> None:
    topology = load_topology(topology_path("demo"))

    costs = [entry.cost for entry in topology.cascade()]
    assert len(costs) >= 2 and costs == sorted(costs)
    assert topology.is_entry(topology.cascade()[0]) and not topology.is_entry(topology.cascade()[-1])


@pytest.mark.parametrize(
    "text, field",
    [
        ("models: []", "models"),
        ("models:\n  - {key: a, model: m, cost: -1}", "models.0.cost"),
        ("models:\n  - {key: 'a b', model: m, cost: 1}", "models.0.key"),
        ("models:\n  - {key: a, model: m, cost: 1, colour: red}", "models.0.colour"),
        ("models:\n  - {key: a, model: m, cost: 1}\n  - {key: a, model: n, cost: 2}", "appears twice"),
    ],
)
def test_topology_errors_name_the_bad_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError, match=field.replace(".", r"\.")):
        load_topology(path)


def _card(key: str, cost: float) -> NodeCard:
    return NodeCard(node_id=f"{key}-1", model_key=key, model=key, cost=cost)


def test_the_cascade_targets_stronger_unvisited_models_cheapest_first() -> None:
    me, cheaper, mid, mid_replica, top = _card("me", 0.3), _card("c", 0.1), _card("mid", 0.5), _card("mid", 0.5), _card("top", 0.9)
    query = Query(messages=[{"role": "user", "content": "q"}])
    handoff = HandOff(query=query, path=[Hop(node_id="x", model="mid", decision="reject", ms=1)], reply_to="r")
    routing = CascadeRouting(Subjects("p"))

    assert [t.model_key for t in routing.targets(handoff, me, [top, mid, mid_replica, cheaper, me])] == ["top"]
    assert [t.subject for t in routing.targets(HandOff(query=query, reply_to="r"), me, [top, mid, mid_replica])] == ["p.model.mid", "p.model.top"]


def test_a_peer_list_keeps_its_order_and_skips_visited_models() -> None:
    query = Query(messages=[{"role": "user", "content": "q"}])
    handoff = HandOff(query=query, path=[Hop(node_id="x", model="b", decision="reject", ms=1)], reply_to="r")
    routing = PeerListRouting(Subjects(), ["c", "b", "me", "a"])

    assert [t.model_key for t in routing.targets(handoff, _card("me", 0.5), [])] == ["c", "a"]


def test_routing_owns_the_order_skip_to_the_strongest_overflow_to_replicas_and_the_hop_limit() -> None:
    me, busy, idle, mid, top = _card("me", 0.3), _card("me", 0.3), _card("me", 0.3), _card("mid", 0.5), _card("top", 0.9)
    busy.node_id, busy.load, idle.node_id, idle.load = "me-busy", 5, "me-idle", 1
    handoff = HandOff(query=Query(messages=[{"role": "user", "content": "q"}], max_hops=2), reply_to="r")
    routing = CascadeRouting(Subjects("p"))
    live = [top, busy, mid, idle, me]

    assert [t.model_key for t in routing.targets(handoff, me, live, skip=True)] == ["top", "mid"]
    assert [t.subject for t in routing.overflow_targets(handoff, me, live)] == ["p.node.me-idle", "p.node.me-busy", "p.model.mid", "p.model.top"]
    at_limit = handoff.then(Hop(node_id="x", model="c", decision="reject", ms=1))
    assert routing.targets(at_limit, me, live) == [] and routing.overflow_targets(at_limit, me, live) == []
