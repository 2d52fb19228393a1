"""OpenAI-compatible remote backend: an API model, or a separately run server such as ``vllm serve``.

Chats go to ``POST {endpoint}/chat/completions`` (streamed as server-sent events when the caller
wants deltas). The API has no banned words, so suppressed phrases are stripped from the output
instead: the text never contains one, but it may be left with the words around it, or empty.
A vLLM server (its GET /models says ``owned_by: vllm``) can also score continuations, through its
``prompt_logprobs`` extension; other servers cannot, so the probe policy needs vLLM behind them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from typing import Any, Literal

import httpx
import structlog

from .base import Backend, Generation, GenerationRequest, PromptTooLongError, TextSink

log = structlog.get_logger("disrouter.node.openai")

DEFAULT_CONTEXT_LENGTH = 128_000  # when GET /models gives no max_model_len (vLLM does; OpenAI doesn't)
_PROBE_TIMEOUT = httpx.Timeout(10.0)
_REQUEST_TIMEOUT = httpx.Timeout(300.0, connect=10.0)  # request deadlines are enforced separately
_CONTEXT_ERROR = re.compile(r"context[ _]length|context window|prompt is too long", re.IGNORECASE)


class RemoteBackendError(ValueError):
    """The endpoint is unreachable, refused a request, or does not serve the model."""


class OpenAIBackend(Backend):
    kind = "openai"
    capabilities = frozenset({"stream"})  # and "score" when the server is vLLM

    def __init__(self, endpoint: str, model_name: str, context_length: int, headers: dict[str, str], scores: bool = False) -> None:
        self.endpoint = endpoint
        self.model_name = model_name
        self.context_length = context_length
        if scores:
            self.capabilities = frozenset({"stream", "score"})  # type: ignore[misc]  # the server decides
        self._headers = headers
        self._client: httpx.AsyncClient | None = None  # made on first use, in the running loop

    @classmethod
    def load(
        cls,
        model: str,
        *,
        endpoint: str,
        api_key_env: str | None = None,
    ) -> OpenAIBackend:
        """Check that ``endpoint`` answers and serves ``model`` (GET /models), and read its context."""
        endpoint = endpoint.rstrip("/")
        headers = _auth_headers(api_key_env)
        try:
            with httpx.Client(timeout=_PROBE_TIMEOUT, headers=headers) as client:
                response = client.get(f"{endpoint}/models")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise RemoteBackendError(f"cannot reach {endpoint}/models: {exc or type(exc).__name__}") from exc
        _raise_for_status(response, f"GET {endpoint}/models")
        try:
            served = {card["id"]: card for card in response.json()["data"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteBackendError(f"{endpoint}/models did not return an OpenAI model list") from exc
        if model not in served:
            raise RemoteBackendError(f"{endpoint} does not serve model {model!r}; it serves {', '.join(sorted(served)) or 'none'}")
        context_length = int(served[model].get("max_model_len") or DEFAULT_CONTEXT_LENGTH)
        is_vllm = served[model].get("owned_by") == "vllm"
        log.info("endpoint_ready", endpoint=endpoint, model=model, context_length=context_length, vllm=is_vllm)
        return cls(endpoint, model, context_length, headers, scores=is_vllm)

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        """Complete the chat remotely, streaming deltas to ``on_text``; stop at ``request.deadline``."""
        output = _Output(request.suppress, on_text)
        if request.deadline is not None and request.deadline <= time.time():
            output.finish_reason = "deadline"
        else:
            body: dict[str, Any] = {
                "model": self.model_name,
                "messages": request.messages,
                "max_tokens": request.max_tokens,
                "temperature": request.temperature,
                "top_p": request.top_p if request.temperature > 0 else 1.0,
            }
            call = self._stream(body, output) if on_text is not None else self._complete(body, output)
            try:
                if request.deadline is None:
                    await call
                else:  # a cancelled call closes its connection, and the server drops the request
                    await asyncio.wait_for(call, timeout=max(0.0, request.deadline - time.time()))
            except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
                output.finish_reason = "deadline"
                log.info("deadline_passed", model=self.model_name, completion_tokens=output.completion_tokens)
        output.flush()
        return Generation(
            text=output.text,
            prompt_tokens=output.prompt_tokens,
            completion_tokens=output.completion_tokens,
            finish_reason=output.finish_reason,
        )

    async def continuation_logprob(self, messages: list[dict[str, str]], continuation: str, end: bool = False) -> tuple[float, int]:
        """log P(continuation | chat prompt) from vLLM's prompt logprobs, and the prompt's token count; with
        ``end`` the token the chat template closes the reply with is scored too (a third request: the whole reply)."""
        if "score" not in self.capabilities:
            raise NotImplementedError(f"{self.endpoint} is not a vLLM server: it cannot score continuations")
        base = {"model": self.model_name, "max_tokens": 1, "temperature": 0.0, "return_token_ids": True}
        reply = [*messages, {"role": "assistant", "content": continuation}]
        requests = [base | {"messages": messages},
                    base | {"messages": reply, "add_generation_prompt": False, "continue_final_message": True, "prompt_logprobs": 0}]
        if end:
            requests.append(base | {"messages": reply, "add_generation_prompt": False, "prompt_logprobs": 0})
        prompt, scored, *closed = await asyncio.gather(*(self._post(body) for body in requests))
        prompt_ids, all_ids = prompt["prompt_token_ids"], scored["prompt_token_ids"]
        if all_ids[: len(prompt_ids)] != prompt_ids or (closed and closed[0]["prompt_token_ids"][: len(all_ids)] != all_ids):
            raise RemoteBackendError(f"{self.model_name}'s chat template does not render a reply as a continuation of the prompt")
        if closed:  # the same tokens, and the one after them
            scored, all_ids = closed[0], closed[0]["prompt_token_ids"][: len(all_ids) + 1]
        logprobs = scored["prompt_logprobs"]
        total = sum(logprobs[i][str(all_ids[i])]["logprob"] for i in range(len(prompt_ids), len(all_ids)))
        return float(total), len(prompt_ids)

    async def close(self) -> None:
        """Close the HTTP connections (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=_REQUEST_TIMEOUT, headers=self._headers)
        return self._client

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One non-streamed chat completion's JSON reply."""
        url = f"{self.endpoint}/chat/completions"
        try:
            response = await self._http().post(url, json=body)
        except httpx.HTTPError as exc:
            raise RemoteBackendError(f"POST {url} failed: {exc or type(exc).__name__}") from exc
        _raise_for_status(response, f"POST {url}")
        return response.json()

    async def _complete(self, body: dict[str, Any], output: _Output) -> None:
        """One non-streamed request."""
        reply = await self._post(body)
        choice = reply["choices"][0]
        output.add(choice["message"].get("content") or "")
        output.finished(choice.get("finish_reason"), reply.get("usage"))

    async def _stream(self, body: dict[str, Any], output: _Output) -> None:
        """One streamed request: ``data:`` lines of JSON chunks, then ``data: [DONE]``."""
        url = f"{self.endpoint}/chat/completions"
        body = body | {"stream": True, "stream_options": {"include_usage": True}}
        try:
            async with self._http().stream("POST", url, json=body) as response:
                if not response.is_success:
                    await response.aread()
                    _raise_for_status(response, f"POST {url}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:  # vLLM reports failures after the 200 as an error chunk
                        raise _failure(f"POST {url}", 400, _message_of(chunk))
                    for choice in chunk.get("choices") or []:
                        output.add((choice.get("delta") or {}).get("content") or "")
                        if choice.get("finish_reason"):
                            output.finished(choice["finish_reason"], None)
                    if chunk.get("usage"):
                        output.finished(None, chunk["usage"])
        except httpx.HTTPError as exc:
            raise RemoteBackendError(f"POST {url} failed: {exc or type(exc).__name__}") from exc


class _Output:
    """The reply so far: strips suppressed phrases, holding back a tail that may start one."""

    def __init__(self, suppress: tuple[str, ...], sink: TextSink | None) -> None:
        phrases = sorted({phrase for phrase in suppress if phrase.strip()}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, phrases))) if phrases else None
        self._starts = {phrase[:n] for phrase in phrases for n in range(1, len(phrase))}
        self._longest_start = max(map(len, self._starts), default=0)
        self._sink = sink
        self._held = ""
        self.text = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.chunks = 0  # non-empty deltas: the completion token count when no usage came
        self.finish_reason: Literal["stop", "length", "deadline"] = "stop"

    def add(self, delta: str) -> None:
        """Take new text; pass on what can no longer turn into a suppressed phrase."""
        self.chunks += 1 if delta else 0
        self._held = self._strip(self._held + delta)
        longest = min(len(self._held), self._longest_start)
        keep = max((n for n in range(1, longest + 1) if self._held[-n:] in self._starts), default=0)
        self._emit(self._held[: len(self._held) - keep])
        self._held = self._held[len(self._held) - keep :]

    def finished(self, reason: str | None, usage: dict[str, int] | None) -> None:
        if reason is not None:
            self.finish_reason = "length" if reason == "length" else "stop"
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def flush(self) -> None:
        """Pass on the held tail: the reply is over."""
        self._emit(self._strip(self._held))
        self._held = ""
        self.completion_tokens = self.completion_tokens or self.chunks

    def _strip(self, text: str) -> str:
        while self._pattern is not None and (stripped := self._pattern.sub("", text)) != text:
            text = stripped
        return text

    def _emit(self, text: str) -> None:
        if not self.text:
            text = text.lstrip()  # like the local backends, replies start at their first word
        if text:
            self.text += text
            if self._sink is not None:
                self._sink(text)


