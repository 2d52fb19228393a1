"""A measuring tool, not for serving: replies instantly by a rule, so benchmarks measure the mesh.

The rule reads the last user message: ``#reject`` makes the reply the reject phrase (unless the
phrase is suppressed, i.e. the node must answer), ``#skip`` also makes P(reject) 0.999 so the
probe policy skips hops; anything else is answered with ``ok``.
"""

from __future__ import annotations

import math

from disrouter.node.prompts import REJECT_PHRASE

from .base import Backend, Generation, GenerationRequest, TextSink


def _last_user_text(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


class InstantBackend(Backend):
    kind = "instant"
    capabilities = frozenset({"stream", "score"})

    def __init__(self, model_name: str = "instant") -> None:
        self.model_name = model_name
        self.context_length = 1_000_000

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        wants_reject = "#reject" in _last_user_text(request.messages) or "#skip" in _last_user_text(request.messages)
        text = REJECT_PHRASE if wants_reject and REJECT_PHRASE not in request.suppress else "ok"
        if on_text is not None:
            on_text(text)
        prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
        return Generation(text=text, prompt_tokens=prompt_tokens, completion_tokens=1)

    async def continuation_logprob(self, messages: list[dict[str, str]], continuation: str, end: bool = False) -> tuple[float, int]:
        text = _last_user_text(messages)
        probability = 0.999 if "#skip" in text else 0.9 if "#reject" in text else 0.01
        return math.log(probability), sum(len(m["content"].split()) for m in messages)
