"""The embedded log: one SQLite file in WAL mode, written by a process of its own.

Requests hand their records to the writer process over a pipe. The writer takes every
request waiting, inserts them in one transaction, commits (fsync with `synchronous=full`)
and answers them all at once: under load one fsync covers hundreds of requests; idle, a
request waits for exactly one commit. The writer has a core of its own, so inserting never
competes with parsing requests for the collector's interpreter lock. Reads go straight to
the file (WAL lets readers and the writer work at once).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import pickle
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
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
from headwater.log.sqlite_store import (
    Maintenance,
    StoreConfig,
    WriteRequest,
    WriteResult,
    connect,
    initialize,
    serve_writes,
)
from headwater.settings import LogSettings

logger = logging.getLogger("headwater.log")

EVENT_COLUMNS = "position, source, message_id, type, user_id, anonymous_id, received_at, payload"
SEND_GROUP = 256


ResultHandler = Callable[[list[WriteResult] | None], None]
Outcome = tuple[int, int, str | None] | None


@dataclass
class _Waiting:
    future: asyncio.Future[AppendResult]
    loop: asyncio.AbstractEventLoop
    messages: int


class _Writer:
    """The parent's end of the writer process: a sender thread, a receiver thread."""

    def __init__(self, config: StoreConfig, on_results: ResultHandler) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        self.channel: Connection = ours
        self.process = context.Process(
            target=serve_writes, args=(theirs, config), name="headwater-log-writer", daemon=True
        )
        self.process.start()
        theirs.close()
        self.outbox: queue.SimpleQueue[WriteRequest | None] = queue.SimpleQueue()
        self.on_results = on_results
        self.sender = threading.Thread(target=self._send, name="log-sender", daemon=True)
        self.receiver = threading.Thread(target=self._receive, name="log-receiver", daemon=True)
        self.sender.start()
        self.receiver.start()

    def submit(self, request: WriteRequest) -> None:
        self.outbox.put(request)

    def stop(self) -> None:
        self.outbox.put(None)
        self.sender.join()
        self.process.join()
        self.receiver.join()
        self.channel.close()

    def abandon(self) -> None:
        """Let go of a writer whose process died: stop the sender, close the pipe."""
        self.outbox.put(None)
        self.channel.close()

    def _send(self) -> None:
        while True:
            group: list[WriteRequest] = []
            item = self.outbox.get()
            while item is not None:
                group.append(item)
                if len(group) >= SEND_GROUP:
                    break
                try:
                    item = self.outbox.get_nowait()
                except queue.Empty:
                    break
            try:
                if group:
                    self.channel.send_bytes(pickle.dumps(group, protocol=pickle.HIGHEST_PROTOCOL))
                if item is None:
                    self.channel.send_bytes(b"")
                    return
            except OSError:
                return

    def _receive(self) -> None:
        while True:
            try:
                data = self.channel.recv_bytes()
            except (EOFError, OSError):
                self.on_results(None)
                return
            self.on_results(pickle.loads(data))


