"""Wire protocol: every fact about what goes over NATS, in one module.

A client sends a Query; nodes pass each other a HandOff (the Query plus the routing state that
travels with it) and confirm one with HANDOFF_ACCEPTED or refuse it with HANDOFF_REFUSED; the
client's reply subject gets Progress, Chunk, then an Answer or an Error (``decode_reply`` tells
them apart). A payload whose first non-blank byte is ``{`` is JSON; anything else is msgpack.
Replies use the format of the request that caused them.
"""

from __future__ import annotations

import json
import time
import uuid
from enum import Enum
from typing import Any, Literal, Union

import msgpack
from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, ValidationError, field_validator, model_serializer, model_validator

from .objective import ScenarioName, parse_scenario, scenario_alpha

PROTOCOL_VERSION = 1

MAX_PAYLOAD_BYTES = 1_000_000
MAX_PROMPT_CHARS = 100_000
MAX_MESSAGES = 256
MAX_TOKENS_LIMIT = 8192
MAX_HOPS_LIMIT = 32
DEFAULT_MAX_TOKENS = 128
DEFAULT_MAX_HOPS = 8
DEFAULT_TIMEOUT_S = 120.0

WireFormat = Literal["msgpack", "json"]

# The receiving node's reply to a hand-off request: it took the query (and now answers for it), or not.
HANDOFF_ACCEPTED = b"+ACK"
HANDOFF_REFUSED = b"-NAK"
# NATS header: Unix time after which a node must not take the message on. A send or hand-off read later
# was held up (a network partition, a reconnect buffer): its sender has moved on or soon will (the client
# re-sends, the hand-off's sender tries its next target), and another copy may already be answered.
STALE_AFTER_HEADER = "Disrouter-Stale-After"
FRESH_S = 1.0  # how long a message stays fresh (at most half its sender's patience); clocks must agree this well
HEARTBEAT_MISSES = 3  # heartbeat periods of silence after which a client takes the holder of its query for dead and re-sends


def stale_after_headers(headers: dict[str, str] | None, patience_s: float) -> dict[str, str]:
    """``headers`` plus the time after which the message is stale, for a sender that moves on after ``patience_s``."""
    return {**(headers or {}), STALE_AFTER_HEADER: f"{time.time() + min(FRESH_S, patience_s / 2):.3f}"}


def is_stale(headers: dict[str, str] | None, now: float | None = None) -> bool:
    """True when the message's sender has moved on (its STALE_AFTER_HEADER time passed)."""
    try:
        return (now or time.time()) > float((headers or {})[STALE_AFTER_HEADER])
    except (KeyError, ValueError):
        return False


ROUTING_FIELDS = ("path", "reply_to", "wire")  # the HandOff's own keys in its flat wire map


class ErrorCode(str, Enum):
    """Every code an Error reply can carry (documented in the README)."""

    BAD_REQUEST = "bad_request"  # payload is not msgpack/JSON or not a map
    UNSUPPORTED_VERSION = "unsupported_version"  # "v" is not a version this node speaks
    INVALID_QUERY = "invalid_query"  # a field has the wrong type or an out-of-range value
    TOO_LARGE = "too_large"  # payload or prompt exceeds the node's limits
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the query's deadline passed before an answer
    INTERNAL = "internal"  # the model backend failed on this query
    OVERLOADED = "overloaded"  # every node that could take the query is at its in-flight limit


class ProtocolError(Exception):
    """A message that cannot be accepted; carries the Error code sent back to the client."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False, strict=False)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _encodable(cls, value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("content is not valid Unicode (a lone surrogate)") from None
        return value


class Hop(_Strict):
    """One node's handling of a query, appended in path order."""

    node_id: str = Field(max_length=256)
    model: str = Field(max_length=512)
    # overflow: the node was at its in-flight limit and passed the query on without deciding
    decision: Literal["answer", "reject", "forced", "overflow"]
    reject_prob: float | None = Field(default=None, ge=0.0, le=1.0)
    ms: float = Field(ge=0.0)
    decide_ms: float | None = Field(default=None, ge=0.0)  # time spent deciding to answer or reject
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


