"""Hugging Face transformers backend: CPU or CUDA, chat templates, micro-batched generation.

Concurrent requests are collected for a short window and decoded as one left-padded batch
(rows with the same sampling settings; the loop is in ``decoding.py``), so throughput grows
with concurrency.
Up to ``concurrency`` batches run at once in worker threads, so a long generation never holds
back queries that arrive after it started. A query whose deadline passes gets its answer at the
deadline (``finish_reason="deadline"``) even while a forward pass is still running; its row then
leaves the batch at the next step.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from .base import Backend, Generation, GenerationRequest, PromptTooLongError, TextSink
from .decoding import PhraseBan, Row, Sampling, TextDeltas, decode, keep_logits
from .sources import ModelSource, local_folder

log = structlog.get_logger("disrouter.node.transformers")

_PLAIN_TEMPLATE_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass(eq=False)  # identity: a query is itself, whatever it asks
class _Pending:
    request: GenerationRequest
    row: Row
    on_text: TextSink | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    def sampling_key(self) -> tuple:
        r = self.request
        return (r.temperature, r.top_p if r.temperature > 0 else 1.0, r.suppress)


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
        return _fork(cache)

    def put(self, prefix_ids: list[int], cache: object) -> None:
        with self._lock:
            self._entries[tuple(prefix_ids)] = cache
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


def _fork(cache: object) -> object:
    """A copy of ``cache`` that the caller may extend without changing the original.

    A plain dynamic layer grows by concatenation (new tensors; the old ones are never written), so
    its copy can share the prefix tensors: no device copy of the prefix per query. Other layer
    kinds (sliding windows, static or linear-attention caches) write in place: those are deep-copied.
    """
    from transformers.cache_utils import DynamicCache, DynamicLayer

    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return copy.deepcopy(cache)
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


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
        self._running: set[_Pending] = set()  # rows of the batches being decoded
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
        row = Row(prompt_ids, max_new=min(request.max_tokens, self.context_length - len(prompt_ids)), deadline=request.deadline)
        pending = _Pending(request, row, on_text, loop.create_future(), loop)
        if on_text is not None:
            row.text = TextDeltas(self._decode)
            row.sink = lambda delta: loop.call_soon_threadsafe(self._deliver, pending, delta)
        self._queue.append(pending)
        self._ensure_batcher()
        self._wakeup.set()
        try:
            if request.deadline is None:
                return await asyncio.shield(pending.future)
            return await asyncio.wait_for(asyncio.shield(pending.future), max(0.0, request.deadline - time.time()))
        except asyncio.TimeoutError:  # the deadline passed while the row waited or decoded: answer now, stop it
            return self._abandon(pending)
        except asyncio.CancelledError:  # nobody wants the text any more: free the row's batch slot
            self._abandon(pending)
            raise

    def _abandon(self, pending: _Pending) -> Generation:
        """Stop decoding ``pending`` (at the worker's next step) and report what it produced so far."""
        pending.row.abandoned = True
        if pending in self._queue:
            self._queue.remove(pending)
        tokens = list(pending.row.tokens)
        return Generation(text=self._decode(tokens).strip(), prompt_tokens=len(pending.row.prompt_ids), completion_tokens=len(tokens), finish_reason="deadline")

    @staticmethod
    def _deliver(pending: _Pending, delta: str) -> None:
        """Hand a text delta to the caller, on the event loop, unless the caller has left."""
        if not pending.row.abandoned:
            pending.on_text(delta)

    async def continuation_logprob(self, messages: list[dict[str, str]], continuation: str, end: bool = False) -> tuple[float, int]:
        """With ``end``, the reply's end is any token ``generate`` stops at (their probabilities summed)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._score_blocking, messages, continuation, end)

    async def close(self) -> None:
        """Fail queued queries; running ones stop at their next step and get what they decoded ("deadline")."""
        if self._batcher is not None:
            self._batcher.cancel()
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("backend closed"))
        for pending in self._running:  # stop decoding at the next step instead of finishing every row
            pending.row.abandoned = True
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
            self._running.update(batch)
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
        self._running.difference_update(batch)
        error = done.exception()
        results = None if error else done.result()
        for index, pending in enumerate(batch):
            if pending.future.done():
                continue
            if error is None:
                pending.future.set_result(results[index])  # an abandoned row's caller may be gone: harmless
            elif not pending.row.abandoned:  # (an error nobody awaits would be logged as never retrieved)
                pending.future.set_exception(error)

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

    def _decode(self, tokens: list[int]) -> str:
        with self._tokenizer_lock:
            return self._tokenizer.decode(tokens, skip_special_tokens=True)

    def _generate_batch(self, batch: list[_Pending]) -> list[Generation]:
        import torch

        first = batch[0].request
        top_k = self._model.generation_config.top_k  # transformers applies it when sampling; so do we
        sampling = Sampling(first.temperature, first.top_p, top_k) if first.temperature > 0 else Sampling()
        phrases = self._phrase_ids(first.suppress) if first.suppress else None
        rows = [p.row for p in batch]
        with torch.inference_mode():
            ban = PhraseBan(phrases, self._model.device) if phrases else None
            decode(self._model, rows, pad_id=self._tokenizer.pad_token_id, stop_ids=self._stop_ids, sampling=sampling, ban=ban)
        self.batches_run += 1
        return [self._result(p) for p in batch]

    def _result(self, pending: _Pending) -> Generation:
        row = pending.row
        text = self._decode(row.tokens).strip()
        if row.text is not None and (rest := row.text.rest(text)):
            row.sink(rest)
        return Generation(text=text, prompt_tokens=len(row.prompt_ids), completion_tokens=len(row.tokens), finish_reason=row.reason or "stop")

    def _score_blocking(self, messages: list[dict[str, str]], continuation: str, end: bool = False) -> tuple[float, int]:
        import torch

        prompt_ids = self._prompt_ids(messages)
        with self._tokenizer_lock:
            continuation_ids = self._tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(continuation_ids) > self.context_length:
            raise PromptTooLongError(
                f"prompt is {len(prompt_ids)} tokens; model {self.model_name} has a context of {self.context_length}"
            )
        if not continuation_ids and not end:
            return 0.0, len(prompt_ids)
        ids = prompt_ids + continuation_ids
        prefix_ids = self._shared_prefix(messages, prompt_ids) if self.prefix_cache else []
        with torch.inference_mode():
            cache = self._prefix_cache(prefix_ids) if prefix_ids else None
            start = len(prefix_ids) if cache is not None else 0
            rest = torch.tensor([ids[start:]], device=self._model.device)
            # only the logits that predict the continuation: the last len(continuation) + 1 positions
            logits = self._model(input_ids=rest, past_key_values=cache, use_cache=cache is not None, **keep_logits(self._model, len(continuation_ids) + 1)).logits[0]
            logprobs = torch.log_softmax(logits[-len(continuation_ids) - 1 :].float(), dim=-1)  # the last row: what follows
            picked = logprobs[:-1].gather(1, torch.tensor(continuation_ids, dtype=torch.long, device=logits.device).unsqueeze(1)).sum()
            if end:
                picked = picked + logprobs[-1, sorted(self._stop_ids)].logsumexp(0)
            return float(picked), len(prompt_ids)  # the call's one device-to-host sync

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
            self._prefixes.put(prefix_ids, self._model(input_ids=ids, use_cache=True, **keep_logits(self._model, 1)).past_key_values)
            cache = self._prefixes.get(prefix_ids)
        return cache