class SqliteLog:
    """`EventLog` on one SQLite database file."""

    def __init__(self, path: Path, settings: LogSettings, dedupe_window_seconds: float) -> None:
        self.path = path
        self.settings = settings
        self.dedupe_window_seconds = dedupe_window_seconds
        self.config = StoreConfig(
            path=path,
            synchronous=settings.synchronous,
            lock_timeout_seconds=settings.lock_timeout_seconds,
            dedupe_window_seconds=dedupe_window_seconds,
            retention_seconds=settings.retention_seconds,
        )
        self._writer: _Writer | None = None
        self._waiting: dict[int, _Waiting] = {}
        self._waiting_messages = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._readers = threading.local()
        self._appended: asyncio.Event | None = None

    @classmethod
    def from_url(cls, url: str, settings: LogSettings, *, dedupe_window_seconds: float) -> SqliteLog:
        """`sqlite:///relative/path` or `sqlite:////absolute/path`."""
        path = Path(url.removeprefix("sqlite:///"))
        return cls(path, settings, dedupe_window_seconds)

    def exists(self) -> bool:
        return self.path.exists()

    def describe(self) -> str:
        return str(self.path)

    def initialize(self) -> None:
        """Create the database and schema (also for tools that open an empty directory)."""
        initialize(self.config)

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._readers, "connection", None)
        if connection is None:
            connection = connect(self.config, write=False)
            self._readers.connection = connection
        return connection

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.initialize()
        self._writer = _Writer(self.config, self._on_results)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, writer.stop)

    # -- writing -------------------------------------------------------------------------

    async def append(
        self, events: Sequence[EventRecord], quarantined: Sequence[QuarantineRecord] = ()
    ) -> AppendResult:
        if not events and not quarantined:
            return AppendResult(stored=0, duplicates=0)
        writer = self._writer
        if writer is None:
            raise LogUnavailable("the log is not running")
        if not writer.process.is_alive():
            writer = self._restart_writer(writer)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        request_id = next(self._ids)
        messages = len(events) + len(quarantined)
        with self._lock:
            self._waiting[request_id] = _Waiting(future, loop, messages)
            self._waiting_messages += messages
        writer.submit((request_id, list(map(tuple, events)), list(map(tuple, quarantined))))
        return await future

    def _restart_writer(self, dead: _Writer) -> _Writer:
        logger.error(
            "the log writer process stopped; starting a new one",
            extra={"exit_code": dead.process.exitcode},
        )
        dead.abandon()
        self._writer = _Writer(self.config, self._on_results)
        return self._writer

    def pending_messages(self) -> int:
        return self._waiting_messages

    def _on_results(self, results: list[WriteResult] | None) -> None:
        """Called on the receiver thread; None means the writer process is gone."""
        with self._lock:
            answered: list[tuple[_Waiting, Outcome]] = []
            if results is None:
                answered = [(waiting, None) for waiting in self._waiting.values()]
                self._waiting.clear()
                self._waiting_messages = 0
            else:
                for request_id, stored, duplicates, error in results:
                    waiting = self._waiting.pop(request_id, None)
                    if waiting is not None:
                        self._waiting_messages -= waiting.messages
                        answered.append((waiting, (stored, duplicates, error)))
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[_Waiting, tuple[int, int, str | None] | None]]
        ] = {}
        for waiting, outcome in answered:
            by_loop.setdefault(waiting.loop, []).append((waiting, outcome))
        for loop, items in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._settle, items)

    def _settle(self, items: list[tuple[_Waiting, Outcome]]) -> None:
        """On the requests' event loop: answer each waiting append, then wake the consumers."""
        for waiting, outcome in items:
            if waiting.future.done():
                continue
            if outcome is None:
                waiting.future.set_exception(LogUnavailable("the log writer process stopped"))
            elif outcome[2] is not None:
                waiting.future.set_exception(LogUnavailable(outcome[2]))
            else:
                waiting.future.set_result(AppendResult(stored=outcome[0], duplicates=outcome[1]))
        if self._appended is not None:
            self._appended.set()

    def run_maintenance_now(self) -> None:
        """Apply retention and the dedupe window completely, on a connection of its own."""
        connection = connect(self.config, write=True)
        try:
            Maintenance(self.config).run_to_completion(connection)
        finally:
            connection.close()

    # -- reading -------------------------------------------------------------------------

    def read(self, consumer: str, limit: int) -> list[StoredEvent]:
        row = self._reader().execute("SELECT position FROM consumers WHERE name = ?", (consumer,)).fetchone()
        return self.read_after(row[0] if row else 0, limit)

    def read_after(self, position: int, limit: int) -> list[StoredEvent]:
        rows = (
            self._reader()
            .execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (position, limit),
            )
            .fetchall()
        )
        return [StoredEvent(*row) for row in rows]

    def appended(self) -> asyncio.Event:
        if self._appended is None:
            self._appended = asyncio.Event()
        return self._appended

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
        # Two subqueries: SQLite answers a lone min() or max() from the index, both together by a scan.
        first, last = connection.execute(
            "SELECT (SELECT min(position) FROM events), (SELECT max(position) FROM events)"
        ).fetchone()
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
