"""A node's settings, written once: each field carries its default, help and flag.

`disrouter-node` builds its flags from these dataclasses (``disrouter.cli.common.add_dataclass_options``),
the way TRL's scripts parse their configs, so a default or a help line lives here and nowhere else.
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any

from disrouter.mesh.membership import DEFAULT_REGISTRY_TTL_S

from .backends import BACKENDS


class ConfigError(Exception):
    """Node settings that contradict each other, the topology file or the backend."""


def setting(default: Any, help: str, **metadata: Any) -> Any:  # noqa: A002, ANN401 - a dataclass field
    """A dataclass field with command-line metadata: help, and optionally flag, metavar, choices, group, backend."""
    return field(default=default, metadata={"help": help, **metadata})


def flag_of(f: Field) -> str:
    """The command-line flag of a settings field: its ``flag`` metadata, else ``--field-name``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _flag(cls: type, name: str) -> str:
    return flag_of(next(f for f in fields(cls) if f.name == name))


@dataclass
class NodeSettings:
    """How a node holds, hands off and times out the queries it serves."""

    handoff_timeout_s: float = setting(2.0, "seconds to wait for a peer to confirm a hand-off", flag="--handoff-timeout", metavar="S")
    default_timeout_s: float = setting(120.0, "deadline in seconds for queries that arrive without one", flag="--default-timeout", metavar="S")
    drain_timeout_s: float = setting(60.0, "seconds SIGTERM waits for in-flight queries", flag="--drain-timeout", metavar="S")
    registry_ttl_s: float = setting(DEFAULT_REGISTRY_TTL_S, "seconds before a silent node is dropped", flag="--registry-ttl", metavar="S")
    heartbeat_s: float = setting(1.0, "seconds between Progress heartbeats to clients that ask for them", flag="--heartbeat", metavar="S")
    max_in_flight: int = setting(
        64,
        "queries held at once; beyond it hand-offs are refused and new requests go to a replica or stronger tier, "
        "else get an `overloaded` Error",
        metavar="N",
    )
    max_overflow: int = setting(256, "requests passed on at once while full; beyond it they get `overloaded` at once", metavar="N")
    http_port: int | None = setting(None, "serve /healthz, /readyz and /metrics on this port (0: any free port; default: off)", metavar="P")
    http_host: str = setting("0.0.0.0", "address the --http-port endpoints listen on", metavar="HOST")
    tracing: bool = setting(False, "send OpenTelemetry spans (OTLP/HTTP, set by OTEL_EXPORTER_OTLP_* variables; needs the tracing extra)")

    def __post_init__(self) -> None:
        for name in ("handoff_timeout_s", "default_timeout_s", "drain_timeout_s", "registry_ttl_s", "heartbeat_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{_flag(NodeSettings, name)} must be a positive number of seconds")
        for name in ("max_in_flight", "max_overflow"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_flag(NodeSettings, name)} must be at least 1")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigError(f"{_flag(NodeSettings, 'http_port')} must be a port number from 0 to 65535")


@dataclass
class BackendSettings:
    """Which backend loads the model, and its loader options (``backend`` metadata: one backend's own)."""

    backend: str = setting("transformers", "model backend", choices=sorted(BACKENDS))
    device: str | None = setting(None, "torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    concurrency: int = setting(2, "generation batches run at once")
    max_batch: int = setting(16, "queries per generation batch")
    answer_model: str | None = setting(
        None,
        "probe policy only: these weights write the answers (name, folder or .gguf, as --model; e.g. family-m) while --model's "
        "decide; loads a second model (default: the topology entry's answer_model, else --model answers)",
        metavar="MODEL",
    )
    max_model_len: int | None = setting(None, "context length (default: the model's)", group="vllm", backend="vllm")
    gpu_memory_utilization: float | None = setting(
        None, "share of GPU memory (on CPU: of RAM) vLLM reserves (default 0.9 GPU, 0.2 CPU)", group="vllm", backend="vllm"
    )
    enforce_eager: bool = setting(False, "skip graph compilation: faster start, slower decoding", group="vllm", backend="vllm")
    dtype: str | None = setting(
        None, "weights dtype, e.g. float16, bfloat16, float32 (default: float32 on CPU, the model's on GPU)", group="vllm", backend="vllm"
    )
    endpoint: str | None = setting(
        None, "the server's API root, e.g. http://127.0.0.1:8000/v1; --model is its model name", metavar="URL", group="openai", backend="openai"
    )
    api_key_env: str | None = setting(
        None, "environment variable holding the API key (default: no key)", metavar="VAR", group="openai", backend="openai"
    )

    def loader_options(self) -> dict[str, object]:
        """Options for ``load_backend``; a backend's own options are refused for the others."""
        options: dict[str, object] = {"concurrency": self.concurrency, "max_batch": self.max_batch}
        if self.device:
            options["device"] = self.device
        for backend in dict.fromkeys(f.metadata["backend"] for f in fields(self) if "backend" in f.metadata):
            given = [f for f in fields(self) if f.metadata.get("backend") == backend and getattr(self, f.name) not in (None, False)]
            if given and backend != self.backend:
                flags = ", ".join(flag_of(f) for f in given)
                raise ConfigError(f"{flags} only appl{'y' if len(given) > 1 else 'ies'} to --backend {backend}")
            options |= {f.name: getattr(self, f.name) for f in given}
        if self.backend == "openai" and not self.endpoint:
            raise ConfigError("--backend openai needs --endpoint URL (the server's API root, e.g. http://127.0.0.1:8000/v1)")
        return options
