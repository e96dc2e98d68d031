"""Open-loop paced load: a fixed request rate, latency measured from the intended send time.

wrk measures throughput; it cannot hold a rate (and wrk2 is not packaged here). This client
sends request i at `start + i / rate` whatever happened to earlier requests, over a pool of
keep-alive connections (opened lazily up to --max-connections). Latency counts from the
*intended* send time, so time spent waiting for a free connection, or for a late client,
is counted too (no coordinated omission); `service` counts from the actual write.

It runs as its own process (the benches start it with subprocess) and prints one JSON
object on stdout. Raw HTTP/1.1 over asyncio streams on uvloop: cheap enough that at a few
hundred batches per second it uses a few percent of a core.

    python bench/loadgen.py --port 8080 --workload W.json --rate 250 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a Headwater dependency
    uvloop = None

MAX_REQUESTS = 50_000_000  # a bound on the schedule, whatever rate x duration asks for
LATE = 0.005  # seconds behind schedule that count as late
IDLE_LIMIT = 2.0  # seconds a keep-alive connection may sit idle before we drop it


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Pool:
    """Keep-alive connections to one host; at most `limit` in use at once.

    Idle connections are reused oldest-first and dropped after IDLE_LIMIT seconds, well
    inside uvicorn's 5 s keep-alive timeout, so a request is not written into a socket the
    server is closing.
    """

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self.idle: collections.deque[tuple[Connection, float]] = collections.deque()
        self.slots = asyncio.Semaphore(limit)
        self.opened = 0

    async def take(self) -> tuple[Connection, bool]:
        """(connection, reused)."""
        now = time.perf_counter()
        while self.idle:
            connection, last_used = self.idle.popleft()
            if now - last_used < IDLE_LIMIT and not connection[0].at_eof():
                return connection, True
            connection[1].close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port), False

    def give_back(self, connection: Connection) -> None:
        self.idle.append((connection, time.perf_counter()))

    def close(self) -> None:
        while self.idle:
            self.idle.popleft()[0][1].close()


def error_has_response(error: BaseException) -> bool:
    """Whether any byte of a response arrived before the connection broke."""
    return bool(getattr(error, "partial", b""))


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """Send one request, read one response; (status, connection reusable)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    reusable = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            reusable = False
    if length:
        await reader.readexactly(length)
    return status, reusable


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workload = json.loads(Path(args.workload).read_text(encoding="utf-8"))
    templates = [[piece.encode() for piece in pieces] for pieces in workload["templates"]]
    per = int(workload["ids_per_request"])
    head = f"POST {workload['path']} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in workload["headers"].items())
    head_bytes = head.encode()
    run_prefix = args.prefix or secrets.token_hex(4)

    def build(counter: int) -> bytes:
        pieces = templates[counter % len(templates)]
        parts = []
        for slot in range(per):
            parts.append(pieces[slot])
            parts.append(f"{run_prefix}-0000-{slot + 1:04x}-8000-{counter:012x}".encode())
        parts.append(pieces[per])
        body = b"".join(parts)
        return head_bytes + b"Content-Length: %d\r\n\r\n" % len(body) + body

    pool = Pool(args.host, args.port, args.max_connections)
    latencies: list[float] = []
    service: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    late = 0
    pool_waits = 0
    retries: collections.Counter[str] = collections.Counter()

    async def one(counter: int, intended: float) -> None:
        nonlocal late, pool_waits
        begun = time.perf_counter()
        if begun - intended > LATE:
            late += 1  # the client itself fell behind its schedule
        request = build(counter)
        async with pool.slots:
            sent = time.perf_counter()
            if sent - begun > LATE:
                pool_waits += 1  # every connection was busy: the server is behind
            status = 0
            for attempt in (1, 2):
                connection: Connection | None = None
                reused = False
                try:
                    connection, reused = await pool.take()
                    status, reusable = await asyncio.wait_for(exchange(*connection, request), args.timeout)
                    break
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as error:
                    if connection is not None:
                        connection[1].close()
                    stale = reused and isinstance(error, asyncio.IncompleteReadError | ConnectionResetError)
                    if stale and attempt == 1 and not error_has_response(error):
                        retries["stale_connection"] += 1  # closed by the server while idle
                        continue
                    name = type(error).__name__
                    errors[name] = errors.get(name, 0) + 1
                    return
            finished = time.perf_counter()
            if reusable:
                pool.give_back(connection)
            else:
                connection[1].close()
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        latencies.append(finished - intended)
        service.append(finished - sent)

    total = min(MAX_REQUESTS, int(args.rate * args.duration))
    interval = 1.0 / args.rate
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.05
    for counter in range(1, total + 1):
        intended = start + (counter - 1) * interval
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(counter, intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    scheduled_end = time.perf_counter()
    if tasks:
        await asyncio.wait(set(tasks), timeout=args.timeout + 5)
    for task in list(tasks):
        task.cancel()
        errors["unfinished"] = errors.get("unfinished", 0) + 1
    elapsed = time.perf_counter() - start
    pool.close()

    latencies.sort()
    service.sort()

    def summary(values: list[float]) -> dict[str, float]:
        ms = [v * 1000 for v in values]
        return {
            "p50": percentile(ms, 0.50),
            "p90": percentile(ms, 0.90),
            "p99": percentile(ms, 0.99),
            "p999": percentile(ms, 0.999),
            "max": ms[-1] if ms else float("nan"),
            "mean": sum(ms) / len(ms) if ms else float("nan"),
        }

    usage = os.times()
    return {
        "prefix": run_prefix,
        "scheduled": total,
        "completed": len(latencies),
        "ok": statuses.get("200", 0),
        "statuses": statuses,
        "errors": errors,
        "target_rps": args.rate,
        "achieved_rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "schedule_seconds": scheduled_end - start,
        "late_starts": late,
        "pool_waits": pool_waits,
        "retries": dict(retries),
        "connections_opened": pool.opened,
        "latency_ms": summary(latencies),
        "service_ms": summary(service),
        "client_cpu_seconds": usage.user + usage.system,
        "elapsed_seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workload", required=True, help="JSON written by payloads.Workload")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds of schedule")
    parser.add_argument("--max-connections", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--prefix", default="", help="8 hex characters that start every id")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the benches only send traffic to this machine")
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    result = uvloop.run(run(args)) if uvloop is not None else asyncio.run(run(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
