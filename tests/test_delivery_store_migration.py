"""A delivery store written before events carried their source opens, keeps its retry
queue and dead letters, and records sources from then on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from headwater.deliver.store import DeadLetter, DeliveryStore, Parked

OLD_SCHEMA = """
CREATE TABLE positions (destination TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, position INTEGER NOT NULL,
    user_key TEXT NOT NULL, received_at INTEGER NOT NULL, message BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, first_failed_at REAL, next_attempt_at REAL NOT NULL,
    last_error TEXT
);
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, position INTEGER NOT NULL,
    user_key TEXT NOT NULL, received_at INTEGER NOT NULL, message BLOB NOT NULL,
    attempts INTEGER NOT NULL, failed_at REAL NOT NULL, reason TEXT NOT NULL
);
INSERT INTO pending (destination, position, user_key, received_at, message, next_attempt_at)
    VALUES ('hook', 7, 'u1', 1000, '{"type":"track"}', 0);
INSERT INTO dead_letters (destination, position, user_key, received_at, message, attempts, failed_at, reason)
    VALUES ('hook', 5, 'u2', 900, '{"type":"identify"}', 3, 1.0, 'HTTP 400');
"""


def test_an_old_store_gains_sources_and_keeps_its_queue(tmp_path: Path) -> None:
    path = tmp_path / "delivery.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SCHEMA)

    store = DeliveryStore(path)
    (waiting,) = store.due_heads("hook", now=1.0, limit=10)
    assert (waiting.position, waiting.user_key, waiting.source) == (7, "u1", "")
    (dead,) = store.dead_letters("hook")
    assert (dead.position, dead.reason) == (5, "HTTP 400")

    store.record(
        "hook",
        parked=[Parked(9, "u3", 1100, b"{}", 0, 0.0, None, "web_app")],
        dead=[DeadLetter(10, "u4", 1200, b"{}", 1, "HTTP 422", "ios_app")],
    )
    assert store.redrive("hook") == 2
    sources = {entry.user_key: entry.source for entry in store.due_heads("hook", now=1.0, limit=10)}
    assert sources == {"u1": "", "u3": "web_app", "u2": "", "u4": "ios_app"}
    store.close()
    DeliveryStore(path).close()  # a second open finds nothing left to migrate
