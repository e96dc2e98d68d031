"""The SQLite log's storage: schema, connections, the group commit and retention.

Everything here is synchronous and runs in the writer process (see `sqlite.py`), or in a
tool that opens the file directly. Duplicates are dropped inside SQLite by a trigger on
(source, message_id) against the dedupe window, so a batch never pays a Python round trip
per message.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

logger = logging.getLogger("headwater.log")

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

MAINTENANCE_EVERY_SECONDS = 60.0
PRUNE_CHUNK = 5000
MAX_GROUP_REQUESTS = 2000

# One request to the writer: (request id, event rows, quarantine rows).
WriteRequest = tuple[int, list[tuple[Any, ...]], list[tuple[Any, ...]]]
# Its answer: (request id, stored, duplicates, error or None).
WriteResult = tuple[int, int, int, str | None]


@dataclass(frozen=True)
class StoreConfig:
    """What the writer process needs to know; plain values, so it crosses a process boundary."""

    path: Path
    synchronous: str
    lock_timeout_seconds: float
    dedupe_window_seconds: float
    retention_seconds: float


def connect(config: StoreConfig, *, write: bool) -> sqlite3.Connection:
    connection = sqlite3.connect(
        config.path,
        isolation_level=None,
        check_same_thread=False,
        timeout=config.lock_timeout_seconds,
    )
    if write:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {config.synchronous.upper()}")
        connection.execute("PRAGMA journal_size_limit = 67108864")
        connection.execute("PRAGMA cache_size = -65536")
    return connection


def initialize(config: StoreConfig) -> None:
    """Create the database and schema; switch the dedupe triggers on or off."""
    config.path.parent.mkdir(parents=True, exist_ok=True)
    connection = connect(config, write=True)
    try:
        connection.executescript(SCHEMA)
        connection.executescript(DEDUPE_TRIGGERS if config.dedupe_window_seconds else NO_DEDUPE)
    finally:
        connection.close()


def commit(connection: sqlite3.Connection, requests: list[WriteRequest]) -> list[WriteResult]:
    """Insert every request in one transaction: one fsync for the whole group."""
    counts: list[WriteResult] = []
    try:
        connection.execute("BEGIN IMMEDIATE")
        for request_id, events, quarantined in requests:
            stored = connection.executemany(INSERT_EVENT, events).rowcount if events else 0
            if quarantined:
                connection.executemany(INSERT_QUARANTINE, quarantined)
            counts.append((request_id, stored, len(events) - stored, None))
        connection.execute("COMMIT")
    except Exception as error:  # every waiting request must hear about any failure
        with contextlib.suppress(sqlite3.Error):
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        reason = f"the log could not commit: {error}"
        return [(request_id, 0, 0, reason) for request_id, _, _ in requests]
    return counts


@dataclass
class Maintenance:
    """Forgetting history past retention (and ids past the dedupe window), a chunk at a time."""

    config: StoreConfig
    due_at: float = 0.0
    tables: list[tuple[str, str, int]] = field(default_factory=list)

    def seconds_until_due(self) -> float:
        return 0.0 if self.tables else max(0.0, self.due_at - time.monotonic())

    def step(self, connection: sqlite3.Connection) -> None:
        """One bounded DELETE, so writes never wait long behind retention."""
        now = time.monotonic()
        if not self.tables:
            if now < self.due_at:
                return
            self.tables = self._expired_history()
            self.due_at = now + MAINTENANCE_EVERY_SECONDS
        table, key, cutoff = self.tables[0]
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
            self.tables.pop(0)

    def run_to_completion(self, connection: sqlite3.Connection) -> None:
        self.due_at = 0.0
        self.step(connection)
        while self.tables:
            self.step(connection)

    def _expired_history(self) -> list[tuple[str, str, int]]:
        """(table, key column, received_at cutoff in ms) for everything past its window."""
        wall_ms = int(time.time() * 1000)
        retention_cutoff = wall_ms - int(self.config.retention_seconds * 1000)
        tables = [("events", "position", retention_cutoff), ("quarantine", "id", retention_cutoff)]
        if self.config.dedupe_window_seconds:
            cutoff = wall_ms - int(self.config.dedupe_window_seconds * 1000)
            tables.append(("dedupe", "id", cutoff))
        return tables


def serve_writes(channel: Connection, config: StoreConfig) -> None:
    """The writer process: take every request waiting on the pipe, commit them together,
    answer them together. Exits when the pipe closes (its parent is gone) or on b"".

    Ctrl-C and SIGTERM reach the whole process group; the writer leaves shutting down to
    its parent, which drains in-flight requests before it closes the pipe.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    connection = connect(config, write=True)
    maintenance = Maintenance(config)
    try:
        while True:
            if not channel.poll(maintenance.seconds_until_due()):
                maintenance.step(connection)
                continue
            requests: list[WriteRequest] = []
            closing = False
            while len(requests) < MAX_GROUP_REQUESTS:
                try:
                    data = channel.recv_bytes()
                except (EOFError, OSError):
                    closing = True
                    break
                if not data:
                    closing = True
                    break
                requests.extend(pickle.loads(data))
                if not channel.poll(0):
                    break
            if requests:
                results = commit(connection, requests)
                with contextlib.suppress(OSError):
                    channel.send_bytes(pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL))
            if closing:
                return
    finally:
        connection.close()
