"""A stand-in for a remote OpenAI-compatible API: a real HTTP server serving real transformers models.

The ``openai`` backend's tests run against it on every machine (and against ``vllm serve`` too
where vLLM is installed). It speaks the part of the API the backend uses: ``GET /v1/models``,
``POST /v1/chat/completions`` (one JSON reply, or server-sent events ending with a usage chunk
and ``[DONE]``), bearer-key auth and OpenAI-style errors (401 key, 404 model, 400 for a prompt
over the context). With ``vllm_extensions`` it also speaks the vLLM additions the backend scores
continuations with (``prompt_logprobs``, ``return_token_ids``, ``add_generation_prompt``,
``continue_final_message``, ``max_model_len``) and says ``owned_by: vllm`` as vLLM does.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class ApiError(Exception):
    """An error reply: HTTP ``status`` with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class _Served:
    model: Any
    tokenizer: Any

    def prompt_ids(self, body: dict[str, Any]) -> list[int]:
        extra = {"continue_final_message": True} if body.get("continue_final_message") else {}
        rendered = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=body.get("add_generation_prompt", True), **extra)
        return list(rendered["input_ids"])

    def tokens(self, prompt_ids: list[int], max_tokens: int, temperature: float, top_p: float) -> Iterator[int]:
        """Decoded token ids, one forward pass each (KV cache kept), until end of turn or ``max_tokens``."""
        ids, past = torch.tensor([prompt_ids]), None
        with torch.inference_mode():
            for _ in range(max_tokens):
                out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, _pick(out.logits[0, -1].float(), temperature, top_p)
                if token == self.tokenizer.eos_token_id:
                    return
                yield token
                ids = torch.tensor([[token]])

    def prompt_logprobs(self, prompt_ids: list[int]) -> list[dict[str, dict[str, Any]] | None]:
        """vLLM's ``prompt_logprobs: 0``: each prompt token's logprob given the tokens before it."""
        with torch.inference_mode():
            logprobs = torch.log_softmax(self.model(input_ids=torch.tensor([prompt_ids])).logits[0].float(), dim=-1)
        entries: list[dict[str, dict[str, Any]] | None] = [None]
        for position, token in enumerate(prompt_ids[1:], start=1):
            row = logprobs[position - 1]
            rank = int((row > row[token]).sum()) + 1
            entries.append({str(token): {"logprob": float(row[token]), "rank": rank, "decoded_token": self.tokenizer.decode([token])}})
        return entries


def _pick(logits: torch.Tensor, temperature: float, top_p: float) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    ordered, order = probs.sort(descending=True)
    keep = ordered.cumsum(0) - ordered < top_p  # nucleus: the smallest set whose mass reaches top_p
    return int(order[keep][torch.multinomial(ordered[keep], 1)])


@dataclass
class _Completion:
    """One request's decoding state: text deltas as tokens arrive, counts for the usage block."""

    served: _Served
    prompt_ids: list[int]
    max_tokens: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""

    def deltas(self, temperature: float, top_p: float) -> Iterator[str]:
        """One text delta per decoded token ("" while a token adds no whole character, or is special)."""
        for token in self.served.tokens(self.prompt_ids, self.max_tokens, temperature, top_p):
            self.tokens.append(token)
            text = self.served.tokenizer.decode(self.tokens, skip_special_tokens=True)
            delta = ""
            if not text.endswith("\ufffd") and len(text) > len(self.text):
                delta, self.text = text[len(self.text) :], text
            yield delta

    @property
    def finish_reason(self) -> str:
        return "length" if len(self.tokens) >= self.max_tokens else "stop"

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": len(self.prompt_ids), "completion_tokens": len(self.tokens), "total_tokens": len(self.prompt_ids) + len(self.tokens)}