def _auth_headers(api_key_env: str | None) -> dict[str, str]:
    """A bearer token from the environment variable named by ``--api-key-env`` (none without one)."""
    if api_key_env is None:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        raise RemoteBackendError(f"--api-key-env {api_key_env}: environment variable {api_key_env} is not set")
    return {"Authorization": f"Bearer {key}"}


def _message_of(body: Any) -> str:  # noqa: ANN401 - any JSON
    """The human-readable part of an OpenAI-style error body."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)
        return str(error)
    return str(body)


def _raise_for_status(response: httpx.Response, what: str) -> None:
    """PromptTooLongError for a context-length refusal, RemoteBackendError for other failures."""
    if response.is_success:
        return
    try:
        message = _message_of(response.json())
    except ValueError:
        message = response.text[:200] or response.reason_phrase
    raise _failure(what, response.status_code, message)


def _failure(what: str, status: int, message: str) -> Exception:
    """The exception for an HTTP error ``status`` with the server's ``message``."""
    if status == 400 and _CONTEXT_ERROR.search(message):
        return PromptTooLongError(message)
    if status in (401, 403):
        return RemoteBackendError(f"{what} refused the API key (HTTP {status}): {message}")
    return RemoteBackendError(f"{what} answered HTTP {status}: {message}")
