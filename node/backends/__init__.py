"""Model backends, registered by name: ``load_backend("transformers", "smollm2-135m")``."""

from __future__ import annotations

from collections.abc import Callable

from .base import Backend, Generation, GenerationRequest, PromptTooLongError
from .sources import ModelNotFoundError, ModelSource, resolve


def _transformers(source: ModelSource, **options) -> Backend:
    from .transformers import TransformersBackend

    return TransformersBackend.load(source, **options)


BACKENDS: dict[str, Callable[..., Backend]] = {"transformers": _transformers}


def load_backend(kind: str, model: str | ModelSource, **options) -> Backend:
    """Load ``model`` (name, folder, .gguf or resolved source) with the backend called ``kind``."""
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; choose from {', '.join(BACKENDS)}")
    source = model if isinstance(model, ModelSource) else resolve(model)
    return BACKENDS[kind](source, **options)


__all__ = [
    "BACKENDS",
    "Backend",
    "Generation",
    "GenerationRequest",
    "ModelNotFoundError",
    "ModelSource",
    "PromptTooLongError",
    "load_backend",
    "resolve",
]
