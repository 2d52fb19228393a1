"""The one async interface every model backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

TextSink = Callable[[str], None]
"""Receives text deltas as they are decoded, on the event loop, in order."""


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    suppress: tuple[str, ...] = field(default=())  # phrases the output must not contain
    deadline: float | None = None  # unix time; generation stops early when it passes


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length", "deadline"] = "stop"


class PromptTooLongError(Exception):
    """The prompt does not fit the model's context window."""


class Backend(ABC):
    """A loaded model that completes chats; safe to call from many tasks at once.

    ``capabilities`` says which optional methods work: "stream" (``generate`` calls ``on_text``
    with deltas as tokens are decoded) and "score" (``continuation_logprob``).
    """

    kind: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    model_name: str
    context_length: int
    engine_metrics: ClassVar[str | None] = None  # name prefix of the engine's own metrics in prometheus_client's default registry

    @abstractmethod
    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        """Complete the chat; raise PromptTooLongError if it cannot fit the context."""

    async def continuation_logprob(self, messages: list[dict[str, str]], continuation: str, end: bool = False) -> tuple[float, int]:
        """log P(continuation | chat prompt) from one prefill, and the prompt's token count; with ``end``,
        log P(continuation, then the reply ends): the model's end-of-sequence token follows it."""
        raise NotImplementedError(f"the {self.kind} backend cannot score continuations")

    async def close(self) -> None:
        """Release the model; the default has nothing to release."""
