"""Replies counted on the wire: final messages (Answer or Error) per send and Answers per query id.

Every send of a query has a reply subject of its own, so a second final message on one subject is
a duplicate the mesh made. A second Answer for one id can also come from the client sending the
id again (a re-send after a silence, or a retry), which the delivery promise allows.
"""

from __future__ import annotations

import collections
from typing import Any

import msgpack
from nats.aio.client import Client
from nats.aio.subscription import Subscription


class WireCount:
    def __init__(self) -> None:
        self.finals: collections.Counter[str] = collections.Counter()  # final messages per reply subject (per send)
        self.answers: collections.Counter[str] = collections.Counter()  # Answers per query id
        self.errors: list[dict] = []
        self.routes: collections.Counter[str] = collections.Counter()  # hop decisions of the Answers, joined by +
        self.beats = 0  # Progress heartbeats

    def record(self, subject: str, data: bytes) -> dict[str, Any] | None:
        """Count one message sent to a reply subject; the final message decoded, else None."""
        try:
            reply = msgpack.unpackb(data)
        except Exception:  # not a mesh reply (a hand-off confirmation, a JetStream API reply)
            return None
        if not isinstance(reply, dict):
            return None
        if "progress" in reply:
            self.beats += 1
            return None
        if "error" in reply:
            self.errors.append(reply["error"])
        elif "path" in reply and "text" in reply:
            self.answers[reply["id"]] += 1
            self.routes["+".join(hop["decision"] for hop in reply["path"])] += 1
        else:  # a streamed chunk
            return None
        self.finals[subject] += 1
        return reply

    async def tap(self, nc: Client, subject: str) -> Subscription:
        """Count every message to ``subject`` (a wildcard over reply subjects) that reaches ``nc``."""

        async def on_message(msg) -> None:  # noqa: ANN001
            self.record(msg.subject, msg.data)

        return await nc.subscribe(subject, cb=on_message, pending_msgs_limit=-1, pending_bytes_limit=-1)

    @property
    def duplicated_per_send(self) -> int:
        """Final messages beyond the first on one reply subject: always a fault of the mesh."""
        return sum(n - 1 for n in self.finals.values())

    @property
    def answered_again(self) -> int:
        """Answers beyond the first for one query id."""
        return sum(n - 1 for n in self.answers.values())

    @property
    def duplicated(self) -> int:
        return self.answered_again + self.duplicated_per_send
