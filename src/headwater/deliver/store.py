"""Delivery state, durable: each destination's log position, its retry queue (in per-user
order), its dead letters and its statistics. One SQLite file, `DATA_DIR/delivery.sqlite3`.

An event leaves the router's hands only inside one transaction that also moves the
destination's position past it: delivered, parked for a retry, or dead-lettered.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS positions (destination TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    position INTEGER NOT NULL,
    user_key TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    message BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_failed_at REAL,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    source TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS pending_user ON pending (destination, user_key, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    position INTEGER NOT NULL,
    user_key TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    message BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at REAL NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS dead_letters_destination ON dead_letters (destination, id);
CREATE TABLE IF NOT EXISTS counters (
    destination TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (destination, name)
);
CREATE TABLE IF NOT EXISTS latency (
    destination TEXT PRIMARY KEY, p50_ms REAL NOT NULL, p95_ms REAL NOT NULL, samples INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS recent_errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL
);
"""

RECENT_ERRORS_KEPT = 20
# Columns added after a table was first released: (table, column, definition).
MIGRATIONS = (
    ("pending", "source", "TEXT NOT NULL DEFAULT ''"),
    ("dead_letters", "source", "TEXT NOT NULL DEFAULT ''"),
)


@dataclass(frozen=True)
class Parked:
    """An event that waits in the retry queue (`attempts` 0: behind its user's earlier one)."""

    position: int
    user_key: str
    received_at_ms: int
    message: bytes
    attempts: int
    next_attempt_at: float
    error: str | None
    source: str = ""


@dataclass(frozen=True)
class DeadLetter:
    position: int
    user_key: str
    received_at_ms: int
    message: bytes
    attempts: int
    reason: str
    source: str = ""


@dataclass(frozen=True)
class PendingEntry:
    id: int
    position: int
    user_key: str
    received_at_ms: int
    message: bytes
    attempts: int
    first_failed_at: float | None
    source: str = ""


@dataclass(frozen=True)
class DeadLetterRow:
    id: int
    position: int
    user_key: str
    received_at_ms: int
    message: bytes
    attempts: int
    failed_at: float
    reason: str


@dataclass(frozen=True)
class Status:
    destination: str
    position: int | None
    counters: dict[str, int]
    retrying: int
    dead_letters: int
    p50_ms: float | None
    p95_ms: float | None
    recent_errors: list[tuple[float, str]]


class DeliveryStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode = WAL")
        # Losing the newest transactions in a power cut only means redelivery: every change
        # moves together with the position it belongs to, so NORMAL keeps at-least-once.
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        for table, column, definition in MIGRATIONS:
            present = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def close(self) -> None:
        self.db.close()

    def position(self, destination: str) -> int | None:
        row = self.db.execute(
            "SELECT position FROM positions WHERE destination = ?", (destination,)
        ).fetchone()
        return None if row is None else int(row[0])

    def blocked_users(self, destination: str) -> set[str]:
        rows = self.db.execute("SELECT DISTINCT user_key FROM pending WHERE destination = ?", (destination,))
        return {row[0] for row in rows}

    def record(
        self,
        destination: str,
        *,
        position: int | None = None,
        parked: Sequence[Parked] = (),
        dead: Sequence[DeadLetter] = (),
        done_pending: Iterable[int] = (),
        counters: dict[str, int] | None = None,
        errors: Sequence[str] = (),
        latency: tuple[float, float, int] | None = None,
    ) -> None:
        """Everything one round of delivery changed, in one transaction."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM pending WHERE id = ?", [(entry,) for entry in done_pending])
            self.db.executemany(
                "INSERT INTO pending (destination, position, user_key, received_at, message, attempts,"
                " first_failed_at, next_attempt_at, last_error, source)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        destination,
                        item.position,
                        item.user_key,
                        item.received_at_ms,
                        item.message,
                        item.attempts,
                        now if item.attempts else None,
                        item.next_attempt_at,
                        item.error,
                        item.source,
                    )
                    for item in parked
                ],
            )
            self.db.executemany(
                "INSERT INTO dead_letters (destination, position, user_key, received_at, message, attempts,"
                " failed_at, reason, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        destination,
                        d.position,
                        d.user_key,
                        d.received_at_ms,
                        d.message,
                        d.attempts,
                        now,
                        d.reason,
                        d.source,
                    )
                    for d in dead
                ],
            )
            if position is not None:
                self.db.execute(
                    "INSERT INTO positions (destination, position) VALUES (?, ?) ON CONFLICT (destination)"
                    " DO UPDATE SET position = max(position, excluded.position)",
                    (destination, position),
                )
            for name, value in (counters or {}).items():
                if value:
                    self.db.execute(
                        "INSERT INTO counters (destination, name, value) VALUES (?, ?, ?) ON CONFLICT"
                        " (destination, name) DO UPDATE SET value = value + excluded.value",
                        (destination, name, value),
                    )
            for reason in errors:
                self.db.execute(
                    "INSERT INTO recent_errors (destination, at, reason) VALUES (?, ?, ?)",
                    (destination, now, reason),
                )
            if errors:
                self.db.execute(
                    "DELETE FROM recent_errors WHERE destination = ? AND id NOT IN (SELECT id FROM"
                    " recent_errors WHERE destination = ? ORDER BY id DESC LIMIT ?)",
                    (destination, destination, RECENT_ERRORS_KEPT),
                )
            if latency is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO latency (destination, p50_ms, p95_ms, samples)"
                    " VALUES (?, ?, ?, ?)",
                    (destination, *latency),
                )

    def retry(self, entry_id: int, attempts: int, next_attempt_at: float, error: str) -> None:
        with self.db:
            self.db.execute(
                "UPDATE pending SET attempts = ?, next_attempt_at = ?, last_error = ?,"
                " first_failed_at = coalesce(first_failed_at, ?) WHERE id = ?",
                (attempts, next_attempt_at, error, time.time(), entry_id),
            )

    def due_heads(self, destination: str, now: float, limit: int) -> list[PendingEntry]:
        """Each blocked user's oldest waiting event, if its time has come; oldest first."""
        rows = self.db.execute(
            "SELECT p.id, p.position, p.user_key, p.received_at, p.message, p.attempts, p.first_failed_at,"
            " p.source"
            " FROM pending p JOIN (SELECT min(id) AS id FROM pending WHERE destination = ? GROUP BY user_key)"
            " heads ON heads.id = p.id WHERE p.next_attempt_at <= ? ORDER BY p.id LIMIT ?",
            (destination, now, limit),
        ).fetchall()
        return [PendingEntry(*row) for row in rows]

    def next_due_at(self, destination: str) -> float | None:
        row = self.db.execute(
            "SELECT min(p.next_attempt_at) FROM pending p JOIN (SELECT min(id) AS id FROM pending"
            " WHERE destination = ? GROUP BY user_key) heads ON heads.id = p.id",
            (destination,),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def still_blocked(self, destination: str, user_key: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM pending WHERE destination = ? AND user_key = ? LIMIT 1", (destination, user_key)
        ).fetchone()
        return row is not None

    def dead_letters(self, destination: str, limit: int = 100) -> list[DeadLetterRow]:
        rows = self.db.execute(
            "SELECT id, position, user_key, received_at, message, attempts, failed_at, reason"
            " FROM dead_letters WHERE destination = ? ORDER BY id LIMIT ?",
            (destination, limit),
        ).fetchall()
        return [DeadLetterRow(*row) for row in rows]

    def redrive(
        self,
        destination: str,
        ids: Sequence[int] | None = None,
        where: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> int:
        """Move dead letters (all, these ids, or those whose message matches `where`) back to
        the retry queue, due now; each one exactly once."""
        if where is not None:
            wanted = set(ids) if ids else None
            rows = self.db.execute(
                "SELECT id, message FROM dead_letters WHERE destination = ? ORDER BY id", (destination,)
            )
            ids = [
                row_id
                for row_id, message in rows
                if (wanted is None or row_id in wanted) and where(orjson.loads(message))
            ]
            if not ids:
                return 0
        selector = "destination = ?" + (f" AND id IN ({','.join('?' * len(ids))})" if ids else "")
        parameters = (destination, *(ids or ()))
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            moved = self.db.execute(
                "INSERT INTO pending (destination, position, user_key, received_at, message, attempts,"
                " next_attempt_at, source) SELECT destination, position, user_key, received_at, message,"
                " 0, 0, source"
                f" FROM dead_letters WHERE {selector} ORDER BY id",
                parameters,
            ).rowcount
            self.db.execute(f"DELETE FROM dead_letters WHERE {selector}", parameters)
        return moved

    def status(self, destination: str) -> Status:
        counters = dict(
            self.db.execute(
                "SELECT name, value FROM counters WHERE destination = ?", (destination,)
            ).fetchall()
        )
        retrying = self.db.execute(
            "SELECT count(*) FROM pending WHERE destination = ?", (destination,)
        ).fetchone()
        dead = self.db.execute(
            "SELECT count(*) FROM dead_letters WHERE destination = ?", (destination,)
        ).fetchone()
        latency = self.db.execute(
            "SELECT p50_ms, p95_ms FROM latency WHERE destination = ?", (destination,)
        ).fetchone()
        errors = self.db.execute(
            "SELECT at, reason FROM recent_errors WHERE destination = ? ORDER BY id DESC LIMIT 5",
            (destination,),
        ).fetchall()
        return Status(
            destination=destination,
            position=self.position(destination),
            counters=counters,
            retrying=int(retrying[0]),
            dead_letters=int(dead[0]),
            p50_ms=None if latency is None else float(latency[0]),
            p95_ms=None if latency is None else float(latency[1]),
            recent_errors=[(float(at), str(reason)) for at, reason in errors],
        )
