"""Tracing across hops: W3C trace context in NATS message headers, one span per step; off unless enabled.

OpenTelemetry is an optional extra (``pip install 'disrouter[tracing]'``) imported only by
``enable()``. While tracing is off, ``span()`` returns one shared null context and ``headers()``
returns None (messages carry no headers), so it costs nothing. When on, ``MeshClient`` starts the
root span (``ask``) and sends its ``traceparent``; each node opens a ``hop`` span as the child of
the header it received, with ``decide``, ``generate`` and ``hand-off`` spans inside; a hand-off
sends the ``hand-off`` span's own ``traceparent``, so the next node's ``hop`` is its child.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

_NULL = contextlib.nullcontext()
_state: dict[str, Any] = {}  # "tracer" and "propagator" while tracing is on


class TracingUnavailable(Exception):
    """Tracing was asked for but OpenTelemetry is not installed."""


def enable(provider: Any = None, *, service_name: str = "disrouter", instance: str | None = None) -> None:  # noqa: ANN401 - an OTel TracerProvider
    """Trace this process: spans go to ``provider``, by default an OTLP/HTTP exporter that the
    standard ``OTEL_EXPORTER_OTLP_*`` variables configure (endpoint default http://localhost:4318)."""
    try:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        raise TracingUnavailable("tracing needs OpenTelemetry: pip install 'disrouter[tracing]'") from None
    if provider is None:
        provider = _otlp_provider(service_name, instance)
    _state["tracer"] = provider.get_tracer("disrouter")
    _state["propagator"] = TraceContextTextMapPropagator()


def disable() -> None:
    """Stop tracing in this process (spans already started end normally)."""
    _state.clear()


def enabled() -> bool:
    return "tracer" in _state


def _otlp_provider(service_name: str, instance: str | None) -> Any:  # noqa: ANN401
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TracingUnavailable("tracing needs the OpenTelemetry SDK and OTLP exporter: pip install 'disrouter[tracing]'") from None
    attributes = {"service.name": service_name} | ({"service.instance.id": instance} if instance else {})
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def span(name: str, *, carrier: Mapping[str, str] | None = None, kind: str = "internal", **attributes: Any) -> contextlib.AbstractContextManager:  # noqa: ANN401
    """A span named ``name`` as the current span: the child of the trace context in ``carrier``
    (a received message's headers) when given, else of the current span. A null context when off."""
    tracer = _state.get("tracer")
    if tracer is None:
        return _NULL
    from opentelemetry.trace import SpanKind

    parent = _state["propagator"].extract(dict(carrier)) if carrier is not None else None
    values = {key: value for key, value in attributes.items() if value is not None}
    return tracer.start_as_current_span(name, context=parent, kind=SpanKind[kind.upper()], attributes=values)


def headers() -> dict[str, str] | None:
    """NATS headers carrying the current span's context (``traceparent``), or None when off."""
    propagator = _state.get("propagator")
    if propagator is None:
        return None
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    return carrier or None


def annotate(**attributes: Any) -> None:  # noqa: ANN401
    """Set attributes on the current span (nothing when off)."""
    if "tracer" not in _state:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(key, value)