class Query(_Strict):
    """A client's question and how to answer it. Routing state travels in a HandOff, never here."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)

    v: int = PROTOCOL_VERSION
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    scenario: Union[ScenarioName, float] = "balance"
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_hops: int = Field(default=DEFAULT_MAX_HOPS, ge=1, le=MAX_HOPS_LIMIT)
    deadline: float | None = Field(default=None, description="Unix time (s) after which to give up")
    stream: bool = False  # send Chunk messages to the reply subject before the final Answer
    progress: bool = False  # send Progress heartbeats to the reply subject while a node holds the query

    @model_validator(mode="before")
    @classmethod
    def _question_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "messages" not in data and "question" in data:
            data = dict(data)
            data["messages"] = [{"role": "user", "content": data.pop("question")}]
        return data

    @field_validator("scenario")
    @classmethod
    def _alpha_in_range(cls, value: Any) -> Any:
        return parse_scenario(value)

    @model_validator(mode="after")
    def _prompt_size(self) -> "Query":
        if sum(len(m.content) for m in self.messages) > MAX_PROMPT_CHARS:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"prompt exceeds {MAX_PROMPT_CHARS} characters")
        return self

    @property
    def alpha(self) -> float:
        """The scenario as a number: weight of cost against accuracy."""
        return scenario_alpha(self.scenario)

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.time()) >= self.deadline

    def with_deadline(self, timeout_s: float) -> "Query":
        """This query if it has a deadline, else a copy whose deadline is ``timeout_s`` from now."""
        return self if self.deadline is not None else self.model_copy(update={"deadline": time.time() + timeout_s})


class HandOff(_Strict):
    """What nodes pass each other: the client's Query plus the routing state that travels with it.

    On the wire it is one flat map, the Query's fields plus ``path`` (the hops so far),
    ``reply_to`` (the client's reply subject: the answering node publishes there) and ``wire``
    (the client's format). Nodes build a new HandOff for each step; none is changed in place.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    query: Query
    path: list[Hop] = Field(default_factory=list, max_length=MAX_HOPS_LIMIT)
    reply_to: str = Field(max_length=512)
    wire: WireFormat = "msgpack"

    @model_validator(mode="before")
    @classmethod
    def _from_flat_map(cls, data: Any) -> Any:
        if isinstance(data, dict) and "query" not in data:
            return {"query": {k: v for k, v in data.items() if k not in ROUTING_FIELDS}, **{k: data[k] for k in ROUTING_FIELDS if k in data}}
        return data

    @model_serializer
    def _to_flat_map(self, info: SerializationInfo) -> dict[str, Any]:
        path = [hop.model_dump(mode=info.mode) for hop in self.path]
        return {**self.query.model_dump(mode=info.mode), "path": path, "reply_to": self.reply_to, "wire": self.wire}

    def visited_models(self) -> set[str]:
        return {hop.model for hop in self.path}

    def then(self, hop: Hop) -> "HandOff":
        """The hand-off to send on: this one with ``hop`` appended to the path."""
        return self.model_copy(update={"path": [*self.path, hop]})


class Answer(_Strict):
    v: int = PROTOCOL_VERSION
    id: str
    text: str
    model: str
    node_id: str
    path: list[Hop]
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Chunk(_Strict):
    """A piece of a streamed answer; ``seq`` counts from 0. The final Answer follows the last one."""

    v: int = PROTOCOL_VERSION
    id: str
    chunk: str
    seq: int
    node_id: str


class Progress(_Strict):
    """Heartbeat from the node holding a query (only when the query asked with ``progress: true``).

    Sent to the client's reply subject once when a node takes the query, then every ``every``
    seconds until that node hands the query on or sends the final Answer/Error. ``hops`` is the
    number of nodes before this one on the path. A client that hears nothing (no Progress, Chunk,
    Answer or Error) for a few periods knows the holder died and re-sends the same query id.
    """

    v: int = PROTOCOL_VERSION
    id: str
    progress: Literal[True] = True
    node_id: str
    hops: int = 0
    every: float = 1.0


class ErrorDetail(_Strict):
    code: ErrorCode
    message: str


class Error(_Strict):
    v: int = PROTOCOL_VERSION
    id: str | None = None
    error: ErrorDetail
    path: list[Hop] = Field(default_factory=list)

    @classmethod
    def of(cls, code: ErrorCode, message: str, query_id: str | None = None, path: list[Hop] | None = None) -> "Error":
        return cls(id=query_id, error=ErrorDetail(code=code, message=message), path=path or [])


def wire_format_of(payload: bytes) -> WireFormat:
    """JSON when the payload starts with ``{`` (leading blanks allowed), msgpack otherwise."""
    return "json" if payload.lstrip()[:1] == b"{" else "msgpack"


def encode(message: BaseModel | dict, wire: WireFormat = "msgpack") -> bytes:
    data = message.model_dump(mode="json", exclude_none=False) if isinstance(message, BaseModel) else message
    if wire == "json":
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return msgpack.packb(data, use_bin_type=True)


def decode_map(payload: bytes) -> tuple[dict, WireFormat]:
    """Decode a payload into a map, or raise ProtocolError(bad_request/too_large)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    wire = wire_format_of(payload)
    try:
        if wire == "json":
            data = json.loads(payload.decode("utf-8"))
        else:
            data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, UnicodeDecodeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"payload is not valid {wire}: {exc}") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"payload is nested too deeply to decode as {wire}") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"payload must be a map, got {type(data).__name__}")
    return data, wire


def _check_version(data: dict) -> None:
    version = data.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION, f"protocol version {version!r} is not supported (this node speaks {PROTOCOL_VERSION})"
        )


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "query"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _validate(kind: type[Query] | type[HandOff], data: dict) -> Query | HandOff:
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_QUERY, _describe(exc)) from None
    except ProtocolError:
        raise
    except (ValueError, TypeError) as exc:  # e.g. inf/nan or unhashable values inside validators
        raise ProtocolError(ErrorCode.INVALID_QUERY, str(exc)) from None


def decode_query(payload: bytes) -> Query:
    """Parse a client's Query; routing state sent with it (path, reply_to, wire) is ignored, never trusted."""
    data, _ = decode_map(payload)
    _check_version(data)
    return _validate(Query, data)


def decode_inbound(payload: bytes, *, from_client: bool) -> Query | HandOff:
    """What a node received: a HandOff when another node sent it (a map with ``reply_to``), else a client's Query.

    Everything on the ingress subject is from a client (``from_client``); on a model or node
    subject a map without ``reply_to`` is a client's direct request.
    """
    data, _ = decode_map(payload)
    _check_version(data)
    if from_client or data.get("reply_to") is None:
        return _validate(Query, data)
    return _validate(HandOff, data)


def is_no_responders(payload: bytes, headers: dict[str, str] | None) -> bool:
    """NATS's own reply when nobody listens on a request's subject: empty, with status 503."""
    return not payload and bool(headers) and headers.get("Status") == "503"


def decode_reply(payload: bytes) -> Answer | Error | Chunk | Progress:
    """Parse a message a node sent to a client: an Answer, an Error, a streamed Chunk or a Progress heartbeat."""
    data, _ = decode_map(payload)
    kind = Error if "error" in data else Progress if "progress" in data else Chunk if "chunk" in data else Answer
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, _describe(exc)) from None


def query_id_of(payload: bytes) -> str | None:
    """Best-effort id of a malformed query, so its Error can still name it."""
    try:
        data, _ = decode_map(payload)
    except ProtocolError:
        return None
    qid = data.get("id")
    if not (isinstance(qid, str) and 0 < len(qid) <= 128):
        return None
    try:
        qid.encode("utf-8")
    except UnicodeEncodeError:
        return None  # an id no reply could carry
    return qid