class OpenAIStandin:
    """``with OpenAIStandin({"name": folder}) as url:`` serves the models at ``url`` (``.../v1``) from a thread."""

    def __init__(self, models: dict[str, Path], *, api_key: str | None = None, context_length: int = 2048, vllm_extensions: bool = False) -> None:
        self._folders = models
        self.api_key = api_key
        self.context_length = context_length
        self.vllm_extensions = vllm_extensions
        self.served: dict[str, _Served] = {}
        self.requests: list[dict[str, Any]] = []  # chat request bodies, in arrival order
        self.disconnects = 0  # streamed replies the client hung up on
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> str:
        for name, folder in self._folders.items():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            self.served[name] = _Served(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), tokenizer)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="openai-standin", daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- the API ---------------------------------------------------------------------------------

    def check_key(self, authorization: str | None) -> None:
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            raise ApiError(401, "Incorrect API key provided.", "invalid_api_key")

    def models(self) -> dict[str, Any]:
        owner = "vllm" if self.vllm_extensions else "disrouter-standin"
        extra = {"max_model_len": self.context_length} if self.vllm_extensions else {}
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": owner, **extra} for name in self.served]}

    def completion(self, body: dict[str, Any]) -> _Completion:
        """Validate a chat request and prepare its decoding (ApiError when it cannot be served)."""
        self.requests.append(body)
        served = self.served.get(body.get("model", ""))
        if served is None:
            raise ApiError(404, f"The model `{body.get('model')}` does not exist.", "model_not_found")
        if not self.vllm_extensions and ({"prompt_logprobs", "continue_final_message", "return_token_ids"} & set(body)):
            raise ApiError(400, "Unrecognized request arguments: prompt_logprobs, continue_final_message, return_token_ids.", "invalid_request")
        prompt_ids = served.prompt_ids(body)
        max_tokens = int(body.get("max_tokens") or 16)
        if len(prompt_ids) + max_tokens > self.context_length:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                "context_length_exceeded",
            )
        return _Completion(served, prompt_ids, max_tokens)

    def reply(self, body: dict[str, Any], completion: _Completion) -> dict[str, Any]:
        """The non-streamed reply: the whole message, its finish reason and usage."""
        text = "".join(completion.deltas(float(body.get("temperature", 1.0)), float(body.get("top_p", 1.0))))
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": completion.finish_reason}
        reply: dict[str, Any] = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                                 "model": body["model"], "choices": [choice], "usage": completion.usage}  # fmt: skip
        if self.vllm_extensions and body.get("return_token_ids"):
            reply["prompt_token_ids"] = completion.prompt_ids
        if self.vllm_extensions and body.get("prompt_logprobs") is not None:
            reply["prompt_logprobs"] = completion.served.prompt_logprobs(completion.prompt_ids)
        return reply

    def events(self, body: dict[str, Any], completion: _Completion) -> Iterator[dict[str, Any]]:
        """The streamed reply's chunks: one per text delta, the finish reason, then usage if asked."""
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()), "model": body["model"]}
        yield base | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        for delta in completion.deltas(float(body.get("temperature", 1.0)), float(body.get("top_p", 1.0))):  # a chunk per token
            yield base | {"choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]}
        yield base | {"choices": [{"index": 0, "delta": {}, "finish_reason": completion.finish_reason}]}
        if (body.get("stream_options") or {}).get("include_usage"):
            yield base | {"choices": [], "usage": completion.usage}


def _handler_for(api: OpenAIStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive; streamed replies use chunked transfer encoding

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401
            pass  # quiet in test output

        def do_GET(self) -> None:  # noqa: N802
            self._serve(lambda: self._json(200, api.models()) if self.path == "/v1/models" else self._not_found())

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/v1/chat/completions":
                self._serve(self._not_found)
            else:
                self._serve(lambda: self._chat(body))

        def _serve(self, answer) -> None:  # noqa: ANN001
            try:
                api.check_key(self.headers.get("Authorization"))
                answer()
            except ApiError as exc:
                self._json(exc.status, {"error": {"message": exc.message, "type": "invalid_request_error", "param": None, "code": exc.code}})

        def _not_found(self) -> None:
            raise ApiError(404, f"no route {self.command} {self.path}", "not_found")

        def _chat(self, body: dict[str, Any]) -> None:
            completion = api.completion(body)
            if not body.get("stream"):
                self._json(200, api.reply(body, completion))
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for event in api.events(body, completion):
                    self._chunk(f"data: {json.dumps(event)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError):  # the client hung up: stop decoding
                api.disconnects += 1
                self.close_connection = True

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
