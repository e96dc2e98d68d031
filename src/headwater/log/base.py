"""The event log: the durable, ordered, replayable source of truth between collect and process.

A backend appends batches durably (the collector answers 200 only after `append` returns),
hands events to named consumers from their own positions, and forgets history older than
the retention window. Chosen by URL: `sqlite:///path` (embedded) today, `nats://` later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class EventRecord(NamedTuple):
    """One accepted message, enriched, as the collector appends it."""

    source: str
    message_id: str
    type: str
    user_id: str | None
    anonymous_id: str | None
    received_at_ms: int
    payload: bytes


class QuarantineRecord(NamedTuple):
    """A message that failed the collector's checks, kept with the reason."""

    source: str
    received_at_ms: int
    reason: str
    payload: bytes


class StoredEvent(NamedTuple):
    position: int
    source: str
    message_id: str
    type: str
    user_id: str | None
    anonymous_id: str | None
    received_at_ms: int
    payload: bytes


class StoredQuarantine(NamedTuple):
    id: int
    source: str
    received_at_ms: int
    reason: str
    payload: bytes


@dataclass(frozen=True)
class AppendResult:
    stored: int
    duplicates: int


@dataclass(frozen=True)
class LogStats:
    events: int
    last_position: int
    bytes_on_disk: int
    consumer_positions: dict[str, int]


@dataclass(frozen=True)
class EventQuery:
    """Filters for reading the log as a person would.

    The result is always oldest first; `limit` takes the newest matches, or with
    `oldest_first` the first matches after `after_position` (for following the log).
    """

    source: str | None = None
    type: str | None = None
    user: str | None = None
    after_position: int = 0
    limit: int = 100
    oldest_first: bool = False


class LogUnavailable(Exception):
    """The log cannot take writes right now; the caller answers 503 and the client retries."""


class EventLog(Protocol):
    def exists(self) -> bool:
        """Whether the log has been created (tools that only read must not create it)."""
        ...

    def describe(self) -> str:
        """Where the log lives, for people: a path or a server URL."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def append(
        self, events: Sequence[EventRecord], quarantined: Sequence[QuarantineRecord] = ()
    ) -> AppendResult:
        """Commit durably; duplicates by (source, message_id) inside the window are dropped."""
        ...

    def read(self, consumer: str, limit: int) -> list[StoredEvent]:
        """Events after the consumer's acknowledged position, in log order."""
        ...

    def read_after(self, position: int, limit: int) -> list[StoredEvent]:
        """Events after `position`, in log order."""
        ...

    def appended(self) -> asyncio.Event:
        """Set whenever this process commits new events; consumers clear it and wait on it."""
        ...

    def acknowledge(self, consumer: str, position: int) -> None: ...

    def query(self, query: EventQuery) -> list[StoredEvent]: ...

    def query_quarantine(self, query: EventQuery) -> list[StoredQuarantine]: ...

    def stats(self) -> LogStats: ...

    def pending_messages(self) -> int:
        """Messages handed to `append` and not yet committed (the write queue's depth)."""
        ...
