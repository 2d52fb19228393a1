"""The gateway's settings, written once: each field carries its default, help and flag."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from disrouter.mesh.subjects import DEFAULT_PREFIX

API_KEYS_ENV = "DISROUTER_GATEWAY_API_KEYS"  # comma-separated client API keys (none: no key needed)
ROUTED_MODEL = "disrouter"  # the model name that lets the mesh route


class GatewayConfigError(ValueError):
    """Settings the gateway cannot start with."""


def _setting(default: Any, help: str, **metadata: Any) -> Any:  # noqa: A002, ANN401 - a dataclass field
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class GatewaySettings:
    """Where the gateway listens, which mesh it serves and how long a request may take."""

    host: str = _setting("127.0.0.1", "address to listen on (0.0.0.0 in a container)")
    port: int = _setting(8000, "HTTP port")
    prefix: str = _setting(DEFAULT_PREFIX, "mesh subject prefix")
    timeout_s: float = _setting(120.0, "longest a request may take, in seconds (x-disrouter-timeout may ask for less)", flag="--timeout", metavar="S")
    api_keys_file: str | None = _setting(
        None, f"file of client API keys, one a line (also ${API_KEYS_ENV}, comma-separated); none given: no key needed", metavar="FILE"
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise GatewayConfigError(f"--port {self.port} is not a TCP port")
        if not self.timeout_s > 0:
            raise GatewayConfigError("--timeout must be a positive number of seconds")

    def api_keys(self) -> frozenset[str]:
        """Client keys from ``$DISROUTER_GATEWAY_API_KEYS`` and the keys file (blank lines and # comments skipped)."""
        keys = {k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()}
        if self.api_keys_file:
            try:
                with open(self.api_keys_file, encoding="utf-8") as file:
                    lines = [line.strip() for line in file]
            except (OSError, UnicodeDecodeError) as exc:
                raise GatewayConfigError(f"--api-keys-file {self.api_keys_file}: {getattr(exc, 'strerror', None) or exc}") from None
            keys |= {line for line in lines if line and not line.startswith("#")}
            if not keys:
                raise GatewayConfigError(f"--api-keys-file {self.api_keys_file} holds no key")
        return frozenset(keys)
