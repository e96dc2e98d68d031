"""Replay: send history from the log to a destination, oldest first, with original timestamps.

It runs where it is called (the CLI), not in the server, so a team can backfill a tool
it just added while Headwater keeps collecting. Events go through the destination's
routing (filters and mappings still apply); what the destination refuses, or still
fails after the retries here, lands in its dead letters, from where it can be redriven.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from headwater.deliver.router import DestinationWorker, Item, RateLimiter
from headwater.deliver.store import DeliveryStore
from headwater.destinations.base import Delivered, Destination, Retry
from headwater.log import EventLog, StoredEvent
from headwater.settings import DestinationConfig

PAGE = 1000
ATTEMPTS = 5


@dataclass(frozen=True)
class ReplayFilter:
    source: str | None = None
    event: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def wants(self, stored: StoredEvent) -> bool:
        if self.source and stored.source != self.source:
            return False
        if self.since_ms is not None and stored.received_at_ms < self.since_ms:
            return False
        if self.until_ms is not None and stored.received_at_ms >= self.until_ms:
            return False
        return not self.event or orjson.loads(stored.payload).get("event") == self.event


@dataclass
class ReplayReport:
    matched: int = 0
    delivered: int = 0
    filtered: int = 0
    dead_lettered: int = 0


def epoch_ms(text: str) -> int:
    """Milliseconds of an ISO-8601 time; without an offset it is taken as UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def history(log: EventLog, wanted: ReplayFilter) -> Iterator[StoredEvent]:
    position = 0
    while True:
        page = log.read_after(position, PAGE)
        if not page:
            return
        position = page[-1].position
        yield from (stored for stored in page if wanted.wants(stored))


async def replay(
    config: DestinationConfig,
    destination: Destination,
    log: EventLog,
    store: DeliveryStore,
    wanted: ReplayFilter,
    progress: Callable[[int], None] = lambda advanced: None,
    rate: int | None = None,
) -> ReplayReport:
    """Deliver the matching history in log order; `progress` hears of every event handled."""
    worker = DestinationWorker(config, destination, log, store)
    worker.lanes = 1
    if rate is not None:
        worker.limiter = RateLimiter(rate)
    report = ReplayReport()
    chunk: list[Item] = []
    for stored in history(log, wanted):
        report.matched += 1
        routed = worker.routing.route(stored.source, orjson.loads(stored.payload))
        if routed.payload is None:
            report.filtered += 1
            progress(1)
            continue
        user_key = stored.user_id or stored.anonymous_id or ""
        chunk.append(
            Item(stored.position, user_key, stored.received_at_ms, routed.payload, source=stored.source)
        )
        if len(chunk) >= destination.max_batch:
            await _send(worker, chunk, report)
            progress(len(chunk))
            chunk = []
    if chunk:
        await _send(worker, chunk, report)
        progress(len(chunk))
    return report


async def _send(worker: DestinationWorker, chunk: list[Item], report: ReplayReport) -> None:
    """A few quick retries in place; what still fails goes to dead letters."""
    remaining = chunk
    for attempt in range(1, ATTEMPTS + 1):
        await worker.limiter.take(len(remaining))
        outcomes = await worker.deliver_chunk(remaining)
        retry: list[Item] = []
        dead: list[tuple[Item, str]] = []
        for item, outcome in zip(remaining, outcomes, strict=True):
            if isinstance(outcome, Delivered):
                report.delivered += 1
            elif isinstance(outcome, Retry) and attempt < ATTEMPTS:
                retry.append(item)
            else:
                dead.append((item, outcome.reason))
        if dead:
            worker.store.record(
                worker.name,
                dead=[item.dead_letter(attempt, f"replay: {reason}") for item, reason in dead],
                counters={"dead_lettered": len(dead)},
            )
            report.dead_lettered += len(dead)
        if not retry:
            return
        remaining = retry
        await asyncio.sleep(worker.backoff(attempt, None))
