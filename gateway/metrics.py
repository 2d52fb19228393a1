"""The gateway's Prometheus metrics (own registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    """Requests by outcome, latency, requests in flight, tokens, answers by the model that gave them."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "disrouter_gateway_requests", "chat completion requests by HTTP status and code", ["status", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "disrouter_gateway_request_seconds", "time to the last byte of a chat completion", ["stream"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.in_flight = Gauge("disrouter_gateway_in_flight", "chat completion requests being served", registry=self.registry)
        self.tokens = Counter("disrouter_gateway_tokens", "tokens in answers, by kind", ["kind"], registry=self.registry)
        self.answers = Counter("disrouter_gateway_answers", "answers by the tier that gave them", ["model"], registry=self.registry)

    def answered(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.requests.labels("200", "ok").inc()
        self.answers.labels(model).inc()
        self.tokens.labels("prompt").inc(prompt_tokens)
        self.tokens.labels("completion").inc(completion_tokens)

    def failed(self, status: int, code: str) -> None:
        self.requests.labels(str(status), code).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
