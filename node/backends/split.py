"""Decide with one model, answer with another: the probe policy's P(reject) from the self-aware
weights, the answer text from the base weights (on GPU what multi-LoRA serving gives: the probe
request with the self-awareness adapter, the answer without; here two loaded models)."""

from __future__ import annotations

from .base import Backend, Generation, GenerationRequest, TextSink


class SplitBackend(Backend):
    """``continuation_logprob`` goes to ``decider``, ``generate`` to ``answerer``; ``close`` closes both."""

    kind = "split"

    def __init__(self, decider: Backend, answerer: Backend) -> None:
        self.decider, self.answerer = decider, answerer
        self.capabilities = (decider.capabilities & {"score"}) | (answerer.capabilities - {"score"})  # type: ignore[misc]
        self.model_name = decider.model_name
        self.answer_model_name = answerer.model_name
        self.context_length = min(decider.context_length, answerer.context_length)
        self.engine_metrics = decider.engine_metrics or answerer.engine_metrics  # type: ignore[misc]

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        """The answer model's completion."""
        return await self.answerer.generate(request, on_text)

    async def continuation_logprob(self, messages: list[dict[str, str]], continuation: str, end: bool = False) -> tuple[float, int]:
        """The deciding (self-aware) model's log P(continuation | prompt)."""
        return await self.decider.continuation_logprob(messages, continuation, end)

    async def close(self) -> None:
        """Release both models."""
        try:
            await self.decider.close()
        finally:
            await self.answerer.close()
