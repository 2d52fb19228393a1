"""Hugging Face transformers backend: CPU or CUDA, chat templates, micro-batched generation.

Concurrent requests are collected for a short window and run as one left-padded ``generate``
call per batch (rows with the same sampling settings), so throughput grows with concurrency.
Up to ``concurrency`` batches run at once in worker threads, so a long generation never holds
back queries that arrive after it started.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from .base import Backend, Generation, GenerationRequest, PromptTooLongError, TextSink
from .sources import ModelSource, local_folder

log = structlog.get_logger("disrouter.node.transformers")

_PLAIN_TEMPLATE_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class _Pending:
    request: GenerationRequest
    prompt_ids: list[int]
    on_text: TextSink | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    def sampling_key(self) -> tuple:
        r = self.request
        return (r.temperature, r.top_p if r.temperature > 0 else 1.0, r.suppress)


@dataclass
class _Row:
    """Per-row bookkeeping inside one batched generate call."""

    pending: _Pending
    max_new: int
    tokens: list[int] = field(default_factory=list)
    finished: bool = False
    hit_deadline: bool = False
    streamed: str = ""


class _BatchControl:
    """Stopping criteria and streamer for one batch: per-row limits, deadlines and text deltas."""

    def __init__(self, rows: list[_Row], tokenizer, stop_ids: set[int]) -> None:  # noqa: ANN001
        self.rows = rows
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self._prompt_seen = False

    # transformers' StoppingCriteria protocol: a bool per row, True when that row is done.
    def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001, ANN204
        import torch

        now = time.time()
        for row in self.rows:
            deadline = row.pending.request.deadline
            if not row.finished and deadline is not None and now >= deadline:
                row.finished = row.hit_deadline = True
        return torch.tensor([row.finished for row in self.rows], dtype=torch.bool, device=input_ids.device)

    # transformers' BaseStreamer protocol: put() gets the prompt once, then one token per row per step.
    def put(self, value) -> None:  # noqa: ANN001
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for row, token in zip(self.rows, value.tolist()):
            if row.finished:
                continue
            if token in self.stop_ids:
                row.finished = True
                continue
            row.tokens.append(token)
            if len(row.tokens) >= row.max_new:
                row.finished = True
            if row.pending.on_text is not None:
                self._stream(row)

    def end(self) -> None:
        pass

    def _stream(self, row: _Row) -> None:
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd") or not text.startswith(row.streamed):
            return  # an incomplete multi-byte character: wait for the next token
        delta, row.streamed = text[len(row.streamed):], text
        if delta:
            row.pending.loop.call_soon_threadsafe(row.pending.on_text, delta)


class _PrefixCache:
    """KV caches of recently seen chat prefixes (every message but the last).

    The scenario instruction and demonstrations are the same for every query, so scoring a query
    prefills only its own last message and the continuation.
    """

    def __init__(self, size: int = 8) -> None:
        self._entries: OrderedDict[tuple[int, ...], object] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, prefix_ids: list[int]) -> object | None:
        """A private copy of the cache for ``prefix_ids`` (callers extend it), or None."""
        with self._lock:
            cache = self._entries.get(tuple(prefix_ids))
            if cache is None:
                return None
            self._entries.move_to_end(tuple(prefix_ids))
        return copy.deepcopy(cache)

    def put(self, prefix_ids: list[int], cache: object) -> None:
        with self._lock:
            self._entries[tuple(prefix_ids)] = cache
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


class TransformersBackend(Backend):
    kind = "transformers"
    capabilities = frozenset({"stream", "score"})

    def __init__(self, model, tokenizer, model_name: str, concurrency: int = 2, max_batch: int = 16, batch_window_s: float = 0.005) -> None:  # noqa: ANN001
        self._model = model
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not re-entrant
        self._pool = ThreadPoolExecutor(max_workers=concurrency + 1, thread_name_prefix="generate")
        self._slots = asyncio.Semaphore(concurrency)
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._batcher: asyncio.Task | None = None
        self._max_batch = max_batch
        self._window = batch_window_s
        self.model_name = model_name
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        eos = model.generation_config.eos_token_id
        self._stop_ids = {t for t in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id] if t is not None}
        self.batches_run = 0  # for tests and benchmarks: how many generate calls served the rows
        self._prefixes = _PrefixCache()
        self.prefix_cache = True  # score with cached KV of shared chat prefixes (`bench perf` also measures without)

    @classmethod
    def load(cls, source: ModelSource, device: str | None = None, concurrency: int = 2, max_batch: int = 16) -> "TransformersBackend":
        """Load a resolved model onto ``device`` (CUDA when available, else CPU)."""
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        folder = local_folder(source)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        log.info("model_loaded", model=source.name, folder=str(folder), device=device)
        return cls(model, tokenizer, source.name, concurrency=concurrency, max_batch=max_batch)

    # --- public API ---------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        loop = asyncio.get_running_loop()
        prompt_ids = await loop.run_in_executor(self._pool, self._prompt_ids, request.messages)
        if len(prompt_ids) >= self.context_length:
            raise PromptTooLongError(
                f"prompt is {len(prompt_ids)} tokens; model {self.model_name} has a context of {self.context_length}"
            )
        pending = _Pending(request, prompt_ids, on_text, loop.create_future(), loop)
        self._queue.append(pending)
        self._ensure_batcher()
        self._wakeup.set()
        return await pending.future

    async def continuation_logprob(self, messages: list[dict[str, str]], continuation: str) -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._score_blocking, messages, continuation)

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("backend closed"))
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- batching -----------------------------------------------------------------------------

    def _ensure_batcher(self) -> None:
        if self._batcher is None or self._batcher.done():
            self._wakeup = asyncio.Event()
            self._batcher = asyncio.create_task(self._batch_loop(), name="transformers-batcher")

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await asyncio.sleep(self._window)  # let queries that arrive together share the batch
            batch = self._take_batch()
            work = loop.run_in_executor(self._pool, self._generate_batch, batch)
            work.add_done_callback(lambda done, batch=batch: self._finish(done, batch))

    def _take_batch(self) -> list[_Pending]:
        key = self._queue[0].sampling_key()
        batch, rest = [], deque()
        while self._queue:
            item = self._queue.popleft()
            (batch if item.sampling_key() == key and len(batch) < self._max_batch else rest).append(item)
        self._queue.extendleft(reversed(rest))
        return batch

    def _finish(self, done: asyncio.Future, batch: list[_Pending]) -> None:
        self._slots.release()
        error = done.exception()
        results = None if error else done.result()
        for index, pending in enumerate(batch):
            if pending.future.done():
                continue
            if error is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(results[index])

    # --- blocking work (worker threads) -------------------------------------------------------

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        with self._tokenizer_lock:
            if self._tokenizer.chat_template:
                return list(self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
            text = "".join(f"{_PLAIN_TEMPLATE_ROLES[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"
            return self._tokenizer(text)["input_ids"]

    def _phrase_ids(self, phrases: tuple[str, ...]) -> list[list[int]] | None:
        with self._tokenizer_lock:
            ids = [self._tokenizer(p, add_special_tokens=False)["input_ids"] for p in phrases]
        return [i for i in ids if i] or None

    def _generate_batch(self, batch: list[_Pending]) -> list[Generation]:
        import torch
        from transformers import StoppingCriteriaList

        width = max(len(p.prompt_ids) for p in batch)
        pad = self._tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p.prompt_ids)) + p.prompt_ids for p in batch])
        attention = torch.tensor([[0] * (width - len(p.prompt_ids)) + [1] * len(p.prompt_ids) for p in batch])
        rows = [_Row(p, max_new=min(p.request.max_tokens, self.context_length - len(p.prompt_ids))) for p in batch]
        control = _BatchControl(rows, self._tokenizer, self._stop_ids)
        first = batch[0].request
        sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p} if first.temperature > 0 else {"do_sample": False}
        device = self._model.device
        with torch.inference_mode():
            self._model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max(row.max_new for row in rows),
                bad_words_ids=self._phrase_ids(first.suppress) if first.suppress else None,
                stopping_criteria=StoppingCriteriaList([control]),
                streamer=control,
                pad_token_id=pad,
                **sampling,
            )
        self.batches_run += 1
        return [self._result(row) for row in rows]

    def _result(self, row: _Row) -> Generation:
        with self._tokenizer_lock:
            text = self._tokenizer.decode(row.tokens, skip_special_tokens=True).strip()
        if row.pending.on_text is not None and text.startswith(row.streamed) and len(text) > len(row.streamed):
            row.pending.loop.call_soon_threadsafe(row.pending.on_text, text[len(row.streamed):])
        if row.hit_deadline:
            reason = "deadline"
        elif len(row.tokens) >= row.max_new:
            reason = "length"
        else:
            reason = "stop"
        return Generation(text=text, prompt_tokens=len(row.pending.prompt_ids), completion_tokens=len(row.tokens), finish_reason=reason)

    def _score_blocking(self, messages: list[dict[str, str]], continuation: str) -> tuple[float, int]:
        import torch

        prompt_ids = self._prompt_ids(messages)
        with self._tokenizer_lock:
            continuation_ids = self._tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(continuation_ids) > self.context_length:
            raise PromptTooLongError(
                f"prompt is {len(prompt_ids)} tokens; model {self.model_name} has a context of {self.context_length}"
            )
        if not continuation_ids:
            return 0.0, len(prompt_ids)
        ids = prompt_ids + continuation_ids
        prefix_ids = self._shared_prefix(messages, prompt_ids) if self.prefix_cache else []
        with torch.inference_mode():
            cache = self._prefix_cache(prefix_ids) if prefix_ids else None
            start = len(prefix_ids) if cache is not None else 0
            rest = torch.tensor([ids[start:]], device=self._model.device)
            logits = self._model(input_ids=rest, past_key_values=cache, use_cache=cache is not None).logits[0].float()
        # logits[i] predicts token start + i + 1; the continuation starts at len(prompt_ids)
        logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 - start : -1], dim=-1)
        picked = logprobs.gather(1, torch.tensor(continuation_ids, device=logits.device).unsqueeze(1))
        return float(picked.sum()), len(prompt_ids)

    def _shared_prefix(self, messages: list[dict[str, str]], prompt_ids: list[int]) -> list[int]:
        """Token ids of every message but the last, when they are a strict prefix of the prompt."""
        if len(messages) < 2 or not self._tokenizer.chat_template:
            return []
        with self._tokenizer_lock:
            prefix = list(self._tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=False)["input_ids"])
        return prefix if len(prefix) < len(prompt_ids) and prompt_ids[: len(prefix)] == prefix else []

    def _prefix_cache(self, prefix_ids: list[int]) -> object:
        """A private KV cache holding ``prefix_ids``, prefilled once per distinct prefix."""
        cache = self._prefixes.get(prefix_ids)
        if cache is None:
            import torch

            ids = torch.tensor([prefix_ids], device=self._model.device)
            self._prefixes.put(prefix_ids, self._model(input_ids=ids, use_cache=True).past_key_values)
            cache = self._prefixes.get(prefix_ids)
        return cache
