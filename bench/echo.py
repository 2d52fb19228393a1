"""A raw nats-py echo responder: the baseline the mesh's per-hop cost is measured against.

Run as ``python -m disrouter.bench.echo NATS_URL SUBJECT``; prints ``ready`` once subscribed.
"""

from __future__ import annotations

import asyncio
import sys

import nats
from nats.aio.msg import Msg


async def serve(url: str, subject: str) -> None:
    nc = await nats.connect(url, name="disrouter-bench-echo")

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(serve(sys.argv[1], sys.argv[2]))
    except KeyboardInterrupt:
        pass
