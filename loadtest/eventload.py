"""eventload: /api/events subscribers plus an event source, to measure the event stream under load.

Opens ``--subscribers`` SSE streams (raw sockets on asyncio + uvloop: the client costs little),
and makes events at ``--rate`` per second with plain-HTTP agents that connect and say goodbye
(each cycle: a full-state POST from a new uid -> ``agent.connected``, then an ``agent_disconnect``
POST -> ``agent.disconnected``). Run it next to ``wsload.py`` (the heartbeating fleet, whose p99
is the agents' figure). Prints one JSON: events published (counted by the source), events
delivered (summed over subscribers, over the steady window) and per-subscriber minimum.

Usage: ``python loadtest/eventload.py --url http://127.0.0.1:4320 --token $TOKEN
--subscribers 100 --rate 200 --duration-s 30``. Loopback targets only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from urllib.parse import urlsplit

import uvloop

from opamp_fast.protocol import pb


async def subscriber(host: str, port: int, token: str, counts: list[int], i: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /api/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    tail = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return
        data = tail + chunk
        counts[i] += data.count(b"\ndata: ")
        tail = data[-8:]


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(
        b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    assert head.startswith(b"HTTP/1.1 200"), head[:40]


async def churner(host: str, port: int, per_s: float, stop: float, made: list[int]) -> None:
    """Short-lived plain-HTTP agents, each on its own connection (as real agents are: one
    connection sending 200 requests a second would exceed the server's per-connection budget)."""
    caps = 0x3007
    next_at = time.monotonic()
    while time.monotonic() < stop:
        reader, writer = await asyncio.open_connection(host, port)
        uid = os.urandom(16)
        hello = pb.AgentToServer(instance_uid=uid, sequence_num=0, capabilities=caps)
        kv = hello.agent_description.identifying_attributes.add(key="service.name")
        kv.value.string_value = "churn"
        await post(reader, writer, hello.SerializeToString())
        bye = pb.AgentToServer(instance_uid=uid, sequence_num=1, capabilities=caps)
        bye.agent_disconnect.SetInParent()
        await post(reader, writer, bye.SerializeToString())
        writer.close()
        made[0] += 2
        next_at += 2 / per_s
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def main(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 4320
    assert host in ("127.0.0.1", "localhost"), "loopback targets only"
    counts = [0] * args.subscribers
    subs = [
        asyncio.create_task(subscriber(host, port, args.token, counts, i))
        for i in range(args.subscribers)
    ]
    await asyncio.sleep(2.0)  # all subscribed
    made = [0]
    start = time.monotonic()
    stop = start + args.duration_s
    churners = max(1, int(args.rate // 50))
    tasks = [churner(host, port, args.rate / churners, stop, made) for _ in range(churners)]
    begin_counts = sum(counts)
    await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)  # the last events reach everybody
    elapsed = time.monotonic() - start
    delivered = sum(counts) - begin_counts
    for task in subs:
        task.cancel()
    return {
        "subscribers": args.subscribers,
        "duration_s": round(elapsed, 1),
        "events_published": made[0],
        "events_published_per_s": round(made[0] / elapsed, 1),
        "events_delivered": delivered,
        "events_delivered_per_s": round(delivered / elapsed, 1),
        "min_per_subscriber": min(counts),
        "max_per_subscriber": max(counts),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:4320")
    p.add_argument("--token", required=True)
    p.add_argument("--subscribers", type=int, default=100)
    p.add_argument("--rate", type=float, default=200.0, help="events per second to make")
    p.add_argument("--duration-s", type=float, default=30.0)
    args = p.parse_args()
    uvloop.install()
    print(json.dumps(asyncio.run(main(args))))
