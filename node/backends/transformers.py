"""Hugging Face transformers backend: CPU or CUDA, chat templates, generation in worker threads."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import structlog

from .base import Backend, Generation, GenerationRequest, PromptTooLongError
from .sources import ModelSource, local_folder

log = structlog.get_logger("disrouter.node.transformers")

_PLAIN_TEMPLATE_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


class _DeadlineCriteria:
    """Stops generation once the query's deadline passes."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.hit = False

    def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001 - transformers' StoppingCriteria protocol
        import torch

        self.hit = time.time() >= self.deadline
        return torch.full((input_ids.shape[0],), self.hit, dtype=torch.bool, device=input_ids.device)


class TransformersBackend(Backend):
    kind = "transformers"

    def __init__(self, model, tokenizer, model_name: str, concurrency: int = 4) -> None:  # noqa: ANN001
        self._model = model
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not re-entrant
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="generate")
        self.model_name = model_name
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)

    @classmethod
    def load(cls, source: ModelSource, device: str | None = None, concurrency: int = 4) -> "TransformersBackend":
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
        return cls(model, tokenizer, source.name, concurrency=concurrency)

    async def generate(self, request: GenerationRequest) -> Generation:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._generate_blocking, request)

    async def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _prompt_ids(self, messages: list[dict[str, str]]):  # noqa: ANN202 - a torch tensor
        with self._tokenizer_lock:
            if self._tokenizer.chat_template:
                encoded = self._tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )
                return encoded["input_ids"]
            text = "".join(f"{_PLAIN_TEMPLATE_ROLES[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"
            return self._tokenizer(text, return_tensors="pt")["input_ids"]

    def _phrase_ids(self, phrases: tuple[str, ...]) -> list[list[int]] | None:
        with self._tokenizer_lock:
            ids = [self._tokenizer(p, add_special_tokens=False)["input_ids"] for p in phrases]
        return [i for i in ids if i] or None

    def _generate_blocking(self, request: GenerationRequest) -> Generation:
        import torch
        from transformers import StoppingCriteriaList

        input_ids = self._prompt_ids(request.messages)
        prompt_tokens = int(input_ids.shape[1])
        room = self.context_length - prompt_tokens
        if room < 1:
            raise PromptTooLongError(
                f"prompt is {prompt_tokens} tokens; model {self.model_name} has a context of {self.context_length}"
            )
        max_new = min(request.max_tokens, room)
        criteria = _DeadlineCriteria(request.deadline) if request.deadline is not None else None
        sampling = {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p} if request.temperature > 0 else {"do_sample": False}
        input_ids = input_ids.to(self._model.device)
        with torch.inference_mode():
            output = self._model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new,
                bad_words_ids=self._phrase_ids(request.suppress) if request.suppress else None,
                stopping_criteria=StoppingCriteriaList([criteria]) if criteria else None,
                pad_token_id=self._tokenizer.pad_token_id,
                **sampling,
            )
        new_tokens = output[0, prompt_tokens:]
        with self._tokenizer_lock:
            text = self._tokenizer.decode(new_tokens, skip_special_tokens=True)
        completion_tokens = int(new_tokens.shape[0])
        if criteria is not None and criteria.hit:
            reason = "deadline"
        elif completion_tokens >= max_new:
            reason = "length"
        else:
            reason = "stop"
        return Generation(text=text.strip(), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, finish_reason=reason)
