"""The router: one worker per destination, each with its own position in the log.

A worker reads events after its position, routes them (sources, integrations object,
filters, mappings), and delivers them in lanes: a user's events always travel in the
same lane, one request after another, so each user's order is kept while other users
flow on. An event that must be retried parks its user: that user's later events wait
behind it in the retry queue, in order. Only when every event of a round is delivered,
parked or dead-lettered does the position move — in the same transaction — so a crash
means redelivery, never loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from headwater.deliver.routing import Routing
from headwater.deliver.store import DeadLetter, DeliveryStore, Parked, PendingEntry
from headwater.destinations.base import Delivered, Destination, Outcome, Retry
from headwater.gc_pause import collection_paused
from headwater.log import EventLog, StoredEvent
from headwater.settings import DestinationConfig

logger = logging.getLogger("headwater.deliver")

READ_LIMIT = 2000
# Micro-batches read ahead while one loads: the loader process prepares the next while the
# router reads the one after.
READ_AHEAD = 2
INTEGRATIONS_KEY = b'"integrations"'
ROUTE_SLICE = 500
IDLE_WAIT_SECONDS = 1.0
LATENCY_SAMPLES = 2000
MIRROR_EVERY_SECONDS = 1.0
# After this many requests in a row that all came back "retry", the destination is
# treated as down: new events stay in the log (itself a durable queue) instead of
# flooding the retry queue, and one request at a time probes for recovery.
PAUSE_AFTER_FAILED_REQUESTS = 3


@dataclass(slots=True)
class Item:
    position: int
    user_key: str
    received_at_ms: int
    payload: Any  # the routed message; its JSON as stored when routing passed it on as is
    pending_id: int | None = None
    attempts: int = 0
    first_failed_at: float | None = None
    source: str = ""

    def message(self) -> bytes:
        return self.payload if isinstance(self.payload, bytes) else orjson.dumps(self.payload)

    def dead_letter(self, attempts: int, reason: str) -> DeadLetter:
        return DeadLetter(
            self.position, self.user_key, self.received_at_ms, self.message(), attempts, reason, self.source
        )


@dataclass(frozen=True)
class Prepared:
    """Events read after position `after` up to `last`, routed: what to send and what was
    filtered (by reason)."""

    after: int
    last: int
    items: list[Item]
    counters: Counter[str]


@dataclass
class Round:
    """What one pass over a set of items produced, in the order it happened."""

    delivered: list[Item]
    retried: list[tuple[Item, Retry]]
    dead: list[tuple[Item, str]]
    # What goes into the retry queue, in log order: a retry, or (None) waiting behind one.
    parked: list[tuple[Item, Retry | None]]


class RateLimiter:
    """Events per second for one destination (0: no limit)."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.allowance = float(per_second)
        self.checked = time.monotonic()

    async def take(self, events: int) -> None:
        if not self.per_second:
            return
        while True:
            now = time.monotonic()
            self.allowance = min(self.per_second, self.allowance + (now - self.checked) * self.per_second)
            self.checked = now
            if self.allowance >= min(events, self.per_second):
                self.allowance -= events
                return
            await asyncio.sleep((min(events, self.per_second) - self.allowance) / self.per_second)


