"""The seam between the loader and one warehouse engine.

A `Dialect` says how an engine spells names, types and the few statements that differ; a
`Session` is a connection and its transaction, with the engine's bulk path (`insert_new`,
`insert_all` for a load's tables, which PostgreSQL spreads over a second connection) fed
by `Dialect.encode`, which needs no connection and so runs ahead of the load. Everything
else — which tables and columns, widening, the `users` and `accounts` rebuild, what is
recorded — is the loader's, the same for every engine.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol
from urllib.parse import urlsplit

import pyarrow as pa

from headwater.warehouse.schema import ColumnType

Columns = Mapping[str, ColumnType]
# A column's values in its warehouse type: string, int64, float64, bool or timestamp[us, UTC].
ColumnValues = Mapping[str, pa.Array]
# The column every loaded table has: the time of the load that wrote the row.
LOADED_AT = "uuid_ts"


@dataclass(frozen=True)
class Rows:
    """A table's share of a load as the engine's bulk path takes it (`Dialect.encode`): the
    values, and what the engine made of them before the load (PostgreSQL: COPY text)."""

    values: ColumnValues
    encoded: Any = None


class Insert(NamedTuple):
    """One table's rows for `Session.insert_all`."""

    schema: str
    table: str
    columns: Columns
    rows: Rows
    # The load reads these rows back before it commits (the `users` rebuild reads
    # `identifies`): they must go through the session's own connection.
    read_later: bool = False


@dataclass(frozen=True)
class Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]


