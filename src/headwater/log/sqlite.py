"""The embedded log: one SQLite file in WAL mode, written by one thread with group commit.

Every `append` joins the queue of the writer thread. The writer takes everything queued,
inserts it in one transaction, commits (fsync with `synchronous=full`), then wakes every
waiting request at once. Under load one fsync covers hundreds of requests; idle, a single
request waits for exactly one commit. Duplicates are dropped inside SQLite by a trigger on
(source, message_id) against the dedupe window, so a batch never pays a Python round trip
per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from headwater.log.base import (
    AppendResult,
    EventQuery,
    EventRecord,
    LogStats,
    LogUnavailable,
    QuarantineRecord,
    StoredEvent,
    StoredQuarantine,
)
from headwater.settings import LogSettings

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    type TEXT NOT NULL,
    user_id TEXT,
    anonymous_id TEXT,
    received_at INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dedupe (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS dedupe_key ON dedupe (source, message_id);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS consumers (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
"""

DEDUPE_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS events_drop_duplicate BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM dedupe WHERE source = NEW.source AND message_id = NEW.message_id)
BEGIN SELECT RAISE(IGNORE); END;
CREATE TRIGGER IF NOT EXISTS events_remember_id AFTER INSERT ON events
BEGIN
    INSERT INTO dedupe (source, message_id, received_at)
    VALUES (NEW.source, NEW.message_id, NEW.received_at);
