"""NATS subject and registry names for one mesh, derived from its prefix."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "disrouter"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def subject_token(name: str) -> str:
    """Turn a model key or node id into a single NATS subject token (no dots, spaces or wildcards)."""
    token = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")
    if not token:
        raise ValueError(f"{name!r} has no characters usable in a NATS subject")
    return token


@dataclass(frozen=True)
class Subjects:
    """Subjects of the mesh named by ``prefix``; several meshes can share one NATS server."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not all(_TOKEN.match(part) for part in self.prefix.split(".")):
            raise ValueError(f"mesh prefix {self.prefix!r} must be dot-separated tokens of letters, digits, '_' or '-'")

    @property
    def ingress(self) -> str:
        return f"{self.prefix}.ingress"

    def model(self, model_key: str) -> str:
        return f"{self.prefix}.model.{subject_token(model_key)}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}.node.{subject_token(node_id)}"

    @property
    def registry_bucket(self) -> str:
        """JetStream key-value bucket holding this mesh's NodeCards."""
        return "disrouter-nodes-" + self.prefix.replace(".", "_")

    ingress_queue = "entry"
    model_queue = "replicas"
