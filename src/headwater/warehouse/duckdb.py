"""DuckDB, the embedded default: one file (`DATA_DIR/warehouse.duckdb`), loaded through Arrow.

DuckDB lets one process write a file and no other process open it meanwhile, so a load
holds the file only while it runs (well under a second for 10,000 events); between
loads `headwater sql` opens it read-only. Either side waits for the other's lock.

Opening the file and closing it (which checkpoints) cost a load about a fifth of its time.
A loader's engine (`linger`) therefore keeps the file open for a moment after a load
(`engine.SessionKeeper`), so the loads of a backlog follow one another on one connection —
but never longer than `HOLD_AT_MOST_SECONDS` at a stretch, after which it leaves the file
closed for `MAKE_WAY_SECONDS`, so readers get their turn.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from headwater.warehouse.engine import (
    Columns,
    Dialect,
    Insert,
    KeepableSession,
    Result,
    Rows,
    SessionKeeper,
    insert_each,
)
from headwater.warehouse.schema import ColumnType

LOCK_WAIT_SECONDS = 30.0
HOLD_AT_MOST_SECONDS = 10.0
CHECKPOINT_THRESHOLD = "64MB"
MAKE_WAY_SECONDS = 0.2  # then the file stays closed this long, for a waiting reader (polls every 0.05 s)
STAGE = "headwater_stage"
RECEIVED_AT = "received_at"


class DuckDBDialect(Dialect):
    types: ClassVar[Mapping[ColumnType, str]] = {
        ColumnType.TIMESTAMP: "TIMESTAMPTZ",
        ColumnType.BIGINT: "BIGINT",
        ColumnType.DOUBLE: "DOUBLE",
        ColumnType.BOOLEAN: "BOOLEAN",
        ColumnType.TEXT: "VARCHAR",
    }
    type_names: ClassVar[Mapping[str, ColumnType]] = {
        "timestamp with time zone": ColumnType.TIMESTAMP,
        "timestamp": ColumnType.TIMESTAMP,
        "bigint": ColumnType.BIGINT,
        "double": ColumnType.DOUBLE,
        "boolean": ColumnType.BOOLEAN,
        "varchar": ColumnType.TEXT,
    }
    placeholder: ClassVar[str] = "?"

    def create_table(self, schema: str, table: str, columns: Columns, *, unique_id: bool) -> str:
        # No index on `id`: DuckDB's would have to be loaded at every open; `insert_new`
        # anti-joins on the column instead, which a columnar scan makes cheap.
        return super().create_table(schema, table, columns, unique_id=False)

    def create_index(self, schema: str, table: str, column: str) -> str | None:
        return None  # an index would be loaded at every open; zone maps serve the lookups

    def widen_column(self, schema: str, table: str, column: str, column_type: ColumnType) -> str:
        return (
            f"ALTER TABLE {self.table(schema, table)} ALTER {self.quote(column)}"
            f" TYPE {self.types[column_type]}"
        )

    def among(self, column: str, ids: Sequence[str]) -> tuple[str, list[Any]]:
        return f"list_contains(?, {self.quote(column)})", [list(ids)]

    def each(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"SELECT unnest(?::VARCHAR[]) AS {self.quote(column)}", [list(values)]


class DuckDBSession(KeepableSession):
    def __init__(
        self,
        path: Path,
        dialect: DuckDBDialect,
        *,
        read_only: bool,
        keeper: SessionKeeper | None = None,
    ) -> None:
        self.dialect = dialect
        self.connection = _connect(path, read_only)
        self.connection.execute("SET TimeZone = 'UTC'")
        super().__init__(keeper)
        if not read_only:
            # DuckDB checkpoints whenever its log passes 16 MB (about two loads of 10,000
            # events); at 64 MB the loads of a backlog checkpoint a quarter as often, and
            # took ~20% less time in all.
            self.connection.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            # A load's statements are small: on one thread they took a fifth less time than
            # on two in the bench's drain, and leave the other core to the next batch.
            self.connection.execute("SET threads = 1")
            self.connection.begin()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.connection.execute(sql, list(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cursor = self.connection.execute(sql, list(params))
        names = [column[0] for column in cursor.description or []]
        return Result(names, cursor.fetchall())

    def insert_new(self, schema: str, table: str, columns: Columns, rows: Rows) -> int:
        q = self.dialect.quote
        values = rows.values
        stage = pa.table({name: values[name] for name in columns})
        target = self.dialect.table(schema, table)
        names = ", ".join(q(name) for name in columns)
        picks = ", ".join(f"s.{q(name)}" for name in columns)
        # The same message always has the same `received_at`: looking for its id among the
        # rows received in the stage's span lets zone maps skip the rest of the table, and
        # a stage received after everything in the table (a backlog, loaded in order) has
        # nothing to look for.
        span, params, loaded_before = "", [], True
        received = values.get(RECEIVED_AT)
        if (
            columns.get(RECEIVED_AT) is ColumnType.TIMESTAMP
            and received is not None
            and not received.null_count
        ):
            bounds = pc.min_max(received)
            first, last = bounds["min"].as_py(), bounds["max"].as_py()
            [(newest,)] = self.connection.execute(f"SELECT max({q(RECEIVED_AT)}) FROM {target}").fetchall()
            loaded_before = newest is not None and newest >= first
            if loaded_before:
                span, params = f" AND t.{q(RECEIVED_AT)} BETWEEN ? AND ?", [first, last]
        existing = (
            f" WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.id = s.id{span})" if loaded_before else ""
        )
        ids = values["id"]
        once = (
            ""
            if pc.count_distinct(ids).as_py() == len(ids)
            else " QUALIFY row_number() OVER (PARTITION BY s.id) = 1"
        )
        # No `finally`: unregistering in a failed transaction would raise and hide the
        # error; the failed session is rolled back and closed, which drops the stage too.
        self.connection.register(STAGE, stage)
        row = self.connection.execute(
            f"INSERT INTO {target} ({names}, uuid_ts) SELECT {picks}, current_timestamp FROM {STAGE} s"
            f"{existing}{once}",
            params,
        ).fetchone()
        self.connection.unregister(STAGE)
        return int(row[0]) if row else 0

    def insert_all(self, inserts: Sequence[Insert]) -> int:
        return insert_each(self, inserts)

    def commit(self) -> None:
        self.connection.commit()
        self.connection.begin()

    def rollback(self) -> None:
        self.clean = False
        with contextlib.suppress(duckdb.TransactionException):  # a read-only session began nothing
            self.connection.rollback()

    def disconnect(self) -> None:
        self.connection.close()


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the file, waiting while another process holds its lock."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class DuckDBEngine:
    """Sessions on one DuckDB file. With `linger` (seconds), a writing session's connection
    stays open that long after it closes, for the next session to take over."""

    dialect = DuckDBDialect()

    def __init__(self, path: Path, *, linger: float = 0.0) -> None:
        self.path = path
        self.keeper = SessionKeeper(linger, HOLD_AT_MOST_SECONDS, MAKE_WAY_SECONDS) if linger else None

    def session(self, *, read_only: bool = False) -> DuckDBSession:
        if read_only:
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path} does not exist yet: nothing has been loaded into it")
            return DuckDBSession(self.path, self.dialect, read_only=True)
        kept: DuckDBSession | None = self.keeper.take() if self.keeper else None
        if kept is not None:
            return kept
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return DuckDBSession(self.path, self.dialect, read_only=False, keeper=self.keeper)

    def describe(self) -> str:
        return f"duckdb {self.path}"