class Dialect:
    """SQL that is the same everywhere but for quoting, type names and a few statements."""

    types: ClassVar[Mapping[ColumnType, str]]
    # Each engine's information_schema spelling of its types, lower case.
    type_names: ClassVar[Mapping[str, ColumnType]]
    quote_char: ClassVar[str] = '"'
    placeholder: ClassVar[str] = "%s"
    max_name: ClassVar[int] = 127
    # Whether `insert_new` takes timestamps as ISO-8601 text (UTC) rather than timestamps.
    text_timestamps: ClassVar[bool] = False
    now: ClassVar[str] = "current_timestamp"
    # Ids per statement that records or rebuilds `users` / `accounts` rows.
    ids_at_once: ClassVar[int] = 10_000

    def encode(self, columns: Columns, values: ColumnValues) -> Rows:
        """The rows as `Session.insert_new` takes them; computed ahead of the load."""
        return Rows(values)

    def adopt_tables(self, schemas: Sequence[str]) -> Sequence[str]:
        """Statements that fit the tables of `schemas` an earlier release made to what loads
        expect now; run when a process first meets those schemas."""
        return ()

    def fit(self, name: str) -> str:
        """`name` if the engine takes it whole; else as many of its first bytes as fit, `_`,
        and 8 hex digits of its hash: distinct long names stay distinct, the same every load."""
        raw = name.encode()
        if len(raw) <= self.max_name:
            return name
        digest = hashlib.blake2b(raw, digest_size=4).hexdigest()
        head = raw[: self.max_name - len(digest) - 1].decode(errors="ignore")
        return f"{head}_{digest}"

    def quote(self, name: str) -> str:
        q = self.quote_char
        return q + name.replace(q, q + q) + q

    def table(self, schema: str, table: str) -> str:
        return f"{self.quote(schema)}.{self.quote(table)}"

    def column_type(self, data_type: str) -> ColumnType:
        return self.type_names.get(data_type.lower(), ColumnType.TEXT)

    def sql_type(self, column: str, column_type: ColumnType) -> str:
        return self.types[column_type]

    def create_schema(self, schema: str) -> str:
        return f"CREATE SCHEMA IF NOT EXISTS {self.quote(schema)}"

    def create_table(self, schema: str, table: str, columns: Columns, *, unique_id: bool) -> str:
        definitions = [f"{self.quote(name)} {self.sql_type(name, kind)}" for name, kind in columns.items()]
        if unique_id:
            definitions.append(f"UNIQUE ({self.quote('id')})")
        return f"CREATE TABLE IF NOT EXISTS {self.table(schema, table)} ({', '.join(definitions)})"

    def create_index(self, schema: str, table: str, column: str) -> str | None:
        """An index for lookups by `column` (None: the engine scans fast enough without)."""
        name = self.quote(self.fit(f"{table}_{column}_idx"))
        return f"CREATE INDEX IF NOT EXISTS {name} ON {self.table(schema, table)} ({self.quote(column)})"

    def add_column(self, schema: str, table: str, column: str, column_type: ColumnType) -> str:
        return (
            f"ALTER TABLE {self.table(schema, table)} ADD COLUMN {self.quote(column)}"
            f" {self.sql_type(column, column_type)}"
        )

    def widen_column(self, schema: str, table: str, column: str, column_type: ColumnType) -> str:
        return (
            f"ALTER TABLE {self.table(schema, table)} ALTER COLUMN {self.quote(column)}"
            f" TYPE {self.sql_type(column, column_type)}"
        )

    def after_widening(
        self, schema: str, table: str, column: str, was: ColumnType, now: ColumnType
    ) -> Sequence[str]:
        """Statements that respell values a widening converted, where the engine's spelling
        is not Headwater's (MySQL's booleans become `1`, Headwater writes `true`)."""
        return ()

    def among(self, column: str, ids: Sequence[str]) -> tuple[str, list[Any]]:
        """A condition `column is one of ids`, with its parameters."""
        marks = ", ".join([self.placeholder] * len(ids))
        return f"{self.quote(column)} IN ({marks})", list(ids)

    def each(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        """A query of one text column, `column`, with a row for each of `values`."""
        select = f"SELECT {self.placeholder} AS {self.quote(column)}"
        return " UNION ALL ".join([select] * len(values)), list(values)

    def columns_query(self, schemas: Sequence[str]) -> tuple[str, list[Any]]:
        marks = ", ".join([self.placeholder] * len(schemas))
        return (
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
            f" WHERE table_schema IN ({marks})",
            list(schemas),
        )


def url_without_secrets(url: str) -> str:
    """`postgresql://app:secret@db:5432/analytics` → `postgresql://app@db:5432/analytics`."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{parts.hostname or ''}{port}{parts.path}"


class Session(Protocol):
    """One connection to the warehouse, always inside a transaction: `commit` ends one and
    begins the next; closing without `commit` drops what the open one did (but for DDL in
    MySQL, which commits at once)."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> Result: ...

    def insert_new(self, schema: str, table: str, columns: Columns, rows: Rows) -> int:
        """Bulk-load `rows` (`Dialect.encode` of Arrow arrays already in each column's type;
        timestamps as text if the dialect's `text_timestamps` says so), skipping ids the
        table holds or that came earlier in them; `uuid_ts` is set to now. Returns the rows
        added."""
        ...

    def insert_all(self, inserts: Sequence[Insert]) -> int:
        """`insert_new` of each; an engine may run them side by side. Returns the rows added."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


def insert_each(session: Session, inserts: Sequence[Insert]) -> int:
    """`Session.insert_all` one table after the other."""
    return sum(session.insert_new(*insert[:4]) for insert in inserts)


class Engine(Protocol):
    """A configured warehouse: where it is and how to open a session on it."""

    @property
    def dialect(self) -> Dialect: ...

    def session(self, *, read_only: bool = False) -> Session: ...

    def describe(self) -> str:
        """Where the data goes, without secrets (`postgresql://app@db:5432/analytics`)."""
        ...


class KeepableSession:
    """A writing session whose connection a `SessionKeeper` may keep for the next session:
    closing it keeps it, unless a failed transaction (`clean` false after a rollback) or a
    lost connection makes it unfit."""

    def __init__(self, keeper: SessionKeeper | None) -> None:
        self.keeper = keeper
        self.opened_at = time.monotonic()
        self.clean = True

    def connected(self) -> bool:
        return True

    def disconnect(self) -> None:
        """End the connection for good."""
        raise NotImplementedError

    def close(self) -> None:
        if self.keeper is not None and self.clean and self.connected():
            self.keeper.keep(self)
        else:
            self.disconnect()


class SessionKeeper:
    """Keeps a writing session's connection open after the session closes, for the next
    session to take over — at most `linger` seconds idle and `hold_at_most` seconds since
    it opened. Opening a connection costs a load a large share of its time (DuckDB also
    checkpoints when its file closes); the loads of a backlog follow one another closely."""

    def __init__(self, linger: float, hold_at_most: float, make_way: float = 0.0) -> None:
        self.linger = linger
        self.hold_at_most = hold_at_most
        # After closing a connection held too long, the next session opens only this much
        # later: time for a waiting reader of a file only one process may open (DuckDB).
        self.make_way = make_way
        self.reopen_at = 0.0
        self._lock = threading.Lock()
        self._kept: KeepableSession | None = None
        self._timer: threading.Timer | None = None

    def take(self) -> Any:
        """The kept session, if any and still connected (the caller knows its type); with
        none, returns when a new one may open."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            kept, self._kept = self._kept, None
        if kept is not None and not kept.connected():
            kept.disconnect()
            kept = None
        if kept is None and (wait := self.reopen_at - time.monotonic()) > 0:
            time.sleep(wait)
        return kept

    def keep(self, session: KeepableSession) -> None:
        if time.monotonic() - session.opened_at >= self.hold_at_most:
            session.disconnect()
            self.reopen_at = time.monotonic() + self.make_way
            return
        with self._lock:
            self._kept = session
            self._timer = threading.Timer(self.linger, self.close)
            self._timer.daemon = True
            self._timer.start()

    def close(self) -> None:
        """End the kept session, if any."""
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is not None:
            kept.disconnect()