class DestinationWorker:
    def __init__(
        self, config: DestinationConfig, destination: Destination, log: EventLog, store: DeliveryStore
    ) -> None:
        self.config = config
        self.name = config.name
        self.destination = destination
        self.log = log
        self.store = store
        self.routing = Routing(config)
        self.lanes = min(config.max_in_flight, destination.max_lanes or config.max_in_flight)
        self.read_limit = max(READ_LIMIT, destination.max_batch)
        self.limiter = RateLimiter(config.rate_limit)
        self.blocked: set[str] = set()
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.position = 0
        self._mirrored_at = 0.0
        self.failed_requests = 0
        self.probe_at = 0.0
        # Micro-batching: the next time the backlog is worth a delivery, and a flush request
        # (`headwater warehouse sync`) that delivers everything up to a position at once.
        self.gather_until = 0.0
        self.flush_to = 0
        self.moved = asyncio.Event()
        self.wake = asyncio.Event()
        self.ahead: deque[Prepared] = deque()  # micro-batches read ahead, in log order

    @property
    def paused(self) -> bool:
        return self.failed_requests >= PAUSE_AFTER_FAILED_REQUESTS

    @property
    def consumer(self) -> str:
        return f"destination:{self.name}"

    def prepare(self) -> None:
        position = self.store.position(self.name)
        if position is None:
            position = 0 if self.config.start_from == "beginning" else self.log.stats().last_position
            self.store.record(self.name, position=position)
        self.position = position
        self.blocked = self.store.blocked_users(self.name)

    async def run(self) -> None:
        self.prepare()
        try:
            await self.destination.open()
        except Exception:  # the first delivery tries again and reports
            logger.exception("opening the destination failed", extra={"destination": self.name})
        appended = self.log.appended()
        while True:
            try:
                worked = await self.retry_due()
                worked = await self.pull() or worked
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("delivery round failed", extra={"destination": self.name})
                worked = False
            if worked:
                continue
            appended.clear()
            next_due = self.probe_at if self.paused else self.store.next_due_at(self.name)
            timeout = IDLE_WAIT_SECONDS if next_due is None else max(0.0, next_due - time.time())
            wake = self.wake if self.gather_until else appended
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(timeout, IDLE_WAIT_SECONDS))
            self.wake.clear()

    async def flush(self) -> int:
        """Deliver everything in the log now, whatever the micro-batch cadence; the position
        reached (the router must be running)."""
        target = self.log.stats().last_position
        self.flush_to = max(self.flush_to, target)
        self.wake.set()
        self.log.appended().set()  # whichever of the two the worker waits on
        while self.position < target and not self.paused:
            self.moved.clear()
            await self.moved.wait()
        return self.position

    def _gathering(self) -> bool:
        """True while a micro-batching destination should let its backlog grow."""
        linger = self.destination.linger_seconds
        if not linger or self.position < self.flush_to:
            self.gather_until = 0.0
            return False
        first = self.log.read_after(self.position, 1)
        if not first:
            self.gather_until = 0.0
            return True
        if self._full_batch_after(self.position):
            self.gather_until = 0.0
            return False
        self.gather_until = first[0].received_at_ms / 1000 + linger
        return time.time() < self.gather_until

    async def pull(self) -> bool:
        """Deliver what arrived after this destination's position; False if nothing did."""
        if self.paused or self._gathering():
            return False
        if self.ahead and self.ahead[0].after != self.position:
            self.ahead.clear()  # read before a flush or a redrive moved the position
        batch = self.ahead.popleft() if self.ahead else await self._prepare(self.position)
        if batch is None:
            return False
        sending = asyncio.create_task(self.send(batch.items))
        try:
            if self.destination.linger_seconds:
                # While a micro-batch loads (in its own process), read, route and send ahead
                # the next ones: nothing of them is recorded before they are delivered, so a
                # crash loses nothing.
                await self._read_ahead(batch.last)
            result = await sending
        finally:
            if not sending.done():
                sending.cancel()
        self.position = batch.last
        self._record(result, batch.counters, position=self.position)
        self.moved.set()
        await self._mirror_position()
        return True

    async def _read_ahead(self, after: int) -> None:
        """Have the next `READ_AHEAD` full micro-batches read and sent ahead."""
        last = self.ahead[-1].last if self.ahead else after
        while len(self.ahead) < READ_AHEAD and self._full_batch_after(last):
            try:
                prepared = await self._prepare(last)
            except Exception:  # a later pull reads it again
                logger.exception("reading ahead failed", extra={"destination": self.name})
                return
            if prepared is None:
                return
            self.ahead.append(prepared)
            await self._prefetch(prepared.items)
            last = prepared.last

    async def _prefetch(self, items: Sequence[Item]) -> None:
        try:
            await self.destination.prefetch([item.payload for item in items], [item.source for item in items])
        except Exception:  # only a hint
            logger.exception("prefetch failed", extra={"destination": self.name})

    def _full_batch_after(self, position: int) -> bool:
        return bool(self.log.read_after(position + self.destination.max_batch - 1, 1))

    async def _prepare(self, after: int) -> Prepared | None:
        """Read and route the events after `after`: what to send, and what was filtered."""
        if self.read_limit <= READ_LIMIT:
            return await self._route(after, self.log.read_after(after, self.read_limit))
        with collection_paused():  # a micro-batch: read it off the event loop
            events = await asyncio.to_thread(self.log.read_after, after, self.read_limit)
            return await self._route(after, events)

    async def _route(self, after: int, events: Sequence[StoredEvent]) -> Prepared | None:
        if not events:
            return None
        counters: Counter[str] = Counter()
        items: list[Item] = []
        # A destination that parses JSON itself gets the stored bytes of every event that
        # routing has nothing to decide about: no parse and no re-encoding here.
        as_stored = self.destination.takes_json and self.routing.passes_through
        for index, event in enumerate(events):
            if index % ROUTE_SLICE == ROUTE_SLICE - 1:
                await asyncio.sleep(0)  # let the collector answer between slices of a big read
            if as_stored and INTEGRATIONS_KEY not in event.payload:
                payload: Any = event.payload
            else:
                routed = self.routing.route(event.source, orjson.loads(event.payload))
                if routed.payload is None:
                    counters[f"filtered_{routed.reason}"] += 1
                    continue
                payload = routed.payload
            user_key = event.user_id or event.anonymous_id or ""
            items.append(Item(event.position, user_key, event.received_at_ms, payload, source=event.source))
        return Prepared(after, events[-1].position, items, counters)

    async def _mirror_position(self) -> None:
        """Show this destination's position in the log's consumer table (lag, retention), at
        most once a second and off the event loop: the log file has a writer of its own."""
        now = time.monotonic()
        if now - self._mirrored_at >= MIRROR_EVERY_SECONDS:
            self._mirrored_at = now
            await asyncio.to_thread(self.log.acknowledge, self.consumer, self.position)

    async def retry_due(self) -> bool:
        """Retry each parked user's oldest event whose time has come."""
        now = time.time()
        if self.paused:
            if now < self.probe_at:
                return False
            # One request probes for recovery, with the oldest waiting events, whatever their
            # own schedule: a destination that is down costs one request per backoff period.
            heads = self.store.due_heads(self.name, float("inf"), self.destination.max_batch)
        else:
            heads = self.store.due_heads(self.name, now, self.lanes * self.destination.max_batch)
        if not heads:
            return False
        result = await self.send([_item(entry) for entry in heads], retrying=True)
        if self.paused:
            failures_while_paused = self.failed_requests - PAUSE_AFTER_FAILED_REQUESTS + 1
            self.probe_at = time.time() + self.backoff(min(failures_while_paused, 30), None)
        self._record(result, Counter())
        for item in (*result.delivered, *(item for item, _ in result.dead)):
            if not self.store.still_blocked(self.name, item.user_key):
                self.blocked.discard(item.user_key)
        return True

    async def send(self, items: Sequence[Item], *, retrying: bool = False) -> Round:
        if self.lanes == 1:
            lanes = [list(items)]
        else:
            lanes = [[] for _ in range(self.lanes)]
            for item in items:
                lanes[zlib.crc32(item.user_key.encode()) % self.lanes].append(item)
        rounds = await asyncio.gather(*(self._lane(lane, retrying) for lane in lanes if lane))
        merged = Round([], [], [], [])
        for part in rounds:
            merged.delivered += part.delivered
            merged.retried += part.retried
            merged.dead += part.dead
            merged.parked += part.parked
        return merged

    async def _lane(self, items: list[Item], retrying: bool) -> Round:
        result = Round([], [], [], [])
        index = 0
        while index < len(items):
            chunk: list[Item] = []
            if retrying or not (self.blocked or self.paused):  # nobody waits behind a retry
                chunk = items[index : index + self.destination.max_batch]
                index += len(chunk)
            while index < len(items) and len(chunk) < self.destination.max_batch:
                item = items[index]
                index += 1
                if not retrying and (item.user_key in self.blocked or self.paused):
                    self.blocked.add(item.user_key)
                    result.parked.append((item, None))
                else:
                    chunk.append(item)
            if not chunk:
                continue
            await self.limiter.take(len(chunk))
            outcomes = await self.deliver_chunk(chunk)
            if any(isinstance(outcome, Delivered) for outcome in outcomes):
                self.failed_requests = 0
            elif all(isinstance(outcome, Retry) for outcome in outcomes):
                self.failed_requests += 1
            if all(isinstance(outcome, Delivered) for outcome in outcomes):
                now_ms = time.time() * 1000
                result.delivered += chunk
                self.latencies.extend(now_ms - item.received_at_ms for item in chunk[-LATENCY_SAMPLES:])
                continue
            for item, outcome in zip(chunk, outcomes, strict=True):
                self._sort(item, outcome, result)
        return result

    def _sort(self, item: Item, outcome: Outcome, result: Round) -> None:
        if isinstance(outcome, Delivered):
            result.delivered.append(item)
            self.latencies.append(time.time() * 1000 - item.received_at_ms)
        elif isinstance(outcome, Retry):
            first_failed = item.first_failed_at or time.time()
            if time.time() - first_failed >= self.config.retry_for_seconds:
                result.dead.append((item, f"gave up after {item.attempts + 1} attempts: {outcome.reason}"))
            else:
                result.retried.append((item, outcome))
                result.parked.append((item, outcome))
                self.blocked.add(item.user_key)
        else:
            result.dead.append((item, outcome.reason))

    async def deliver_chunk(self, chunk: list[Item]) -> list[Outcome]:
        try:
            outcomes = await self.destination.deliver(
                [item.payload for item in chunk], [item.source for item in chunk]
            )
        except Exception as error:  # a destination bug must not stop the router
            logger.exception("destination raised", extra={"destination": self.name})
            return [Retry(f"{error.__class__.__name__}: {error}")] * len(chunk)
        if len(outcomes) != len(chunk):
            return [Retry(f"destination answered {len(outcomes)} outcomes for {len(chunk)} events")] * len(
                chunk
            )
        return outcomes

    def _record(self, result: Round, counters: Counter[str], *, position: int | None = None) -> None:
        parked: list[Parked] = []
        for item, retry in result.parked:
            if item.pending_id is not None:
                continue
            if retry is None:
                attempts, next_at, error = 0, 0.0, None
            else:
                attempts, next_at, error = 1, time.time() + self.backoff(1, retry.after), retry.reason
            parked.append(
                Parked(
                    item.position,
                    item.user_key,
                    item.received_at_ms,
                    item.message(),
                    attempts,
                    next_at,
                    error,
                    item.source,
                )
            )
        for item, outcome in result.retried:
            if item.pending_id is not None:
                attempts = item.attempts + 1
                next_at = time.time() + self.backoff(attempts, outcome.after)
                self.store.retry(item.pending_id, attempts, next_at, outcome.reason)
        dead = [item.dead_letter(item.attempts + 1, reason) for item, reason in result.dead]
        done = [
            item.pending_id for item in (*result.delivered, *(i for i, _ in result.dead)) if item.pending_id
        ]
        counters["delivered"] += len(result.delivered)
        counters["dead_lettered"] += len(result.dead)
        counters["retried"] += len(result.retried)
        errors = [reason for _, reason in result.dead] + [outcome.reason for _, outcome in result.retried]
        self.store.record(
            self.name,
            position=position,
            parked=parked,
            dead=dead,
            done_pending=done,
            counters=dict(counters),
            errors=errors[-5:],
            latency=self._latency(),
        )

    def backoff(self, attempts: int, retry_after: float | None) -> float:
        """Exponential with ±20% jitter, at least what the destination asked for."""
        base = self.config.retry_backoff_seconds * 2.0 ** (attempts - 1)
        delay = min(self.config.retry_backoff_max_seconds, base) * random.uniform(0.8, 1.2)
        return max(delay, retry_after or 0.0)

    def _latency(self) -> tuple[float, float, int] | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return (
            ordered[len(ordered) // 2],
            ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
            len(ordered),
        )


def _item(entry: PendingEntry) -> Item:
    return Item(
        entry.position,
        entry.user_key,
        entry.received_at_ms,
        orjson.loads(entry.message),
        pending_id=entry.id,
        attempts=entry.attempts,
        first_failed_at=entry.first_failed_at,
        source=entry.source,
    )
