"""The three warehouses tests load into: DuckDB in a temporary directory, and the real
PostgreSQL and MariaDB servers on this machine. Each test gets its own schema names
(source slugs), dropped afterwards, so tests never see each other's tables."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from headwater.warehouse.duckdb import DuckDBEngine
from headwater.warehouse.engine import Engine
from headwater.warehouse.mysql import MySQLEngine
from headwater.warehouse.postgres import PostgresEngine
from headwater.warehouse.schema import ColumnType

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
KINDS = ("duckdb", "postgres", "mysql")
# Each engine's information_schema type names, written out here rather than taken from the
# dialects under test.
TYPE_NAMES: dict[str, dict[str, ColumnType]] = {
    "duckdb": {
        "timestamp with time zone": ColumnType.TIMESTAMP,
        "bigint": ColumnType.BIGINT,
        "double": ColumnType.DOUBLE,
        "boolean": ColumnType.BOOLEAN,
        "varchar": ColumnType.TEXT,
    },
    "postgres": {
        "timestamp with time zone": ColumnType.TIMESTAMP,
        "bigint": ColumnType.BIGINT,
        "double precision": ColumnType.DOUBLE,
        "boolean": ColumnType.BOOLEAN,
        "text": ColumnType.TEXT,
    },
    "mysql": {
        "datetime": ColumnType.TIMESTAMP,
        "bigint": ColumnType.BIGINT,
        "double": ColumnType.DOUBLE,
        "tinyint": ColumnType.BOOLEAN,
        "varchar": ColumnType.TEXT,
        "longtext": ColumnType.TEXT,
    },
}


@dataclass
class Warehouse:
    """One engine under test, the YAML settings that point Headwater at it, and SQL helpers."""

    kind: str
    engine: Engine
    settings: dict[str, Any]
    schemas: list[str]

    def slug(self, prefix: str = "t") -> str:
        """A fresh source slug (= schema name) that this warehouse drops after the test."""
        slug = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.schemas.append(slug)
        return slug

    def table(self, schema: str, table: str) -> str:
        return self.engine.dialect.table(schema, table)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        session = self.engine.session(read_only=True)
        try:
            result = session.query(sql)
        finally:
            session.close()
        return [dict(zip(result.columns, row, strict=True)) for row in result.rows]

    def tables(self, schema: str) -> set[str]:
        found = self.rows(f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'")
        return {str(row.get("table_name", row.get("TABLE_NAME"))) for row in found}

    def columns(self, schema: str, table: str) -> dict[str, str]:
        """Column name → the engine's type name, lower case."""
        found = self.rows(
            "SELECT column_name, data_type FROM information_schema.columns"
            f" WHERE table_schema = '{schema}' AND table_name = '{table}'"
        )
        return {
            str(row.get("column_name", row.get("COLUMN_NAME"))): str(
                row.get("data_type", row.get("DATA_TYPE"))
            ).lower()
            for row in found
        }

    def column_types(self, schema: str, table: str) -> dict[str, ColumnType]:
        """Column name → its type, read from the engine's catalog."""
        names = TYPE_NAMES[self.kind]
        return {column: names[data_type] for column, data_type in self.columns(schema, table).items()}

    def read(self, schema: str, table: str) -> dict[str, dict[str, Any]]:
        """A table's rows by `id`, values alike on every engine: timestamps as aware UTC
        datetimes, booleans as bool."""
        types = self.column_types(schema, table)
        found = {}
        for row in self.rows(f"SELECT * FROM {self.table(schema, table)}"):
            for column, value in row.items():
                if value is None:
                    continue
                if types[column] is ColumnType.TIMESTAMP:
                    row[column] = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
                elif types[column] is ColumnType.BOOLEAN:
                    row[column] = bool(value)
            found[row["id"]] = row
        return found

    def drop(self) -> None:
        session = self.engine.session()
        try:
            for schema in self.schemas if self.kind != "duckdb" else []:
                cascade = "" if self.kind == "mysql" else " CASCADE"
                session.execute(f"DROP SCHEMA IF EXISTS {self.engine.dialect.quote(schema)}{cascade}")
            session.commit()
        finally:
            session.close()


def make_warehouse(kind: str, directory: Path) -> Warehouse:
    if kind == "duckdb":
        path = directory / "warehouse.duckdb"
        return Warehouse(kind, DuckDBEngine(path), {"path": str(path)}, [])
    if kind == "postgres":
        return Warehouse(kind, PostgresEngine(POSTGRES_URL), {"url": POSTGRES_URL}, [])
    return Warehouse(kind, MySQLEngine(MYSQL_URL), {"url": MYSQL_URL}, [])


@pytest.fixture(params=KINDS)
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    """Each test using it runs once per engine."""
    made = make_warehouse(request.param, tmp_path)
    yield made
    made.drop()
