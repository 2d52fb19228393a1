"""OpenAI chat-completions shapes: a request body to a mesh Query, an Answer or Chunk to a response.

Extensions (documented in the README): the request's ``scenario`` field or ``x-disrouter-scenario``
header; the response's ``disrouter`` field (query id, answering node and model, the path).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from disrouter.mesh.protocol import Answer, Chunk, ProtocolError, Query, decode_query

from .errors import GatewayError, bad_request

SCENARIO_HEADER = "x-disrouter-scenario"
TIMEOUT_HEADER = "x-disrouter-timeout"
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logprobs", "response_format")


@dataclass(frozen=True)
class ChatRequest:
    """What the gateway needs from one POST /v1/chat/completions."""

    model: str
    query: Query
    stream: bool
    include_usage: bool
    timeout_s: float


def _text(content: Any, index: int) -> str:
    """A message's content as text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise bad_request("content must be a string or a list of text parts", f"messages.{index}.content")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request("each message must be an object", f"messages.{i}")
        role = "system" if message.get("role") == "developer" else message.get("role")
        out.append({"role": role, "content": _text(message.get("content"), i)})
    return out


def _timeout(headers: dict[str, str], limit: float) -> float:
    raw = headers.get(TIMEOUT_HEADER)
    if raw is None:
        return limit
    try:
        asked = float(raw)
    except ValueError:
        raise bad_request(f"{TIMEOUT_HEADER} must be a number of seconds", TIMEOUT_HEADER) from None
    if not asked > 0:
        raise bad_request(f"{TIMEOUT_HEADER} must be positive", TIMEOUT_HEADER)
    return min(asked, limit)


def parse_chat_request(body: Any, headers: dict[str, str], timeout_limit: float) -> ChatRequest:
    """Validate an OpenAI request body into a Query (one validation path: the protocol's own)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="bad_request")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: 'disrouter' lets the mesh route, a tier's name asks that tier", "model")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], False):
            raise bad_request(f"{name} is not supported by the DiSRouter gateway", name, code="unsupported_parameter")
    if body.get("n", 1) != 1:
        raise bad_request("only n=1 is supported", "n", code="unsupported_parameter")
    timeout_s = _timeout(headers, timeout_limit)
    fields: dict[str, Any] = {"messages": _messages(body), "deadline": time.time() + timeout_s}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    scenario = body.get("scenario", headers.get(SCENARIO_HEADER))
    for name, value in (("max_tokens", max_tokens), ("temperature", body.get("temperature")), ("top_p", body.get("top_p")), ("scenario", scenario)):
        if value is not None:
            fields[name] = value
    try:
        query = decode_query(json.dumps(fields).encode())
    except ProtocolError as exc:
        raise GatewayError(400 if exc.code.value != "too_large" else 413, exc.code.value, exc.message) from None
    options = body.get("stream_options") or {}
    return ChatRequest(model, query, bool(body.get("stream")), bool(isinstance(options, dict) and options.get("include_usage")), timeout_s)


def extension(answer: Answer) -> dict[str, Any]:
    """The response's ``disrouter`` field: which node and model answered, and the path."""
    return {
        "query_id": answer.id,
        "node_id": answer.node_id,
        "model": answer.model,
        "path": [hop.model_dump(mode="json") for hop in answer.path],
    }


def route_headers(answer: Answer) -> dict[str, str]:
    """``x-disrouter-*`` response headers: query id, answering node and model, path as model:decision hops."""
    return {
        "x-disrouter-query-id": answer.id,
        "x-disrouter-node": answer.node_id,
        "x-disrouter-model": answer.model,
        "x-disrouter-path": ",".join(f"{hop.model}:{hop.decision}" for hop in answer.path),
    }


def finish_reason(answer: Answer, query: Query) -> str:
    """``length`` when the answer used the whole token budget, else ``stop``."""
    return "length" if answer.completion_tokens >= query.max_tokens else "stop"


def usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def completion(answer: Answer, query: Query, created: int) -> dict[str, Any]:
    """A ``chat.completion`` object for a whole Answer."""
    return {
        "id": f"chatcmpl-{answer.id}",
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": finish_reason(answer, query), "logprobs": None}
        ],
        "usage": usage(answer),
        "disrouter": extension(answer),
    }


def chunk_event(query_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk`` object."""
    return {
        "id": f"chatcmpl-{query_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        **extra,
    }


def text_chunk(chunk: Chunk, model: str, created: int) -> dict[str, Any]:
    delta = {"role": "assistant", "content": chunk.chunk} if chunk.seq == 0 else {"content": chunk.chunk}
    return chunk_event(chunk.id, model, created, delta)


def final_chunks(answer: Answer, query: Query, created: int, include_usage: bool, streamed: bool) -> list[dict[str, Any]]:
    """The stream's closing events: the whole text when no Chunk came, the finish reason with the
    ``disrouter`` field, then the usage when the request asked for it."""
    events = [] if streamed else [chunk_event(answer.id, answer.model, created, {"role": "assistant", "content": answer.text})]
    events.append(chunk_event(answer.id, answer.model, created, {}, finish_reason(answer, query), disrouter=extension(answer)))
    if include_usage:
        events.append({**chunk_event(answer.id, answer.model, created, {}), "choices": [], "usage": usage(answer)})
    return events


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying ``data`` (JSON, or a literal such as ``[DONE]``)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
