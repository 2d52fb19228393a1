"""Decision policies: does this node answer a query or hand it to a stronger peer, and how does it answer?

A policy owns both halves: ``decide`` (answer or reject) and ``answer`` (answer for certain, when
no peer is left to take the query). Each policy is registered by name; `disrouter-node --policy
NAME` picks one.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

from disrouter.mesh.protocol import Query

from .backends import Backend, Generation, GenerationRequest, TextSink
from .calibration import Calibration
from .prompts import REJECT_PHRASE, could_become_reject, is_reject, reject_variants, with_scenario


@dataclass(frozen=True)
class Decision:
    reject: bool
    generation: Generation | None  # the answer; for a rejection, the output read as one (if any)
    reject_prob: float | None = None
    skip: bool = False  # so sure of rejecting that the query should go to the strongest peer
    prompt_tokens: int = 0  # tokens the decision itself read besides any generation (a probe's prefill, a confidence score's)
    forced: bool = False  # answered only because no peer was left to take the query
    decide_ms: float | None = None  # time spent deciding (set by the node that timed it)

    @property
    def name(self) -> str:
        """The decision as a Hop records it: ``answer``, ``reject`` or ``forced``."""
        return "reject" if self.reject else "forced" if self.forced else "answer"


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


class RejectGuard:
    """Holds streamed text back while it could still turn out to be the reject phrase."""

    def __init__(self, sink: TextSink) -> None:
        self._sink = sink
        self._held = ""
        self._open = False

    def __call__(self, delta: str) -> None:
        if self._open:
            self._sink(delta)
            return
        self._held += delta
        if not could_become_reject(self._held):
            self._open, held, self._held = True, self._held, ""
            self._sink(held)


class Policy(ABC):
    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()  # backend capabilities the policy requires

    @abstractmethod
    async def decide(self, backend: Backend, query: Query, on_text: TextSink | None = None) -> Decision:
        """Answer the query (streaming the answer to ``on_text``), or reject it."""

    async def answer(self, backend: Backend, query: Query, on_text: TextSink | None = None, rejected: Decision | None = None) -> Decision:
        """Answer for certain (no peer is left, or none took the ``rejected`` query): no scenario
        instruction, the reject phrase suppressed. Keeps what ``rejected`` measured."""
        generation = await backend.generate(_request(query, _chat(query), suppress=tuple(reject_variants())), on_text)
        return Decision(
            reject=False,
            generation=generation,
            reject_prob=rejected.reject_prob if rejected else None,
            forced=True,
            decide_ms=rejected.decide_ms if rejected else None,
        )


class GeneratePolicy(Policy):
    """The paper's policy: generate under the scenario instruction; the reject phrase means forward."""

    name = "generate"

    def __init__(self, demonstrations: bool = True) -> None:
        self.demonstrations = demonstrations  # few-shot turns help untrained models use the phrase

    async def decide(self, backend: Backend, query: Query, on_text: TextSink | None = None) -> Decision:
        chat = with_scenario(_chat(query), query.alpha, demonstrations=self.demonstrations)
        generation = await backend.generate(_request(query, chat), RejectGuard(on_text) if on_text else None)
        return Decision(reject=is_reject(generation.text), generation=generation)


class ProbePolicy(Policy):
    """One prefill gives P(reject phrase | prompt); forward above the calibrated threshold,
    otherwise generate with the reject phrase suppressed."""

    name = "probe"
    needs = frozenset({"score"})

    def __init__(self, calibration: Calibration | None = None, demonstrations: bool = True) -> None:
        self.calibration = calibration or Calibration()
        self.demonstrations = demonstrations

    async def decide(self, backend: Backend, query: Query, on_text: TextSink | None = None) -> Decision:
        chat = with_scenario(_chat(query), query.alpha, demonstrations=self.demonstrations)
        logprob, prompt_tokens = await backend.continuation_logprob(chat, REJECT_PHRASE)
        reject_prob = math.exp(logprob)
        if reject_prob > self.calibration.threshold(query.alpha):
            skip = reject_prob > self.calibration.skip_threshold(query.alpha)
            return Decision(reject=True, generation=None, reject_prob=reject_prob, skip=skip, prompt_tokens=prompt_tokens)
        generation = await backend.generate(_request(query, chat, suppress=tuple(reject_variants())), on_text)
        return Decision(reject=False, generation=generation, reject_prob=reject_prob)


class ConfidencePolicy(Policy):
    """No self-awareness training: answer as a node that must answer does (the query's own chat, reject
    phrase suppressed), then forward when the model's doubt in its own answer, 1 - P(answer, then the reply
    ends | prompt), exceeds the calibrated threshold. No scenario instruction: it asks for the reject phrase,
    which this policy never uses. A streamed answer is held until decided. A rejection costs a generation."""

    name = "confidence"
    needs = frozenset({"score"})

    def __init__(self, calibration: Calibration | None = None) -> None:
        self.calibration = calibration or Calibration()

    async def decide(self, backend: Backend, query: Query, on_text: TextSink | None = None) -> Decision:
        request = _request(query, _chat(query), suppress=tuple(reject_variants()))
        generation = await backend.generate(request)
        logprob, prompt_tokens = await backend.continuation_logprob(request.messages, generation.text, end=True)
        doubt, scored = 1.0 - math.exp(logprob), prompt_tokens + generation.completion_tokens  # the score's prefill reads both
        if doubt > self.calibration.threshold(query.alpha):
            skip = doubt > self.calibration.skip_threshold(query.alpha)
            return Decision(reject=True, generation=generation, reject_prob=doubt, skip=skip, prompt_tokens=scored)
        if on_text is not None:
            on_text(generation.text)
        return Decision(reject=False, generation=generation, reject_prob=doubt, prompt_tokens=scored)

    async def answer(self, backend: Backend, query: Query, on_text: TextSink | None = None, rejected: Decision | None = None) -> Decision:
        """The answer ``rejected`` already generated, when there is one: no peer took the query."""
        if rejected is None or rejected.generation is None:
            return await super().answer(backend, query, on_text, rejected)
        if on_text is not None:
            on_text(rejected.generation.text)
        return replace(rejected, reject=False, skip=False, forced=True)


class AlwaysPolicy(Policy):
    """Never rejects: for models without self-awareness training (e.g. the strongest tier)."""

    name = "always"

    async def decide(self, backend: Backend, query: Query, on_text: TextSink | None = None) -> Decision:
        return await self.answer(backend, query, on_text)

    async def answer(self, backend: Backend, query: Query, on_text: TextSink | None = None, rejected: Decision | None = None) -> Decision:
        """The same answer as ever: for this policy answering is never forced."""
        return replace(await super().answer(backend, query, on_text, rejected), forced=False)


POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (GeneratePolicy, ProbePolicy, ConfidencePolicy, AlwaysPolicy)}


def make_policy(name: str, calibration: Calibration | None = None) -> Policy:
    """The policy called ``name``, prompting as ``calibration`` says (thresholds, demonstrations)."""
    calibration = calibration or Calibration()
    if name == "probe":
        return ProbePolicy(calibration, demonstrations=calibration.demonstrations)
    if name == "confidence":
        return ConfidencePolicy(calibration)
    if name == "generate":
        return GeneratePolicy(demonstrations=calibration.demonstrations)
    if name in POLICIES:
        return POLICIES[name]()
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
