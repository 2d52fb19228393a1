"""Bad input: property-based tests of protocol decoding, and a live fuzz run against real nodes.

Properties (hypothesis): whatever bytes arrive, ``decode_query`` returns a Query or raises
ProtocolError, nothing else; a query it accepts can be encoded again (to forward or answer it);
valid queries round-trip through msgpack and JSON.

Live fuzz: ``DISROUTER_FUZZ_CASES`` (default 10,000) malformed messages at the ingress subject and
at model subjects of real nodes (instant backend, plus one tiny scripted transformers model), while
well-formed queries are sent concurrently. Every node keeps serving, every well-formed query is
answered, and every malformed message sent with a reply subject gets a reply (an Error, or an
Answer when the message was acceptable after all). Figures print with ``-s``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import msgpack
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from disrouter.mesh.protocol import (
    MAX_HOPS_LIMIT,
    MAX_PAYLOAD_BYTES,
    MAX_TOKENS_LIMIT,
    Error,
    ROUTING_FIELDS,
    ErrorCode,
    HandOff,
    Hop,
    ProtocolError,
    Query,
    decode_inbound,
    decode_query,
    decode_reply,
    encode,
    query_id_of,
    wire_format_of,
)
from disrouter.node.prompts import REJECT_PHRASE

# Lone surrogates (JSON escapes like "\\ud800") in a query's content or id: decode_query once accepted them
# in the content (the query then cannot be forwarded or tokenised: an `internal` Error), and an
# Error naming such an id cannot be encoded (no reply at all). Set to True once protocol.py rejects
# them (see the two xfail tests below); the live fuzz then sends them too.
SURROGATES_REJECTED = True

EXAMPLES = int(os.environ.get("DISROUTER_HYPOTHESIS_EXAMPLES", "300"))
FUZZ_CASES = int(os.environ.get("DISROUTER_FUZZ_CASES", "10000"))
QUERY_FIELDS = sorted(Query.model_fields) + list(ROUTING_FIELDS) + ["question", "error", "chunk", "text", "node_id"]

fuzz_settings = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["user", "assistant", "system", "balance", "cost", "performance", "answer", "reject", REJECT_PHRASE])
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | st.sampled_from(QUERY_FIELDS)
keys = st.text(max_size=12) | st.sampled_from(QUERY_FIELDS)
msgpack_values = st.recursive(scalars | st.binary(max_size=40), lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=5), max_leaves=25)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=5), max_leaves=25)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": st.text(max_size=60)}),
    min_size=1,
    max_size=4,
)
hops = st.builds(
    Hop,
    node_id=st.text(max_size=20),
    model=st.text(max_size=20),
    decision=st.sampled_from(["answer", "reject", "forced"]),
    reject_prob=st.none() | st.floats(0, 1),
    ms=st.floats(0, 1e6),
    decide_ms=st.none() | st.floats(0, 1e6),
    prompt_tokens=st.integers(0, 2**31),
    completion_tokens=st.integers(0, 2**31),
)
queries = st.builds(
    Query,
    id=st.text(min_size=1, max_size=128),
    messages=messages,
    scenario=st.sampled_from(["performance", "balance", "cost"]) | st.floats(0, 1),
    max_tokens=st.integers(1, MAX_TOKENS_LIMIT),
    temperature=st.floats(0, 2),
    top_p=st.floats(0, 1, exclude_min=True),
    max_hops=st.integers(1, MAX_HOPS_LIMIT),
    deadline=st.none() | st.floats(0, 4e9),
    stream=st.booleans(),
)
handoffs = st.builds(HandOff, query=queries, path=st.lists(hops, max_size=4), reply_to=st.text(min_size=1, max_size=40))
# Maps shaped like queries: right field names, anything as values (often almost right).
query_like = st.fixed_dictionaries(
    {"messages": messages | msgpack_values},
    optional={name: msgpack_values for name in QUERY_FIELDS if name != "messages"} | {"path": st.lists(st.dictionaries(keys, msgpack_values, max_size=9), max_size=3)},
)


def _decode_query_or_protocol_error(payload: bytes, from_client: bool) -> Query | HandOff | None:
    try:
        query = decode_inbound(payload, from_client=from_client)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode) and exc.message
        return None
    # Whatever was accepted can be sent on: forwarded (msgpack) and answered (its own format).
    encode(query)
    encode(query, query.wire if isinstance(query, HandOff) else wire_format_of(payload))
    return query


def _packb(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# --- properties ------------------------------------------------------------------------------


@fuzz_settings
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_give_a_query_or_a_protocol_error(payload: bytes, from_client: bool) -> None:
    _decode_query_or_protocol_error(payload, from_client)
    _decode_query_or_protocol_error(b"{" + payload, from_client)


@fuzz_settings
@given(msgpack_values, st.booleans(), st.integers(0, 400))
def test_arbitrary_msgpack_gives_a_query_or_a_protocol_error(value: object, from_client: bool, cut: int) -> None:
    payload = _packb(value)
    _decode_query_or_protocol_error(payload, from_client)
    _decode_query_or_protocol_error(payload[: cut % (len(payload) + 1)], from_client)  # truncated


@fuzz_settings
@given(json_values, st.booleans(), st.integers(0, 400))
def test_arbitrary_json_gives_a_query_or_a_protocol_error(value: object, from_client: bool, cut: int) -> None:
    payload = json.dumps({"messages": value} if not isinstance(value, dict) else value).encode()
    _decode_query_or_protocol_error(payload, from_client)
    _decode_query_or_protocol_error(payload[: cut % (len(payload) + 1)], from_client)


@fuzz_settings
@given(query_like, st.booleans(), st.booleans())
def test_query_shaped_maps_give_a_query_or_a_protocol_error(value: dict, from_client: bool, as_json: bool) -> None:
    if as_json:
        try:
            payload = json.dumps(value, default=lambda b: b.decode("latin-1")).encode()
        except (TypeError, ValueError):
            return
    else:
        payload = _packb(value)
    _decode_query_or_protocol_error(payload, from_client)


@fuzz_settings
@given(st.binary(max_size=200) | msgpack_values.map(_packb) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decode_reply_raises_only_validation_errors(payload: bytes) -> None:
    """decode_reply raises ProtocolError, or pydantic's ValidationError for a map of the wrong shape
    (MeshClient catches both); see test_decode_reply_raises_only_protocol_errors."""
    try:
        reply = decode_reply(payload)
    except (ProtocolError, ValidationError):
        return
    assert type(reply).__name__ in {"Answer", "Error", "Chunk", "Progress"}


def test_decode_reply_raises_only_protocol_errors() -> None:
    with pytest.raises(ProtocolError):
        decode_reply(_packb({"error": 5}))


@fuzz_settings
@given(queries | handoffs, st.sampled_from(["msgpack", "json"]))
def test_valid_queries_round_trip(sent: Query | HandOff, wire: str) -> None:
    payload = encode(sent, wire)
    inside = decode_inbound(payload, from_client=False)
    assert inside.model_dump() == sent.model_dump()

    from_client = decode_inbound(payload, from_client=True)  # a client's routing state (path, reply_to, wire) is dropped
    assert isinstance(from_client, Query) and wire_format_of(payload) == wire
    assert from_client.model_dump() == (sent.query if isinstance(sent, HandOff) else sent).model_dump()


def test_query_ids_named_in_errors_can_be_encoded_for_plain_ids() -> None:
    payload = json.dumps({"id": "q-1", "messages": []}).encode()
    assert query_id_of(payload) == "q-1"
    encode(Error.of(ErrorCode.INVALID_QUERY, "x", query_id_of(payload)), "json")


@pytest.mark.xfail(not SURROGATES_REJECTED, strict=True, raises=UnicodeEncodeError, reason="query_id_of returns a lone-surrogate id that JSON cannot encode: the Error reply is never sent")
def test_a_lone_surrogate_id_still_gets_an_error_reply() -> None:
    payload = b'{"id": "\\ud800", "messages": []}'
    with pytest.raises(ProtocolError):
        decode_query(payload)
    encode(Error.of(ErrorCode.INVALID_QUERY, "x", query_id_of(payload)), "json")


@pytest.mark.xfail(not SURROGATES_REJECTED, strict=True, reason="decode_query accepts lone surrogates in message content; forwarding it fails")
def test_lone_surrogates_in_content_are_an_invalid_query() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_query(b'{"messages": [{"role": "user", "content": "a\\udc80b"}]}')
    assert caught.value.code == ErrorCode.INVALID_QUERY


# --- live fuzz ---------------------------------------------------------------------------------


class Malformed:
    """Deterministic generator of malformed (and borderline) messages."""

    def __init__(self, seed: int, spy_inbox: str) -> None:
        self.rng = random.Random(seed)
        self.spy = spy_inbox

    def valid(self) -> dict:
        return {"messages": [{"role": "user", "content": f"fuzz {self.rng.random()}"}], "max_tokens": 8}

    def junk(self, depth: int = 0) -> object:
        r = self.rng
        choices = [
            None, True, -1, 0, 2**64 - 1, -(2**63), 1e308, -1e308, math.inf, -math.inf, math.nan, "", "x" * r.randint(1, 300),
            "\u202e\x00\ufffd", b"\xff\xfe", [], {}, [1, "a"], {"role": "user"}, REJECT_PHRASE, "reply_to", "path",
        ]
        value = r.choice(choices)
        if depth < 3 and r.random() < 0.3:
            value = [self.junk(depth + 1) for _ in range(r.randint(0, 3))] if r.random() < 0.5 else {
                r.choice(QUERY_FIELDS): self.junk(depth + 1) for _ in range(r.randint(0, 3))
            }
        return value

    def payload(self, data: object, as_json: bool) -> bytes:
        if as_json:
            return json.dumps(data, default=lambda b: b.decode("latin-1")).encode()
        return msgpack.packb(data, use_bin_type=True)

    def case(self) -> tuple[str, bytes]:
        r = self.rng
        kind = r.choice(KINDS)
        as_json = r.random() < 0.35
        if kind == "random bytes":
            return kind, r.randbytes(r.randint(0, 200))
        if kind == "json-looking bytes":
            return kind, b"{" + r.randbytes(r.randint(0, 100))
        if kind == "truncated":
            full = self.payload({**self.valid(), "id": f"t{r.random()}", "scenario": 0.3}, as_json)
            return kind, full[: r.randint(0, len(full) - 1)]
        if kind == "wrong type":
            query = self.valid()
            query[r.choice(QUERY_FIELDS)] = self.junk()
            return kind, self.payload(query, as_json and not _has_nan(query))
        if kind == "wrong message":
            message = {"role": r.choice(["user", "wizard", 3, None]), "content": self.junk()}
            return kind, self.payload({"messages": [message] * r.randint(1, 300)}, False)
        if kind == "huge string":
            size = r.choice([100_001, 300_000, MAX_PAYLOAD_BYTES + 10])
            return kind, self.payload({"messages": [{"role": "user", "content": "y" * size}]}, as_json)
        if kind == "huge id":
            return kind, self.payload({**self.valid(), "id": "i" * r.choice([0, 129, 10_000])}, as_json)
        if kind == "deep nesting":
            depth = r.choice([100, 5_000, 200_000])
            if as_json:
                return kind, b'{"messages":' + b"[" * depth + b"]" * depth + b"}"
            return kind, b"\x81\xa8messages" + b"\x91" * depth + b"\x80"
        if kind == "invalid unicode":
            if as_json:  # invalid UTF-8 bytes, or escapes of lone surrogates in the content or id
                choices = [b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}', b'{"id": "\xff", "messages": []}']
                if SURROGATES_REJECTED:
                    choices += [b'{"messages": [{"role": "user", "content": "a\\udc80b"}]}', b'{"id": "\\ud800", "messages": []}']
                return kind, r.choice(choices)
            return kind, b"\x81\xa8messages\x91\x82\xa4role\xa4user\xa7content\xa3\xff\xfe\xfd"
        if kind == "numbers":
            field_name = r.choice(["max_tokens", "max_hops", "temperature", "top_p", "deadline", "scenario", "v"])
            value = r.choice([-1, 0, -(2**63), 2**64 - 1, 1e308, -1e308, math.inf, -math.inf, math.nan, 10**30])
            if as_json and isinstance(value, int) and abs(value) >= 2**64:
                return kind, f'{{"messages": [{{"role": "user", "content": "n"}}], "{field_name}": {value}}}'.encode()
            if isinstance(value, int) and not -(2**63) <= value < 2**64:
                value = 2**64 - 1
            return kind, self.payload({**self.valid(), field_name: value}, as_json and not isinstance(value, float))
        if kind == "big json number":
            return kind, b'{"messages": [{"role": "user", "content": "n"}], "max_tokens": 1' + b"0" * 5000 + b"}"
        if kind == "forged hops":
            hop = {"node_id": self.junk(), "model": r.choice(["small", "large", "tiny", 5]), "decision": r.choice(["reject", "answer", "nope"]), "ms": r.choice([1, -5, "x"])}
            return kind, self.payload({**self.valid(), "path": [hop] * r.choice([1, 8, 33])}, False)
        if kind == "forged reply_to":
            reply_to = r.choice([self.spy, "", " ", "a b", "foo.>", "*", "x\r\nPUB evil 1\r\nz", "\x00", "t" * 600, 7])
            return kind, self.payload({**self.valid(), "reply_to": reply_to}, False)
        if kind == "version":
            return kind, self.payload({**self.valid(), "v": r.choice([0, 2, "1", True, None, 1.0, [1]])}, False)
        if kind == "protocol words in prompt":
            text = r.choice([REJECT_PHRASE, f"{REJECT_PHRASE} #reject", '{"reply_to": "x", "path": []}', "error code internal", "reply_to path wire v id"])
            return kind, self.payload({"messages": [{"role": "user", "content": text}], "max_tokens": 8}, as_json)
        if kind == "not a map":
            return kind, self.payload(r.choice([[1, 2], "question", 42, None, [self.valid()]]), as_json)
        if kind == "ext types":
            return kind, b"\x81\xa8messages" + r.choice([b"\xd4\x01\x00", b"\xc7\x03\x05abc", b"\xd6\xff\x00\x00\x00\x01"])
        raise AssertionError(kind)


KINDS = [
    "random bytes", "json-looking bytes", "truncated", "wrong type", "wrong message", "huge string", "huge id", "deep nesting",
    "invalid unicode", "numbers", "big json number", "forged hops", "forged reply_to", "version", "protocol words in prompt",
    "not a map", "ext types",
]


def _has_nan(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


def _kind_of_reply(data: bytes) -> str:
    if data in (b"+ACK", b"-NAK"):
        return data.decode()
    try:
        reply = json.loads(data) if data[:1] == b"{" else msgpack.unpackb(data)
    except Exception:
        return "unreadable"
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        return f"error:{reply['error'].get('code')}"
    if isinstance(reply, dict) and "chunk" in reply:
        return "chunk"
    if isinstance(reply, dict) and reply.get("progress") is True:
        return "progress"
    if isinstance(reply, dict) and "text" in reply:
        return "answer"
    return "unreadable"


@pytest.mark.slow
async def test_live_fuzz_every_node_keeps_serving(nats_url: str, scripted_models: dict[str, Path]) -> None:
    from conftest import Mesh
    from instant_nodes import InstantMesh

    loop = asyncio.get_running_loop()
    unhandled: list[dict] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    instant = InstantMesh(nats_url, registry_ttl_s=2.0)
    scripted = Mesh(nats_url, scripted_models, prefix=instant.prefix)
    fuzzer = await nats.connect(nats_url)
    try:
        small = await instant.add("small", 0.1, entry=True)
        tiny = await scripted.add("tiny", 0.5, "paris")
        large = await instant.add("large", 0.9, policy="always")
        nodes = [small, tiny, large]
        await asyncio.sleep(0.5)
        client = await instant.client()
        subjects = instant.subjects
        targets = [subjects.ingress, subjects.model("tiny"), subjects.model("large")]
        spy = await fuzzer.subscribe(f"spy.{instant.prefix}")
        generator = Malformed(seed=int(os.environ.get("DISROUTER_FUZZ_SEED", "5")), spy_inbox=f"spy.{instant.prefix}")

        outcomes: Counter = Counter()
        by_kind: Counter = Counter()
        samples: dict[str, list] = defaultdict(list)
        no_reply: list[tuple[str, str, bytes]] = []
        gate = asyncio.Semaphore(32)  # under a node's in-flight limit (64): this is about bad input, not load

        async def fire(i: int) -> None:
            kind, payload = generator.case()
            subject = targets[i % len(targets)]
            by_kind[kind] += 1
            async with gate:
                if i % 10 == 9:  # no reply subject: must be dropped quietly
                    await fuzzer.publish(subject, payload)
                    outcomes["published without reply subject"] += 1
                    return
                try:
                    reply = await fuzzer.request(subject, payload, timeout=20)
                except nats.errors.TimeoutError:
                    no_reply.append((subject, kind, payload[:200]))
                    return
                outcome = _kind_of_reply(reply.data)
                outcomes[outcome] += 1
                if len(samples[outcome]) < 3:
                    samples[outcome].append((subject, kind, payload[:300], reply.data[:300]))

        good: list[str] = []
        good_failures: list[str] = []
        stop = asyncio.Event()

        async def well_formed(worker: int) -> None:
            n = 0
            while not stop.is_set():
                text = f"{'#reject ' if n % 3 else ''}good {worker}-{n}"
                try:
                    answer = await client.ask(text, timeout=20, retries=0)
                    good.append(answer.id)
                    assert answer.text in ("ok", "Paris is the answer.")
                except Exception as exc:
                    good_failures.append(f"{text}: {exc!r}")
                n += 1

        started = time.monotonic()
        workers = [asyncio.create_task(well_formed(w)) for w in range(4)]
        await asyncio.gather(*(fire(i) for i in range(FUZZ_CASES)))
        stop.set()
        await asyncio.gather(*workers)
        elapsed = time.monotonic() - started
        await fuzzer.flush()
        await asyncio.sleep(0.5)

        # Every node still serves: through the ingress, and each model subject directly.
        after = await client.ask("#reject after the fuzz", timeout=20)
        assert after.node_id == tiny.card.node_id
        for node in nodes:
            direct = await fuzzer.request(subjects.model(node.card.model_key), msgpack.packb({"messages": [{"role": "user", "content": "hi"}]}), timeout=20)
            assert _kind_of_reply(direct.data) == "answer", node.card.node_id
            assert not node.nc.is_closed and node.nc.is_connected
        gc.collect()
        await asyncio.sleep(0)

        errors = {k.split(":", 1)[1]: v for k, v in sorted(outcomes.items()) if k.startswith("error:")}
        print(
            f"\n[reliability] live-fuzz: cases={FUZZ_CASES} seconds={elapsed:.1f} "
            f"replies={dict(sorted(outcomes.items()))} error_replies={sum(errors.values())} errors_by_code={errors} "
            f"no_reply={len(no_reply)} spy_received={spy.delivered} well_formed_sent={len(good) + len(good_failures)} "
            f"well_formed_answered={len(good)} kinds={dict(sorted(by_kind.items()))}"
        )
        assert no_reply == [], f"{len(no_reply)} malformed messages got no reply, e.g. {no_reply[:5]}"
        assert good_failures == [], good_failures[:5]
        assert len(good) >= 20
        assert outcomes["unreadable"] == 0, samples["unreadable"]
        assert outcomes["error:internal"] == 0, samples["error:internal"]
        assert not [c for c in unhandled if "exception" in c], [str(c.get("exception")) for c in unhandled][:5]
        assert sum(errors.values()) > FUZZ_CASES / 2
    finally:
        loop.set_exception_handler(previous_handler)
        await fuzzer.close()
        await scripted.close()
        await instant.close()
