"""SqliteLog on its own: ordering, dedupe, retention, consumers, concurrency, shutdown."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from pathlib import Path

import pytest

from headwater.log import EventQuery, EventRecord, LogUnavailable, QuarantineRecord
from headwater.log.sqlite import SqliteLog
from headwater.settings import LogSettings

DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def record(message_id: str, source: str = "web", type: str = "track") -> EventRecord:
    payload = b'{"messageId":"%s","note":"caf\xc3\xa9 \\u0000"}' % message_id.encode()
    return EventRecord(source, message_id, type, "u1", f"anon-{message_id}", now_ms(), payload)


def new_log(tmp_path: Path, *, window: float = 86400.0, retention: str = "30d") -> SqliteLog:
    return SqliteLog(tmp_path / "log" / "log.sqlite3", LogSettings(retention=retention), window)


def run(log: SqliteLog, body: Callable[[SqliteLog], Awaitable[None]]) -> None:
    """Start the log, run `body`, always close it."""

    async def main() -> None:
        await log.start()
        try:
            await body(log)
        finally:
            await log.close()

    asyncio.run(main())


def fill(log: SqliteLog, events: list[EventRecord], quarantined: Sequence[QuarantineRecord] = ()) -> None:
    """Start the log, append once, close it."""

    async def body(log: SqliteLog) -> None:
        await log.append(events, quarantined)

    run(log, body)


def age(log: SqliteLog, table: str, days: float, where: str = "1") -> None:
    """Move rows of `table` into the past, as if they had arrived `days` ago."""
    with closing(sqlite3.connect(log.path)) as connection, connection:
        connection.execute(
            f"UPDATE {table} SET received_at = received_at - ? WHERE {where}", (days * DAY_MS,)
        )


def ids(log: SqliteLog, **filters: object) -> list[str]:
    query = EventQuery(**{"limit": 10_000, **filters})  # type: ignore[arg-type]
    return [event.message_id for event in log.query(query)]


def test_append_then_query_in_order_with_payload_intact(tmp_path: Path) -> None:
    sent = [record(f"m{i}", "web" if i % 2 else "app", "page" if i == 3 else "track") for i in range(6)]

    async def body(log: SqliteLog) -> None:
        first = await log.append(sent[:4])
        second = await log.append(sent[4:])
        assert (first.stored, first.duplicates, second.stored, second.duplicates) == (4, 0, 2, 0)

    log = new_log(tmp_path)
    run(log, body)
    stored = log.query(EventQuery(limit=100))
    assert [event.position for event in stored] == [1, 2, 3, 4, 5, 6]
    assert [tuple(event[1:]) for event in stored] == [tuple(item) for item in sent]
    assert ids(log, source="web") == ["m1", "m3", "m5"]
    assert ids(log, type="page") == ["m3"]
    assert ids(log, user="anon-m2") == ["m2"]
    assert ids(log, limit=2) == ["m4", "m5"]
    assert ids(log, after_position=2, limit=2, oldest_first=True) == ["m2", "m3"]


def test_duplicates_dropped_within_and_across_appends_per_source(tmp_path: Path) -> None:
    async def body(log: SqliteLog) -> None:
        within = await log.append([record("a"), record("a"), record("b")])
        assert (within.stored, within.duplicates) == (2, 1)
        across = await log.append([record("b"), record("c"), record("a", source="app")])
        assert (across.stored, across.duplicates) == (2, 1)

    log = new_log(tmp_path)
    run(log, body)
    stored = [f"{e.source}/{e.message_id}" for e in log.query(EventQuery())]
    assert stored == ["web/a", "web/b", "web/c", "app/a"]
    assert log.stats().events == 4


def test_dedupe_disabled_keeps_duplicates(tmp_path: Path) -> None:
    async def body(log: SqliteLog) -> None:
        result = await log.append([record("a"), record("a")])
        assert (result.stored, result.duplicates) == (2, 0)
        result = await log.append([record("a")])
        assert (result.stored, result.duplicates) == (1, 0)

    log = new_log(tmp_path, window=0)
    run(log, body)
    assert ids(log) == ["a", "a", "a"]


def test_dedupe_window_expires(tmp_path: Path) -> None:
    log = new_log(tmp_path, window=3600)
    fill(log, [record("old"), record("fresh")])
    age(log, "dedupe", days=2 / 24, where="message_id = 'old'")  # two hours ago, past the 1 h window
    log.run_maintenance_now()

    async def again(log: SqliteLog) -> None:
        result = await log.append([record("old"), record("fresh")])
        assert (result.stored, result.duplicates) == (1, 1)

    run(log, again)
    assert ids(log) == ["old", "fresh", "old"]


def test_retention_drops_only_old_events_and_quarantine(tmp_path: Path) -> None:
    log = new_log(tmp_path, retention="7d")
    held = [QuarantineRecord("web", now_ms(), f"bad {i}", b"{}") for i in range(2)]
    fill(log, [record(f"m{i}") for i in range(5)], held)
    age(log, "events", days=8, where="position <= 3")
    age(log, "events", days=6, where="position = 4")
    age(log, "quarantine", days=8, where="id = 1")
    log.run_maintenance_now()
    assert ids(log) == ["m3", "m4"]
    assert [item.reason for item in log.query_quarantine(EventQuery())] == ["bad 1"]
    stats = log.stats()
    assert (stats.events, stats.last_position) == (2, 5)


def test_positions_keep_increasing_after_retention_emptied_the_log(tmp_path: Path) -> None:
    log = new_log(tmp_path, retention="1d")
    fill(log, [record("a"), record("b"), record("c")])
    age(log, "events", days=2)
    log.run_maintenance_now()
    assert log.query(EventQuery()) == []
    assert log.stats().events == 0
    fill(log, [record("d")])
    assert [(e.position, e.message_id) for e in log.query(EventQuery())] == [(4, "d")]


def test_consumers_read_acknowledge_and_lag(tmp_path: Path) -> None:
    log = new_log(tmp_path)
    fill(log, [record(f"m{i}") for i in range(5)])
    batch = log.read("warehouse", limit=2)
    assert [e.message_id for e in batch] == ["m0", "m1"]
    assert [e.message_id for e in log.read("warehouse", limit=2)] == ["m0", "m1"]  # not acknowledged yet
    log.acknowledge("warehouse", batch[-1].position)
    assert [e.message_id for e in log.read("warehouse", limit=10)] == ["m2", "m3", "m4"]
    assert [e.message_id for e in log.read("audiences", limit=1)] == ["m0"]  # independent consumer
    log.acknowledge("warehouse", 1)  # an older position never moves a consumer back
    stats = log.stats()
    assert stats.consumer_positions == {"warehouse": 2}
    assert stats.last_position - stats.consumer_positions["warehouse"] == 3
    log.acknowledge("warehouse", 5)
    assert log.read("warehouse", limit=10) == []
    assert log.stats().consumer_positions["warehouse"] == stats.last_position


def test_concurrent_appends_are_all_committed_with_exact_counts(tmp_path: Path) -> None:
    tasks, per_task = 200, 50
    results: dict[int, tuple[int, int]] = {}

    async def one(log: SqliteLog, task: int) -> None:
        # tasks t and t+100 send the same 40 ids; each task repeats 10 of its own ids
        batch = [record(f"{task % 100}-{i % 40}") for i in range(per_task)]
        result = await log.append(batch)
        results[task] = (result.stored, result.duplicates)

    async def body(log: SqliteLog) -> None:
        await asyncio.gather(*(one(log, task) for task in range(tasks)))
        assert log.pending_messages() == 0

    log = new_log(tmp_path)
    run(log, body)
    for task in range(100):
        assert sorted([results[task], results[task + 100]]) == [(0, 50), (40, 10)]
    stored = log.query(EventQuery(limit=100_000))
    assert len(stored) == 100 * 40
    assert len({(e.source, e.message_id) for e in stored}) == 100 * 40
    assert [e.position for e in stored] == list(range(1, 4001))
    assert log.stats().events == 4000


def test_quarantine_round_trips(tmp_path: Path) -> None:
    held = [
        QuarantineRecord("web", now_ms(), "missing_user: a message needs userId", b'{"event":"x"}'),
        QuarantineRecord("app", now_ms() + 1, "invalid_type", b"\x00\xffraw"),
    ]

    async def body(log: SqliteLog) -> None:
        result = await log.append((), held)
        assert (result.stored, result.duplicates) == (0, 0)

    log = new_log(tmp_path)
    run(log, body)
    found = log.query_quarantine(EventQuery())
    assert [(q.id, *q[1:]) for q in found] == [(1, *held[0]), (2, *held[1])]
    assert [q.reason for q in log.query_quarantine(EventQuery(source="app"))] == ["invalid_type"]
    assert [q.id for q in log.query_quarantine(EventQuery(limit=1))] == [2]
    assert log.query(EventQuery()) == []


def test_closed_or_unstarted_log_refuses_appends(tmp_path: Path) -> None:
    log = new_log(tmp_path)

    async def body() -> None:
        with pytest.raises(LogUnavailable):
            await log.append([record("before-start")])
        await log.start()
        assert (await log.append([record("a")])).stored == 1
        await log.close()
        with pytest.raises(LogUnavailable):
            await log.append([record("b")])
        with pytest.raises(LogUnavailable):
            await log.append((), [QuarantineRecord("web", now_ms(), "r", b"{}")])

    asyncio.run(body())
    assert ids(log) == ["a"]


def test_maintenance_during_appends_never_stops_the_writer(tmp_path: Path) -> None:
    """`run_maintenance_now` from another thread while the writer runs must not kill the writer."""

    async def body(log: SqliteLog) -> None:
        stop = threading.Event()
        errors: list[BaseException] = []

        def maintain() -> None:
            while not stop.is_set():
                try:
                    log.run_maintenance_now()
                except Exception as error:  # keep going: the writer is what is under test
                    errors.append(error)

        worker = threading.Thread(target=maintain)
        worker.start()
        try:
            deadline = time.monotonic() + 2.0
            count = 0
            while time.monotonic() < deadline:
                result = await asyncio.wait_for(log.append([record(f"m{count}")]), timeout=5)
                assert result.stored == 1
                count += 1
        finally:
            stop.set()
            worker.join()
        assert errors == []
        assert log.stats().events == count

    run(new_log(tmp_path), body)
