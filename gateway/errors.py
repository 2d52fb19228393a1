"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

Mesh error codes map onto HTTP statuses here and nowhere else (the README's gateway section lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from disrouter.mesh.client import MeshError

# mesh error code -> (HTTP status, OpenAI error type)
MESH_STATUS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "invalid_request_error"),
    "invalid_query": (400, "invalid_request_error"),
    "unsupported_version": (400, "invalid_request_error"),
    "too_large": (413, "invalid_request_error"),
    "overloaded": (429, "rate_limit_error"),
    "internal": (502, "server_error"),  # a node's model backend failed
    "bad_reply": (502, "server_error"),
    "interrupted": (502, "server_error"),  # the node streaming the answer went silent
    "unavailable": (503, "server_error"),  # no node serves the subject
    "deadline_exceeded": (504, "timeout_error"),
    "timeout": (504, "timeout_error"),  # no answer within the request's time
    "forbidden": (500, "server_error"),  # the gateway's own NATS user may not publish there
}


@dataclass
class GatewayError(Exception):
    """A request the gateway answers with an error."""

    status: int
    code: str
    message: str
    type: str = "invalid_request_error"
    param: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"} if self.status in (429, 503) else {}


def from_mesh(exc: MeshError) -> GatewayError:
    """The HTTP answer to a mesh error: its code kept, its status and type from MESH_STATUS."""
    status, kind = MESH_STATUS.get(exc.code, (500, "server_error"))
    return GatewayError(status, exc.code, exc.message, kind)


def bad_request(message: str, param: str | None = None, code: str = "invalid_query") -> GatewayError:
    return GatewayError(400, code, message, "invalid_request_error", param)
