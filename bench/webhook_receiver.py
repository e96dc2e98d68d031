"""A fast local webhook for the delivery bench: answers at once, notes what arrived and when.

Raw asyncio + httptools on uvloop, one process (bench/deliver.py starts it with
subprocess), listening on 127.0.0.1 only. Every POST is answered `--status` (200, or 500
for a failing destination) with a 2-byte body *before* anything else is done with it;
then, per request, it notes (arrival time, messages in the body, status). With
`--record`, it also parses the body (orjson, after the answer is written) and keeps
(messageId, receivedAt, arrival) for every message, for end-to-end latency.

The arrival time is `time.time()` when the request's last byte was parsed: the same
machine clock Headwater stamps `receivedAt` with.

    GET /_stats       {"requests", "events", "first", "last", "statuses"} so far
    SIGTERM / SIGINT  writes everything to --out (JSON) and exits

    python bench/webhook_receiver.py --port 9000 --out R.json [--status 500] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httptools
import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a Headwater dependency
    uvloop = None

REASONS = {200: b"OK", 500: b"Internal Server Error", 503: b"Service Unavailable"}
MAX_REQUESTS_KEPT = 5_000_000  # a bound on the per-request notes, whatever a run sends
MAX_MESSAGES_KEPT = 20_000_000  # a bound on --record's per-message notes


def response(status: int, body: bytes, keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
        status,
        REASONS.get(status, b"Status"),
        len(body),
    )
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


class State:
    def __init__(self, status: int, record: bool) -> None:
        self.status = status
        self.record = record
        self.requests: list[tuple[float, int, int]] = []  # (arrival, messages, status)
        self.messages: list[tuple[str, str | None, float]] = []  # (messageId, receivedAt, arrival)
        self.events = 0
        self.bad_bodies = 0
        self.started = time.time()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "events": self.events,
            "first": self.requests[0][0] if self.requests else None,
            "last": self.requests[-1][0] if self.requests else None,
            "status": self.status,
            "bad_bodies": self.bad_bodies,
        }

    def note(self, arrival: float, body: bytes) -> None:
        if self.record:
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                self.bad_bodies += 1
                document = None
            batch = document.get("batch") if isinstance(document, dict) else None
            messages = batch if isinstance(batch, list) else [document]
            count = 0
            for message in messages:
                if isinstance(message, dict) and len(self.messages) < MAX_MESSAGES_KEPT:
                    count += 1
                    self.messages.append((str(message.get("messageId")), message.get("receivedAt"), arrival))
        else:
            # The webhook's bodies are orjson output (no spaces): one `"messageId":` per message.
            count = body.count(b'"messageId":')
        self.events += count
        if len(self.requests) < MAX_REQUESTS_KEPT:
            self.requests.append((arrival, count, self.status))

    def dump(self, path: Path) -> None:
        usage = os.times()
        path.write_bytes(
            orjson.dumps(
                {
                    "status": self.status,
                    "requests": self.requests,
                    "messages": self.messages,
                    "events": self.events,
                    "bad_bodies": self.bad_bodies,
                    "cpu_seconds": usage.user + usage.system,
                    "wall_seconds": time.time() - self.started,
                }
            )
        )


class HttpProtocol(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.url = b""
        self.body: list[bytes] = []

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(response(400, b"{}", False))
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        arrival = time.time()
        assert self.transport is not None
        keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method()
        if method == b"GET":
            if self.url.startswith(b"/_stats"):
                payload = json.dumps(self.state.stats()).encode()
                self.transport.write(response(200, payload, keep_alive))
            else:
                self.transport.write(response(200, b"{}", keep_alive))
        else:
            self.transport.write(response(self.state.status, b"{}", keep_alive))
            self.state.note(arrival, b"".join(self.body))
        self.body = []
        if not keep_alive:
            self.transport.close()


async def serve(args: argparse.Namespace) -> None:
    state = State(args.status, args.record)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(state), "127.0.0.1", args.port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        # Bounded: a bench that forgets us does not leave us running for more than --max-seconds.
        try:
            await asyncio.wait_for(stop.wait(), args.max_seconds)
        except TimeoutError:
            print("receiver: --max-seconds reached, exiting", file=sys.stderr)
    state.dump(Path(args.out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True, help="JSON file written at exit")
    parser.add_argument("--status", type=int, default=200, help="status for every POST (default 200)")
    parser.add_argument("--record", action="store_true", help="keep (messageId, receivedAt, arrival)")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    args = parser.parse_args(argv)
    if uvloop is not None:
        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