END;
"""

NO_DEDUPE = """
DROP TRIGGER IF EXISTS events_drop_duplicate;
DROP TRIGGER IF EXISTS events_remember_id;
"""

INSERT_EVENT = (
    "INSERT INTO events (source, message_id, type, user_id, anonymous_id, received_at, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
INSERT_QUARANTINE = "INSERT INTO quarantine (source, received_at, reason, payload) VALUES (?, ?, ?, ?)"
EVENT_COLUMNS = "position, source, message_id, type, user_id, anonymous_id, received_at, payload"

logger = logging.getLogger("headwater.log")

MAINTENANCE_EVERY_SECONDS = 60.0
PRUNE_CHUNK = 5000


@dataclass
class _Append:
    events: Sequence[EventRecord]
    quarantined: Sequence[QuarantineRecord]
    future: asyncio.Future[AppendResult]
    loop: asyncio.AbstractEventLoop


@dataclass
class _Maintenance:
    due_at: float = 0.0
    tables: list[tuple[str, str, int]] = field(default_factory=list)


class SqliteLog:
    """`EventLog` on one SQLite database file."""

    def __init__(self, path: Path, settings: LogSettings, dedupe_window_seconds: float) -> None:
        self.path = path
        self.settings = settings
        self.dedupe_window_seconds = dedupe_window_seconds
        self._queue: list[_Append] = []
        self._queued_messages = 0
        self._wakeup = threading.Condition()
        self._stopping = False
        self._writer: threading.Thread | None = None
        self._readers = threading.local()
        self._maintenance = _Maintenance()

    @classmethod
    def from_url(cls, url: str, settings: LogSettings, *, dedupe_window_seconds: float) -> SqliteLog:
        """`sqlite:///relative/path` or `sqlite:////absolute/path`."""
        path = Path(url.removeprefix("sqlite:///"))
        return cls(path, settings, dedupe_window_seconds)

    def exists(self) -> bool:
        return self.path.exists()

    def describe(self) -> str:
        return str(self.path)

    # -- connections ---------------------------------------------------------------------

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        timeout = self.settings.lock_timeout_seconds
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=timeout
        )
        if write:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(f"PRAGMA synchronous = {self.settings.synchronous.upper()}")
            connection.execute("PRAGMA journal_size_limit = 67108864")
            connection.execute("PRAGMA cache_size = -65536")
        return connection

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._readers, "connection", None)
        if connection is None:
            connection = self._connect(write=False)
            self._readers.connection = connection
        return connection

    def initialize(self) -> None:
        """Create the database and schema (also used by read-only tools on an empty dir)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self._connect(write=True)
        try:
            connection.executescript(SCHEMA)
            connection.executescript(DEDUPE_TRIGGERS if self.dedupe_window_seconds else NO_DEDUPE)
        finally:
            connection.close()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.initialize()
        self._stopping = False
        self._writer = threading.Thread(target=self._write_loop, name="log-writer", daemon=True)
        self._writer.start()

    async def close(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
            self._writer = None

    # -- writing -------------------------------------------------------------------------

    async def append(
        self, events: Sequence[EventRecord], quarantined: Sequence[QuarantineRecord] = ()
    ) -> AppendResult:
        if not events and not quarantined:
            return AppendResult(stored=0, duplicates=0)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        with self._wakeup:
            if self._stopping or self._writer is None:
                raise LogUnavailable("the log is shutting down")
            self._queue.append(_Append(events, quarantined, future, loop))
            self._queued_messages += len(events) + len(quarantined)
            self._wakeup.notify()
        return await future

    def pending_messages(self) -> int:
        return self._queued_messages

    def _write_loop(self) -> None:
        connection = self._connect(write=True)
        try:
            while True:
                with self._wakeup:
                    while not self._queue and not self._stopping:
                        timeout = self._maintenance.due_at - time.monotonic()
                        if self._maintenance.tables or timeout <= 0:
                            break
                        self._wakeup.wait(timeout)
                    group, self._queue = self._queue, []
                    self._queued_messages = 0
                    stopping = self._stopping
                if group:
                    self._commit(connection, group)
                elif stopping:
                    return
                else:
                    self._maintain(connection, self._maintenance)
        finally:
            connection.close()

    def _commit(self, connection: sqlite3.Connection, group: list[_Append]) -> None:
        results: list[AppendResult] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for item in group:
                stored = connection.executemany(INSERT_EVENT, item.events).rowcount if item.events else 0
                if item.quarantined:
                    connection.executemany(INSERT_QUARANTINE, item.quarantined)
                results.append(AppendResult(stored=stored, duplicates=len(item.events) - stored))
            connection.execute("COMMIT")
        except Exception as error:  # any failure must reach the waiting requests as a 503
            with contextlib.suppress(sqlite3.Error):
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            logger.error("log commit failed", extra={"error": str(error)})
            failure = LogUnavailable(f"the log could not commit: {error}")
            for item in group:
                item.loop.call_soon_threadsafe(_fail, item.future, failure)
            return
        for item, result in zip(group, results, strict=True):
            item.loop.call_soon_threadsafe(_resolve, item.future, result)

    # -- retention -----------------------------------------------------------------------

    def _maintain(self, connection: sqlite3.Connection, state: _Maintenance) -> None:
        """One bounded step of forgetting old history, so appends never wait long behind it."""
        now = time.monotonic()
        if not state.tables:
            if now < state.due_at:
                return
            state.tables = self._expired_history()
            state.due_at = now + MAINTENANCE_EVERY_SECONDS
        table, key, cutoff = state.tables[0]
        try:
            deleted = connection.execute(
                f"DELETE FROM {table} WHERE {key} IN "
                f"(SELECT {key} FROM {table} ORDER BY {key} LIMIT ?) AND received_at < ?",
                (PRUNE_CHUNK, cutoff),
            ).rowcount
        except sqlite3.Error as error:
            logger.warning("log maintenance failed; retrying later", extra={"error": str(error)})
            deleted = 0
        if deleted < PRUNE_CHUNK:
            state.tables.pop(0)

    def _expired_history(self) -> list[tuple[str, str, int]]:
        """(table, key column, received_at cutoff in ms) for everything past its window."""
        wall_ms = int(time.time() * 1000)
        retention_cutoff = wall_ms - int(self.settings.retention_seconds * 1000)
        tables = [("events", "position", retention_cutoff), ("quarantine", "id", retention_cutoff)]
        if self.dedupe_window_seconds:
            tables.append(("dedupe", "id", wall_ms - int(self.dedupe_window_seconds * 1000)))
        return tables

    def run_maintenance_now(self) -> None:
        """Apply retention and the dedupe window completely, on a connection of its own."""
        connection = self._connect(write=True)
        try:
            state = _Maintenance()
            self._maintain(connection, state)
            while state.tables:
                self._maintain(connection, state)
        finally:
            connection.close()

    # -- reading -------------------------------------------------------------------------

    def read(self, consumer: str, limit: int) -> list[StoredEvent]:
        connection = self._reader()
        row = connection.execute("SELECT position FROM consumers WHERE name = ?", (consumer,)).fetchone()
        after = row[0] if row else 0
        rows = connection.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
            (after, limit),
        ).fetchall()
        return [StoredEvent(*row) for row in rows]

    def acknowledge(self, consumer: str, position: int) -> None:
        self._reader().execute(
            "INSERT INTO consumers (name, position) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)",
            (consumer, position),
        )

    def query(self, query: EventQuery) -> list[StoredEvent]:
        where, parameters = _filters(query, position_column="position")
        order = "ASC" if query.oldest_first else "DESC"
        rows = (
            self._reader()
            .execute(
                f"SELECT {EVENT_COLUMNS} FROM events {where} ORDER BY position {order} LIMIT ?",
                (*parameters, query.limit),
            )
            .fetchall()
        )
        if not query.oldest_first:
            rows.reverse()
        return [StoredEvent(*row) for row in rows]

    def query_quarantine(self, query: EventQuery) -> list[StoredQuarantine]:
        where, parameters = _filters(
            EventQuery(source=query.source, after_position=query.after_position),
            position_column="id",
        )
        rows = (
            self._reader()
            .execute(
                "SELECT id, source, received_at, reason, payload FROM quarantine"
                f" {where} ORDER BY id DESC LIMIT ?",
                (*parameters, query.limit),
            )
            .fetchall()
        )
        return [StoredQuarantine(*row) for row in reversed(rows)]

    def stats(self) -> LogStats:
        connection = self._reader()
        first, last = connection.execute("SELECT min(position), max(position) FROM events").fetchone()
        positions = dict(connection.execute("SELECT name, position FROM consumers").fetchall())
        size = sum(
            candidate.stat().st_size
            for candidate in (self.path, self.path.with_name(self.path.name + "-wal"))
            if candidate.exists()
        )
        events = (last - first + 1) if last is not None else 0
        return LogStats(
            events=events,
            last_position=last or 0,
            bytes_on_disk=size,
            consumer_positions=positions,
        )


def _filters(query: EventQuery, *, position_column: str) -> tuple[str, tuple[object, ...]]:
    clauses = [f"{position_column} > ?"]
    parameters: list[object] = [query.after_position]
    if query.source:
        clauses.append("source = ?")
        parameters.append(query.source)
    if query.type:
        clauses.append("type = ?")
        parameters.append(query.type)
    if query.user:
        clauses.append("(user_id = ? OR anonymous_id = ?)")
        parameters += [query.user, query.user]
    return "WHERE " + " AND ".join(clauses), tuple(parameters)


def _resolve(future: asyncio.Future[AppendResult], result: AppendResult) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[AppendResult], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
