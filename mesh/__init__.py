"""DiSRouter mesh library: wire protocol, subjects, connection, client, membership and topology."""

from .client import MeshClient, MeshError, ask
from .connection import NatsAuth
from .protocol import PROTOCOL_VERSION, Answer, Error, ErrorCode, Hop, Query

__all__ = ["PROTOCOL_VERSION", "Answer", "Error", "ErrorCode", "Hop", "MeshClient", "MeshError", "NatsAuth", "Query", "ask"]
