"""MySQL and MariaDB: multi-row inserts, `ON DUPLICATE KEY UPDATE` on a unique `id`.

A schema is a database here. DDL commits on its own in MySQL, which is why the loader
changes tables before it starts inserting. DATETIME has no time zone: timestamps are
stored in UTC, with microseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import pymysql

from headwater.warehouse.engine import (
    Columns,
    Dialect,
    Insert,
    Result,
    Rows,
    insert_each,
    url_without_secrets,
)
from headwater.warehouse.schema import ColumnType

# Columns that are keys or looked up by key need a bounded type in MySQL: the longest
# InnoDB indexes whole (3072 bytes of utf8mb4), so a long user id still loads.
KEY_COLUMNS = frozenset({"id", "user_id", "group_id"})
KEY_TYPE = "VARCHAR(768)"


class MySQLDialect(Dialect):
    types: ClassVar[Mapping[ColumnType, str]] = {
        ColumnType.TIMESTAMP: "DATETIME(6)",
        ColumnType.BIGINT: "BIGINT",
        ColumnType.DOUBLE: "DOUBLE",
        ColumnType.BOOLEAN: "BOOLEAN",
        ColumnType.TEXT: "LONGTEXT",
    }
    type_names: ClassVar[Mapping[str, ColumnType]] = {
        "datetime": ColumnType.TIMESTAMP,
        "timestamp": ColumnType.TIMESTAMP,
        "bigint": ColumnType.BIGINT,
        "int": ColumnType.BIGINT,
        "double": ColumnType.DOUBLE,
        "tinyint": ColumnType.BOOLEAN,
        "varchar": ColumnType.TEXT,
        "text": ColumnType.TEXT,
        "longtext": ColumnType.TEXT,
    }
    quote_char: ClassVar[str] = "`"
    max_name: ClassVar[int] = 64
    now: ClassVar[str] = "UTC_TIMESTAMP(6)"
    # A load of 12,000 new users took MariaDB 10.4 s with 10,000 ids to an `IN` list (8.2 s
    # in one rebuild), 2.2 s with 1,000: the cost grows faster than the list.
    ids_at_once: ClassVar[int] = 1_000

    def sql_type(self, column: str, column_type: ColumnType) -> str:
        if column in KEY_COLUMNS and column_type is ColumnType.TEXT:
            return KEY_TYPE
        return self.types[column_type]

    def widen_column(self, schema: str, table: str, column: str, column_type: ColumnType) -> str:
        return (
            f"ALTER TABLE {self.table(schema, table)} MODIFY {self.quote(column)}"
            f" {self.sql_type(column, column_type)}"
        )

    def after_widening(
        self, schema: str, table: str, column: str, was: ColumnType, now: ColumnType
    ) -> Sequence[str]:
        if was is not ColumnType.BOOLEAN or now is not ColumnType.TEXT:
            return ()
        name = self.quote(column)
        return (
            f"UPDATE {self.table(schema, table)}"
            f" SET {name} = CASE {name} WHEN '1' THEN 'true' WHEN '0' THEN 'false' END"
            f" WHERE {name} IN ('0', '1')",
        )


def _naive(value: datetime | None) -> datetime | None:
    """A UTC moment as DATETIME takes it (no zone)."""
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


class MySQLSession:
    def __init__(self, url: str, dialect: MySQLDialect, *, read_only: bool) -> None:
        parts = urlsplit(url)
        self.dialect = dialect
        self.connection = pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=parts.path.lstrip("/") or None,
            autocommit=read_only,
            charset="utf8mb4",
        )
        with self.connection.cursor() as cursor:
            cursor.execute("SET time_zone = '+00:00'")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, list(params) or None)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Result:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, list(params) or None)
            names = [column[0] for column in cursor.description or []]
            return Result(names, list(cursor.fetchall()) if cursor.description else [])

    def insert_new(self, schema: str, table: str, columns: Columns, rows: Rows) -> int:
        q = self.dialect.quote
        values = rows.values
        names = ", ".join(q(name) for name in columns)
        converted = [
            [_naive(value) for value in values[name].to_pylist()]
            if kind is ColumnType.TIMESTAMP
            else values[name].to_pylist()
            for name, kind in columns.items()
        ]
        marks = ", ".join(["%s"] * len(columns))
        target = self.dialect.table(schema, table)
        sql = (
            f"INSERT INTO {target} ({names}, uuid_ts) VALUES ({marks}, UTC_TIMESTAMP(6))"
            " ON DUPLICATE KEY UPDATE id = id"
        )
        with self.connection.cursor() as cursor:
            # pymysql turns executemany of one INSERT ... VALUES into multi-row statements.
            cursor.executemany(sql, list(zip(*converted, strict=True)))
            return max(int(cursor.rowcount), 0)

    def insert_all(self, inserts: Sequence[Insert]) -> int:
        return insert_each(self, inserts)

    def commit(self) -> None:
        self.connection.commit()

    def rollback(self) -> None:
        if self.connection.open:
            self.connection.rollback()

    def close(self) -> None:
        if self.connection.open:
            self.connection.close()


class MySQLEngine:
    dialect = MySQLDialect()

    def __init__(self, url: str) -> None:
        self.url = url

    def session(self, *, read_only: bool = False) -> MySQLSession:
        return MySQLSession(self.url, self.dialect, read_only=read_only)

    def describe(self) -> str:
        return url_without_secrets(self.url)
