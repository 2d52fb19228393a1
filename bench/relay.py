"""One process of a raw nats-py relay chain: the like-for-like baseline of a mesh hand-off chain.

``python -m disrouter.bench.relay NATS_URL LEGS_FILE INDEX`` subscribes to leg INDEX's subject (in
the queue group the mesh uses there) and passes each message on as a node would, without any mesh
logic: it reads the reply subject (the NATS one on the first leg, ``reply_to`` in the payload
after it), then publishes the next leg's payload, with that reply subject written in, to the next
leg's subject, or, on the last leg, the final reply to the reply subject. LEGS_FILE (msgpack) holds
the legs captured from a real query through the mesh, so subjects and payload sizes match it.
Prints ``ready`` once subscribed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import msgpack
import nats
from nats.aio.msg import Msg


def load_legs(path: Path) -> list[dict]:
    """The captured legs: [{subject, queue, payload}, ...], then the final reply as {payload}."""
    return msgpack.unpackb(path.read_bytes())


async def serve(url: str, legs: list[dict], index: int) -> None:
    nc = await nats.connect(url, name=f"disrouter-bench-relay{index}")
    leg, after = legs[index], legs[index + 1]
    template = msgpack.unpackb(after["payload"])  # what this process sends: a hand-off, or the final reply
    last = index + 2 == len(legs)

    async def relay(msg: Msg) -> None:
        data = msgpack.unpackb(msg.data)
        reply_to = msg.reply if index == 0 else data["reply_to"]
        if last:
            await nc.publish(reply_to, msgpack.packb(template))
        else:
            await nc.publish(after["subject"], msgpack.packb(template | {"reply_to": reply_to}))

    await nc.subscribe(leg["subject"], queue=leg["queue"], cb=relay)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(serve(sys.argv[1], load_legs(Path(sys.argv[2])), int(sys.argv[3])))
    except KeyboardInterrupt:
        pass
