"""The one async interface every model backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal


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
    """A loaded model that generates chat completions; safe to call from many tasks at once."""

    kind: str
    model_name: str
    context_length: int

    @abstractmethod
    async def generate(self, request: GenerationRequest) -> Generation:
        """Complete the chat; raise PromptTooLongError if it cannot fit the context."""

    async def close(self) -> None:
        """Release the model; the default has nothing to release."""
