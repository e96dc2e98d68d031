"""PostgreSQL: each load COPYs its rows straight into each table, in COPY's text format
written from the load's columns with a few Arrow calls a table — ahead of the load
(`PostgresDialect.encode`). `uuid_ts` defaults to `now()`, the load's time, so the rows can
be written before it. (PostgreSQL parses the text format ~24% faster than CSV, which
quotes every string.)

`id` carries a unique constraint. When a COPY meets an id the table holds already (a batch
delivered again after a crash), it is rolled back to a savepoint and the rows go through
a temporary table instead, from which `INSERT … ON CONFLICT (id) DO NOTHING` takes the
new ids: loads stay idempotent and the usual load pays for no check.

Names longer than PostgreSQL's 63 bytes are fitted by the loader (`Dialect.fit`). Text
cannot hold NUL: the session writes U+FFFD in its place, in rows and in parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, ClassVar

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from headwater.warehouse.engine import (
    LOADED_AT,
    Columns,
    ColumnValues,
    Dialect,
    Insert,
    KeepableSession,
    Result,
    Rows,
    SessionKeeper,
    insert_each,
    url_without_secrets,
)
from headwater.warehouse.schema import ColumnType

STAGE = "headwater_stage"
# A connection kept between loads is replaced after this long.
HOLD_AT_MOST_SECONDS = 600.0
NUL = "\x00"
REPLACEMENT = "\ufffd"


def _without_nul(value: Any) -> Any:
    if isinstance(value, str) and NUL in value:
        return value.replace(NUL, REPLACEMENT)
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


class PostgresDialect(Dialect):
    types: ClassVar[Mapping[ColumnType, str]] = {
        ColumnType.TIMESTAMP: "timestamptz",
        ColumnType.BIGINT: "bigint",
        ColumnType.DOUBLE: "double precision",
        ColumnType.BOOLEAN: "boolean",
        ColumnType.TEXT: "text",
    }
    type_names: ClassVar[Mapping[str, ColumnType]] = {
        "timestamp with time zone": ColumnType.TIMESTAMP,
        "timestamp without time zone": ColumnType.TIMESTAMP,
        "bigint": ColumnType.BIGINT,
        "integer": ColumnType.BIGINT,
        "double precision": ColumnType.DOUBLE,
        "boolean": ColumnType.BOOLEAN,
        "text": ColumnType.TEXT,
    }
    max_name: ClassVar[int] = 63
    text_timestamps: ClassVar[bool] = True  # the SDKs' ISO text goes into COPY as it is
    now: ClassVar[str] = "now()"

    def sql_type(self, column: str, column_type: ColumnType) -> str:
        if column == LOADED_AT:
            return f"{self.types[column_type]} DEFAULT {self.now}"
        return self.types[column_type]

    def encode(self, columns: Columns, values: ColumnValues) -> Rows:
        return Rows(values, _copy_text(columns, values))

    def adopt_tables(self, schemas: Sequence[str]) -> Sequence[str]:
        """Tables made before `uuid_ts` had its default get it (and only those: the ALTER
        waits for every reader of the table)."""
        names = ", ".join("'" + schema.replace("'", "''") + "'" for schema in schemas)
        return [
            "DO $headwater$ DECLARE found record; BEGIN"
            " FOR found IN SELECT table_schema, table_name FROM information_schema.columns"
            f" WHERE table_schema IN ({names}) AND column_name = '{LOADED_AT}' AND column_default IS NULL"
            " LOOP EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN "
            f"{LOADED_AT} SET DEFAULT {self.now}', found.table_schema, found.table_name);"
            " END LOOP; END $headwater$"
        ]

    def widen_column(self, schema: str, table: str, column: str, column_type: ColumnType) -> str:
        name = self.quote(column)
        sql_type = self.types[column_type]
        return (
            f"ALTER TABLE {self.table(schema, table)} ALTER COLUMN {name}"
            f" TYPE {sql_type} USING {name}::{sql_type}"
        )

    def among(self, column: str, ids: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{self.quote(column)} = ANY(%s)", [list(ids)]

    def each(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"SELECT unnest(%s::text[]) AS {self.quote(column)}", [list(values)]


class PostgresSession(KeepableSession):
    """A connection and its transaction; a writing session inserts a load's tables over a
    second connection too (`insert_all`), committed just before the first."""

    def __init__(
        self, url: str, dialect: PostgresDialect, *, read_only: bool, keeper: SessionKeeper | None = None
    ) -> None:
        self.url = url
        self.dialect = dialect
        self.connection = _connect(url, read_only=read_only)
        self.aside: psycopg.Connection[Any] | None = None
        self.aside_thread: ThreadPoolExecutor | None = None
        super().__init__(keeper)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.connection.execute(sql, [_without_nul(param) for param in params] or None)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Result:
        cursor = self.connection.execute(sql, [_without_nul(param) for param in params] or None)
        names = [column.name for column in cursor.description or []]
        return Result(names, list(cursor.fetchall()) if cursor.description else [])

    def insert_new(self, schema: str, table: str, columns: Columns, rows: Rows) -> int:
        return _insert_new(self.connection, self.dialect, Insert(schema, table, columns, rows))

    def insert_all(self, inserts: Sequence[Insert]) -> int:
        """The tables in two shares of about the same size, one per connection, at once:
        each backend parses its own COPYs. What the load reads back stays on this one."""
        mine, aside = _shares(inserts)
        if not aside:
            return insert_each(self, mine)
        if self.aside is None or self.aside_thread is None:
            self.aside = _connect(self.url, read_only=False)
            self.aside_thread = ThreadPoolExecutor(1, thread_name_prefix="postgres-aside")
        connection = self.aside
        there = self.aside_thread.submit(
            lambda: sum(_insert_new(connection, self.dialect, insert) for insert in aside)
        )
        try:
            here = insert_each(self, mine)
        finally:
            wait([there])  # neither connection is left mid-statement
        return here + there.result()

    def commit(self) -> None:
        if self.aside is not None:
            self.aside.commit()
        self.connection.commit()

    def rollback(self) -> None:
        self.clean = False
        for connection in (self.aside, self.connection):
            if connection is not None and not connection.closed:
                connection.rollback()

    def connected(self) -> bool:
        return not self.connection.closed and (self.aside is None or not self.aside.closed)

    def disconnect(self) -> None:
        if self.aside_thread is not None:
            self.aside_thread.shutdown()
        if self.aside is not None:
            self.aside.close()
        self.connection.close()


def _connect(url: str, *, read_only: bool) -> psycopg.Connection[Any]:
    connection = psycopg.connect(url, autocommit=read_only)
    connection.execute("SET TIME ZONE 'UTC'")
    return connection


def _shares(inserts: Sequence[Insert]) -> tuple[list[Insert], list[Insert]]:
    """The inserts for this connection and for the other, the larger first to the lighter."""
    mine: list[Insert] = [insert for insert in inserts if insert.read_later]
    aside: list[Insert] = []
    sizes = [sum(map(_size, mine)), 0]
    for insert in sorted((i for i in inserts if not i.read_later), key=_size, reverse=True):
        lighter = 0 if sizes[0] <= sizes[1] else 1
        (mine, aside)[lighter].append(insert)
        sizes[lighter] += _size(insert)
    return mine, aside


def _size(insert: Insert) -> int:
    encoded = insert.rows.encoded
    return len(encoded) if isinstance(encoded, bytes) else len(insert.rows.values["id"])


def _insert_new(connection: psycopg.Connection[Any], dialect: PostgresDialect, insert: Insert) -> int:
    """COPY the rows straight into the table; if an id is there already (a redelivery), go
    through a temporary table that keeps only the new ids."""
    schema, table, columns, rows, _ = insert
    text = rows.encoded if isinstance(rows.encoded, bytes) else _copy_text(columns, rows.values)
    target = dialect.table(schema, table)
    connection.execute("SAVEPOINT headwater_copy")
    try:
        added = _copy(connection, target, dialect, columns, text)
    except psycopg.errors.UniqueViolation:
        connection.execute("ROLLBACK TO SAVEPOINT headwater_copy")
        return _copy_through_stage(connection, target, dialect, columns, text)
    connection.execute("RELEASE SAVEPOINT headwater_copy")
    return added


def _copy(
    connection: psycopg.Connection[Any], target: str, dialect: PostgresDialect, columns: Columns, text: bytes
) -> int:
    names = ", ".join(dialect.quote(name) for name in columns)
    with connection.cursor() as cursor:
        with cursor.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
            copy.write(text)
        return max(cursor.rowcount, 0)


def _copy_through_stage(
    connection: psycopg.Connection[Any], target: str, dialect: PostgresDialect, columns: Columns, text: bytes
) -> int:
    q = dialect.quote
    names = ", ".join(q(name) for name in columns)
    connection.execute(f"DROP TABLE IF EXISTS {STAGE}")
    connection.execute(
        f"CREATE TEMPORARY TABLE {STAGE} ("
        + ", ".join(f"{q(name)} {dialect.types[kind]}" for name, kind in columns.items())
        + ") ON COMMIT DROP"
    )
    _copy(connection, STAGE, dialect, columns, text)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {target} ({names})"
            f" SELECT DISTINCT ON (id) {names} FROM {STAGE} ON CONFLICT (id) DO NOTHING"
        )
        added = cursor.rowcount
    connection.execute(f"DROP TABLE {STAGE}")
    return max(added, 0)


# What COPY's text format escapes (a backslash first), and NUL, which text cannot hold.
ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), (NUL, REPLACEMENT))
NULL = "\\N"


def _copy_text(columns: Columns, values: ColumnValues) -> bytes:
    """The rows in COPY's text format: fields split by tabs, `\\N` for NULL, rows ending in
    a newline."""
    if not len(values["id"]):
        return b""
    fields = [_copy_field(values[name]) for name in columns]
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*fields, "\t"), "", "\n")
    size = pc.sum(pc.binary_length(lines)).as_py()
    return bytes(lines.buffers()[2].slice(0, size))  # the lines, one after the other


def _copy_field(array: pa.Array) -> pa.Array:
    if array.type != pa.string():
        array = array.cast(pa.string())  # numbers as Arrow spells them, `true` / `false`
    text = _utf8(array)
    for char, escaped in ESCAPES:
        if char.encode() in text:
            array = pc.replace_substring(array, char, escaped)
    return pc.fill_null(array, NULL) if array.null_count else array


def _utf8(array: pa.Array) -> bytes:
    """A string array's values in UTF-8, one after the other (of a slice, its own only)."""
    _validity, offsets, data = array.buffers()
    if data is None or not len(array):
        return b""
    bounds = memoryview(offsets).cast("i")
    start, end = bounds[array.offset], bounds[array.offset + len(array)]
    text: bytes = data.slice(start, end - start).to_pybytes()
    return text


class PostgresEngine:
    """Sessions on one database. With `linger` (seconds), a writing session's connection
    stays open that long after it closes, for the next load's session to take over."""

    dialect = PostgresDialect()

    def __init__(self, url: str, *, linger: float = 0.0) -> None:
        self.url = url
        self.keeper = SessionKeeper(linger, HOLD_AT_MOST_SECONDS) if linger else None

    def session(self, *, read_only: bool = False) -> PostgresSession:
        if read_only:
            return PostgresSession(self.url, self.dialect, read_only=True)
        kept: PostgresSession | None = self.keeper.take() if self.keeper else None
        if kept is not None:
            return kept
        return PostgresSession(self.url, self.dialect, read_only=False, keeper=self.keeper)

    def describe(self) -> str:
        return url_without_secrets(self.url)
