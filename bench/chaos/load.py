"""Open-loop load: queries at a fixed rate from several clients, none waiting for another, mixing
streamed and plain and the three scenarios; every reply counted on the wire as it reaches the client."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from disrouter.mesh.client import MeshClient, MeshError
from disrouter.mesh.objective import SCENARIOS
from disrouter.mesh.protocol import Answer

from ..wire import WireCount

CLIENTS = 3
QUERY_TIMEOUT_S = 20.0


@dataclass
class Record:
    id: str
    client: int
    stream: bool
    scenario: str
    sent: float  # seconds from the start of the load
    done: float = 0.0
    outcome: str = "pending"  # answered, or an error code

    @property
    def latency_ms(self) -> float:
        return (self.done - self.sent) * 1000


class Load:
    def __init__(self, urls: str, prefix: str, rate: float, seed: int) -> None:
        self.urls, self.prefix, self.rate = urls, prefix, rate
        self.rng = random.Random(seed)
        self.records: list[Record] = []
        self.wire = WireCount()
        self.clients: list[MeshClient] = []
        self.t0 = time.monotonic()

    async def connect(self) -> None:
        for i in range(CLIENTS):
            inbox = f"_INBOX.chaos.c{i}"
            client = await MeshClient.connect(self.urls, self.prefix, inbox_prefix=inbox)

            async def tap(msg) -> None:  # noqa: ANN001
                self.wire.record(msg.subject, msg.data)

            await client.nc.subscribe(f"{inbox}.>", cb=tap, pending_msgs_limit=-1, pending_bytes_limit=-1)
            self.clients.append(client)

    async def run(self, seconds: float, t0: float) -> None:
        """Send ``rate`` queries a second for ``seconds``, then wait for the last ones to finish."""
        self.t0 = t0
        tasks = []
        n = 0
        while (due := n / self.rate) < seconds:
            await asyncio.sleep(max(due - (time.monotonic() - t0), 0))
            record = Record(id=f"q{n:06d}", client=n % CLIENTS, stream=self.rng.random() < 0.5,
                            scenario=self.rng.choice(list(SCENARIOS)), sent=time.monotonic() - t0)
            self.records.append(record)
            tasks.append(asyncio.create_task(self._one(record, "#reject " if self.rng.random() < 0.5 else "")))
            n += 1
        await asyncio.gather(*tasks)

    async def _one(self, record: Record, tag: str) -> None:
        client = self.clients[record.client]
        question = f"{tag}chaos question {record.id}"
        options = {"timeout": QUERY_TIMEOUT_S, "query_id": record.id, "scenario": record.scenario, "max_tokens": 8}
        try:
            if record.stream:
                async for event in client.stream(question, retries=2, **options):
                    if isinstance(event, Answer):
                        record.outcome = "answered"
            else:
                await client.ask(question, retries=2, **options)
                record.outcome = "answered"
        except MeshError as exc:
            record.outcome = exc.code
        except Exception as exc:  # noqa: BLE001  (counted, not hidden)
            record.outcome = f"exception:{type(exc).__name__}"
        record.done = time.monotonic() - self.t0

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
