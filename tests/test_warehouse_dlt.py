"""The `dlt` destination type, loading for real through dlt into DuckDB (a file in the test's
directory), the PostgreSQL server on this machine (a fresh schema per test, dropped after)
and Parquet files on the local filesystem (read back with pyarrow)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headwater.destinations.base import DELIVERED, Outcome, Retry, SettingsError
from headwater.destinations.registry import build
from headwater.warehouse.dlt import DltDestination
from headwater.warehouse.schema import tables_for

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
# dlt's postgres credentials need a password field; an empty one still means "none".
POSTGRES_CREDENTIALS = "postgresql://postgres:@127.0.0.1:5432/test"
RECEIVED = "2024-05-01T10:00:00.250Z"
DLT_TABLES = {"_dlt_loads", "_dlt_version", "_dlt_pipeline_state"}


def track(number: int, event: str = "Order Completed", **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "messageId": f"m{number}",
        "userId": "u1",
        "anonymousId": "a1",
        "receivedAt": RECEIVED,
        "sentAt": "2024-05-01T10:00:00Z",
        "timestamp": "2024-05-01T10:00:00Z",
        "originalTimestamp": "2024-05-01T10:00:00Z",
        "context": {"library": {"name": "analytics.js", "version": "2.1"}, "ip": "203.0.113.9"},
        "properties": properties,
    }


def identify(number: int, user: str, timestamp: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"i{number}",
        "userId": user,
        "receivedAt": timestamp,
        "timestamp": timestamp,
        "traits": traits,
    }


def order(number: int, **extra: Any) -> dict[str, Any]:
    properties = {"total": 19.5, "quantity": 2, "gift": True, "coupon": "SPRING", "shipping": {"days": 3}}
    return track(number, items=["a", "b"], **{**properties, **extra})


def deliver(destination: DltDestination, events: Sequence[Mapping[str, Any]], slug: str) -> list[Outcome]:
    return asyncio.run(destination.deliver(events, [slug] * len(events)))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- DuckDB ---------------------------------------------------------------------------------


class DuckDBFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self, sql: str) -> list[dict[str, Any]]:
        with duckdb.connect(str(self.path)) as connection:
            cursor = connection.execute(sql)
            names = [column[0] for column in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def tables(self, schema: str) -> set[str]:
        found = self.rows(f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'")
        return {row["table_name"] for row in found}

    def columns(self, schema: str, table: str) -> dict[str, str]:
        found = self.rows(
            "SELECT column_name, data_type FROM information_schema.columns"
            f" WHERE table_schema = '{schema}' AND table_name = '{table}'"
        )
        return {row["column_name"]: row["data_type"] for row in found}


@pytest.fixture
def warehouse(tmp_path: Path) -> DuckDBFile:
    return DuckDBFile(tmp_path / "events.duckdb")


def duckdb_destination(data_dir: Path, **settings: Any) -> DltDestination:
    return DltDestination(
        "dlt-duckdb", {"destination": "duckdb", "credentials": "events.duckdb", **settings}, data_dir
    )


def test_duckdb_holds_segment_layout_with_our_types_and_values(tmp_path: Path, warehouse: DuckDBFile) -> None:
    events = [
        order(1, shipped_at="2024-05-02T10:00:00"),  # no offset: UTC
        order(2, shipped_at="2024-05-02T12:00:00+02:00"),
        track(3, "Signed Up", plan="pro"),
        identify(4, "u1", "2024-05-01T09:00:00Z", email="ada@example.com", logins=3),
        {**track(5, "ignored"), "type": "page", "name": "Home", "properties": {"path": "/"}},
    ]
    destination = duckdb_destination(tmp_path)

    assert deliver(destination, events, "shop") == [DELIVERED] * 5

    assert warehouse.tables("shop") == {
        *DLT_TABLES,
        *("tracks", "order_completed", "signed_up", "identifies", "users", "pages"),
    }
    # The columns are schema.py's, and only those, plus the load time.
    for table in tables_for([("shop", event) for event in events]):
        assert set(warehouse.columns("shop", table.table)) == {*table.columns, "uuid_ts"}, table.table
    assert warehouse.columns("shop", "order_completed") == {
        "id": "VARCHAR",
        "anonymous_id": "VARCHAR",
        "user_id": "VARCHAR",
        "received_at": "TIMESTAMP WITH TIME ZONE",
        "sent_at": "TIMESTAMP WITH TIME ZONE",
        "timestamp": "TIMESTAMP WITH TIME ZONE",
        "original_timestamp": "TIMESTAMP WITH TIME ZONE",
        "context_library_name": "VARCHAR",
        "context_library_version": "VARCHAR",
        "context_ip": "VARCHAR",
        "event": "VARCHAR",
        "event_text": "VARCHAR",
        "total": "DOUBLE",
        "quantity": "BIGINT",
        "gift": "BOOLEAN",
        "coupon": "VARCHAR",
        "shipping_days": "BIGINT",
        "items": "VARCHAR",
        "shipped_at": "TIMESTAMP WITH TIME ZONE",
        "uuid_ts": "TIMESTAMP WITH TIME ZONE",
    }
    first, second = warehouse.rows("SELECT * FROM shop.order_completed ORDER BY id")
    assert first["id"] == "m1"
    assert first["event"] == "order_completed"
    assert first["event_text"] == "Order Completed"
    assert first["received_at"] == datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=UTC)
    assert (first["total"], first["quantity"], first["gift"], first["coupon"]) == (19.5, 2, True, "SPRING")
    assert first["shipping_days"] == 3
    assert json.loads(first["items"]) == ["a", "b"]
    assert first["context_library_name"] == "analytics.js"
    assert first["shipped_at"] == at("2024-05-02T10:00:00")
    assert second["shipped_at"] == at("2024-05-02T10:00:00")
    assert first["uuid_ts"] > first["received_at"]
    assert warehouse.rows("SELECT id, event, event_text FROM shop.tracks ORDER BY id") == [
        {"id": "m1", "event": "order_completed", "event_text": "Order Completed"},
        {"id": "m2", "event": "order_completed", "event_text": "Order Completed"},
        {"id": "m3", "event": "signed_up", "event_text": "Signed Up"},
    ]
    assert warehouse.rows("SELECT id, email, logins FROM shop.users") == [
        {"id": "u1", "email": "ada@example.com", "logins": 3}
    ]
    assert warehouse.rows("SELECT id, name, path FROM shop.pages") == [
        {"id": "m5", "name": "Home", "path": "/"}
    ]


def test_duckdb_new_property_adds_a_column_and_loading_again_keeps_one_row_per_id(
    tmp_path: Path, warehouse: DuckDBFile
) -> None:
    destination = duckdb_destination(tmp_path)
    first = [order(1), order(2)]
    assert deliver(destination, first, "shop") == [DELIVERED] * 2
    assert "gift_wrap" not in warehouse.columns("shop", "order_completed")

    assert (
        deliver(destination, [order(3, gift_wrap="red"), order(3, gift_wrap="red")], "shop")
        == [DELIVERED] * 2
    )
    assert warehouse.columns("shop", "order_completed")["gift_wrap"] == "VARCHAR"
    assert deliver(destination, first, "shop") == [DELIVERED] * 2  # a redelivery

    assert warehouse.rows("SELECT id, gift_wrap FROM shop.order_completed ORDER BY id") == [
        {"id": "m1", "gift_wrap": None},
        {"id": "m2", "gift_wrap": None},
        {"id": "m3", "gift_wrap": "red"},
    ]
    assert warehouse.rows("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM shop.tracks") == [
        {"n": 3, "ids": 3}
    ]


def test_duckdb_users_hold_each_traits_latest_value_across_loads(
    tmp_path: Path, warehouse: DuckDBFile
) -> None:
    destination = duckdb_destination(tmp_path)
    batch = [
        identify(1, "u1", "2024-01-02T00:00:00Z", email="new@example.com", plan="pro"),
        identify(2, "u1", "2024-01-01T00:00:00Z", email="old@example.com", age=41),
        identify(3, "u2", "2024-01-01T00:00:00Z", plan="free"),
    ]
    assert deliver(destination, batch, "app") == [DELIVERED] * 3
    later = [
        identify(4, "u1", "2024-01-03T00:00:00Z", plan="max"),
        identify(5, "u1", "2023-06-01T00:00:00Z", plan="trial", city="Oslo"),  # late: fills, never overwrites
    ]
    assert deliver(destination, later, "app") == [DELIVERED] * 2

    assert warehouse.rows("SELECT id, email, plan, age, city, timestamp FROM app.users ORDER BY id") == [
        {
            "id": "u1",
            "email": "new@example.com",
            "plan": "max",
            "age": 41,
            "city": "Oslo",
            "timestamp": at("2024-01-03T00:00:00"),
        },
        {
            "id": "u2",
            "email": None,
            "plan": "free",
            "age": None,
            "city": None,
            "timestamp": at("2024-01-01T00:00:00"),
        },
    ]
    assert len(warehouse.rows("SELECT id FROM app.identifies")) == 5

    dated = [identify(6, "2024-05-01", "2024-01-01T00:00:00Z", plan="pro")]  # an id that looks like a date
    assert deliver(destination, dated, "dated") == [DELIVERED]
    assert warehouse.columns("dated", "users")["id"] == "VARCHAR"
    assert warehouse.rows("SELECT id, plan FROM dated.users") == [{"id": "2024-05-01", "plan": "pro"}]


def test_duckdb_a_value_its_column_cannot_hold_goes_to_a_variant_column(
    tmp_path: Path, warehouse: DuckDBFile
) -> None:
    assert deliver(duckdb_destination(tmp_path), [order(1)], "shop") == [DELIVERED]
    shutil.rmtree(tmp_path / "dlt")  # a new working directory: the types come from the warehouse

    later = [order(2, quantity="many", total=20), order(3, quantity=2.5)]
    assert deliver(duckdb_destination(tmp_path), later, "shop") == [DELIVERED] * 2

    columns = warehouse.columns("shop", "order_completed")
    assert (columns["quantity"], columns["total"], columns["quantity__v_text"]) == (
        "BIGINT",
        "DOUBLE",
        "VARCHAR",
    )
    assert warehouse.rows(
        "SELECT id, quantity, quantity__v_text, total FROM shop.order_completed ORDER BY id"
    ) == [
        {"id": "m1", "quantity": 2, "quantity__v_text": None, "total": 19.5},
        {"id": "m2", "quantity": None, "quantity__v_text": "many", "total": 20.0},
        {"id": "m3", "quantity": None, "quantity__v_text": "2.5", "total": 19.5},
    ]


def test_a_failed_load_retries_its_sources_events_and_the_next_load_lands(
    tmp_path: Path, warehouse: DuckDBFile
) -> None:
    with duckdb.connect(str(warehouse.path)) as connection:  # a table that cannot take our ids
        connection.execute("CREATE SCHEMA broken; CREATE TABLE broken.tracks (id INTEGER)")
    destination = duckdb_destination(tmp_path)
    events = [track(1), track(2), track(3)]

    outcomes = asyncio.run(destination.deliver(events, ["broken", "fine", "broken"]))

    assert outcomes[1] == DELIVERED
    assert isinstance(outcomes[0], Retry) and outcomes[0] == outcomes[2]
    assert outcomes[0].reason.startswith(f"dlt duckdb {warehouse.path}: ")
    assert "Could not convert string 'm1' to INT32" in outcomes[0].reason
    with duckdb.connect(str(warehouse.path)) as connection:
        connection.execute("ALTER TABLE broken.tracks ALTER id TYPE VARCHAR")

    assert asyncio.run(destination.deliver([events[0], events[2]], ["broken", "broken"])) == [DELIVERED] * 2
    assert warehouse.rows("SELECT id FROM broken.tracks ORDER BY id") == [{"id": "m1"}, {"id": "m3"}]
    assert warehouse.rows("SELECT id FROM fine.tracks") == [{"id": "m2"}]


# --- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
def postgres_dataset() -> Iterator[str]:
    """A fresh schema name (source slug); it and dlt's staging schema are dropped afterwards."""
    slug = f"t_{uuid.uuid4().hex[:10]}"
    yield slug
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        for schema in (slug, f"{slug}_staging"):
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_rows(sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(POSTGRES_URL) as connection:
        cursor = connection.execute(sql)
        names = [column.name for column in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def postgres_columns(schema: str, table: str) -> dict[str, str]:
    found = postgres_rows(
        "SELECT column_name, data_type FROM information_schema.columns"
        f" WHERE table_schema = '{schema}' AND table_name = '{table}'"
    )
    return {row["column_name"]: row["data_type"] for row in found}


def test_postgres_loads_types_new_columns_latest_traits_and_one_row_per_id(
    tmp_path: Path, postgres_dataset: str
) -> None:
    slug = postgres_dataset
    destination = DltDestination(
        "pg", {"destination": "postgres", "credentials": POSTGRES_CREDENTIALS}, tmp_path
    )
    first = [
        order(1),
        order(2),
        identify(3, "u1", "2024-01-02T00:00:00Z", email="new@example.com", plan="pro"),
    ]

    assert deliver(destination, first, slug) == [DELIVERED] * 3

    assert postgres_columns(slug, "order_completed") == {
        "id": "character varying",
        "anonymous_id": "character varying",
        "user_id": "character varying",
        "received_at": "timestamp with time zone",
        "sent_at": "timestamp with time zone",
        "timestamp": "timestamp with time zone",
        "original_timestamp": "timestamp with time zone",
        "context_library_name": "character varying",
        "context_library_version": "character varying",
        "context_ip": "character varying",
        "event": "character varying",
        "event_text": "character varying",
        "total": "double precision",
        "quantity": "bigint",
        "gift": "boolean",
        "coupon": "character varying",
        "shipping_days": "bigint",
        "items": "character varying",
        "uuid_ts": "timestamp with time zone",
    }
    row = postgres_rows(f"SELECT * FROM \"{slug}\".order_completed WHERE id = 'm1'")[0]
    assert (row["total"], row["quantity"], row["gift"], row["shipping_days"]) == (19.5, 2, True, 3)
    assert row["received_at"] == datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=UTC)

    second = [
        order(4, gift_wrap="red"),
        identify(5, "u1", "2024-01-01T00:00:00Z", email="old@example.com", age=41),
    ]
    assert deliver(destination, second, slug) == [DELIVERED] * 2
    assert deliver(destination, first, slug) == [DELIVERED] * 3  # a redelivery

    assert postgres_columns(slug, "order_completed")["gift_wrap"] == "character varying"
    assert postgres_rows(f'SELECT id, gift_wrap FROM "{slug}".order_completed ORDER BY id') == [
        {"id": "m1", "gift_wrap": None},
        {"id": "m2", "gift_wrap": None},
        {"id": "m4", "gift_wrap": "red"},
    ]
    assert postgres_rows(f'SELECT count(*) AS n FROM "{slug}".tracks') == [{"n": 3}]
    assert postgres_rows(f'SELECT id, email, plan, age FROM "{slug}".users') == [
        {"id": "u1", "email": "new@example.com", "plan": "pro", "age": 41}
    ]


def test_postgres_that_does_not_answer_gives_retry_for_every_event(tmp_path: Path) -> None:
    credentials = "postgresql://postgres:@127.0.0.1:1/test"  # nothing listens on port 1
    destination = DltDestination("pg", {"destination": "postgres", "credentials": credentials}, tmp_path)

    outcomes = deliver(destination, [track(1), track(2)], "shop")

    assert all(isinstance(outcome, Retry) for outcome in outcomes)
    assert "OperationalError" in outcomes[0].reason  # type: ignore[union-attr]
    assert "secret" not in outcomes[0].reason  # type: ignore[union-attr]


# --- Parquet files --------------------------------------------------------------------------


def parquet_table(directory: Path) -> pa.Table:
    files = sorted(directory.glob("*.parquet"))
    assert files, f"no Parquet files in {directory}"
    return pa.concat_tables([pq.read_table(file) for file in files], promote_options="default")


def test_filesystem_writes_parquet_files_of_our_layout(tmp_path: Path) -> None:
    destination = DltDestination("lake", {"destination": "filesystem", "bucket_url": "lake"}, tmp_path)
    assert (
        deliver(destination, [order(1), order(2), identify(3, "u1", RECEIVED, plan="pro")], "shop")
        == [DELIVERED] * 3
    )
    assert (
        deliver(destination, [order(4, gift_wrap="red"), identify(5, "u1", RECEIVED, plan="max")], "shop")
        == [DELIVERED] * 2
    )

    dataset = tmp_path / "lake" / "shop"
    assert {"tracks", "order_completed", "identifies", "users"} <= {path.name for path in dataset.iterdir()}
    orders = parquet_table(dataset / "order_completed").sort_by("id")
    schema = orders.schema
    assert schema.field("id").type == pa.string()
    assert schema.field("received_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("total").type == pa.float64()
    assert schema.field("quantity").type == pa.int64()
    assert schema.field("gift").type == pa.bool_()
    assert schema.field("shipping_days").type == pa.int64()
    assert "_dlt_id" not in schema.names
    assert orders.column("id").to_pylist() == ["m1", "m2", "m4"]
    assert orders.column("gift_wrap").to_pylist() == [None, None, "red"]
    assert orders.column("total").to_pylist() == [19.5, 19.5, 19.5]
    assert orders.column("received_at").to_pylist()[0] == datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=UTC)
    # Files cannot be merged: each load appends a users row; the latest by timestamp wins.
    users = parquet_table(dataset / "users").sort_by("uuid_ts")
    assert users.column("plan").to_pylist() == ["pro", "max"]


# --- Settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"destination": "duckdb", "path": "x.duckdb"}, "unknown setting 'path'"),
        ({"destination": "snowflak"}, "'snowflak' is not a dlt warehouse"),
        ({"destination": "qdrant"}, "'qdrant' is not a dlt warehouse"),
        ({}, "`destination` must name a dlt destination"),
        (
            {"destination": "postgres", "bucket_url": "s3://b"},
            "`bucket_url` is for `destination: filesystem` only",
        ),
        ({"destination": "filesystem"}, "`bucket_url` (where the files go"),
        (
            {"destination": "filesystem", "bucket_url": "x", "file_format": "xlsx"},
            "`file_format` must be one of",
        ),
        (
            {"destination": "snowflake", "credentials": 42},
            "`credentials` must be a connection string or a mapping",
        ),
        ({"destination": "duckdb", "batch_size": 0}, "`batch_size` must be a whole number"),
        ({"destination": "duckdb", "load_every": "soon"}, "`load_every`"),
    ],
)
def test_invalid_settings_say_which_setting_is_wrong(settings: dict[str, Any], complaint: str) -> None:
    with pytest.raises(SettingsError) as raised:
        build("dlt", "wh", settings)
    assert complaint in str(raised.value)
    assert str(raised.value).startswith("dlt 'wh': ")


def test_settings_and_their_defaults(tmp_path: Path) -> None:
    snowflake = build(
        "dlt",
        "sf",
        {"destination": "snowflake", "credentials": {"database": "analytics"}, "batch_size": 500},
        tmp_path,
    )
    assert isinstance(snowflake, DltDestination)
    assert (snowflake.max_batch, snowflake.linger_seconds, snowflake.max_lanes) == (500, 30.0, 1)
    assert snowflake.credentials == {"database": "analytics"}
    assert snowflake.pipelines_dir == tmp_path / "dlt"

    local = DltDestination("local", {"destination": "duckdb", "load_every": "1m"}, tmp_path)
    assert (local.max_batch, local.linger_seconds) == (10_000, 60.0)
    assert local.credentials == str(tmp_path / "local.duckdb")

    lake = DltDestination("lake", {"destination": "filesystem", "bucket_url": "s3://acme/events"}, tmp_path)
    assert (lake.bucket_url, lake.file_format) == ("s3://acme/events", "parquet")
    assert lake.describe() == "dlt filesystem s3://acme/events"


def test_the_cli_does_not_import_dlt() -> None:
    code = "import sys, headwater.cli, headwater.destinations.registry; print('dlt' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
