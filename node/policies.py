"""Decision policies: does this node answer a query or hand it to a stronger peer?

Each policy is registered by name; `disrouter-node --policy NAME` picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from disrouter.mesh.protocol import Query

from .backends import Backend, Generation, GenerationRequest
from .prompts import is_reject, reject_variants, with_scenario


@dataclass(frozen=True)
class Decision:
    reject: bool
    generation: Generation  # the answer, or the output that was read as a rejection
    reject_prob: float | None = None


def _request(query: Query, messages: list[dict[str, str]], suppress: tuple[str, ...] = ()) -> GenerationRequest:
    return GenerationRequest(
        messages=messages,
        max_tokens=query.max_tokens,
        temperature=query.temperature,
        top_p=query.top_p,
        suppress=suppress,
        deadline=query.deadline,
    )


def _chat(query: Query) -> list[dict[str, str]]:
    return [m.model_dump() for m in query.messages]


class Policy(ABC):
    name: ClassVar[str]
    never_rejects: ClassVar[bool] = False

    @abstractmethod
    async def decide(self, backend: Backend, query: Query) -> Decision:
        """Answer the query, or reject it so the node forwards it."""


class GeneratePolicy(Policy):
    """The paper's policy: generate under the scenario instruction; the reject phrase means forward."""

    name = "generate"

    def __init__(self, demonstrations: bool = True) -> None:
        self.demonstrations = demonstrations  # few-shot turns help untrained models use the phrase

    async def decide(self, backend: Backend, query: Query) -> Decision:
        chat = with_scenario(_chat(query), query.alpha, demonstrations=self.demonstrations)
        generation = await backend.generate(_request(query, chat))
        return Decision(reject=is_reject(generation.text), generation=generation)


class AlwaysPolicy(Policy):
    """Never rejects: for models without self-awareness training (e.g. the strongest tier)."""

    name = "always"
    never_rejects = True

    async def decide(self, backend: Backend, query: Query) -> Decision:
        return Decision(reject=False, generation=await answer_forced(backend, query))


async def answer_forced(backend: Backend, query: Query) -> Generation:
    """Answer without the scenario instruction and with the reject phrase suppressed."""
    return await backend.generate(_request(query, _chat(query), suppress=tuple(reject_variants())))


POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (GeneratePolicy, AlwaysPolicy)}


def make_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name]()
