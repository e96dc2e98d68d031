"""The loader on the three real engines: Segment's layout, evolution, latest traits,
idempotency, long names, and a destination that dead-letters only the events that fail."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pyarrow as pa
import pytest

from headwater.destinations.base import DELIVERED, Failed, Outcome, Retry
from headwater.warehouse.destination import WAREHOUSES, WarehouseDestination
from headwater.warehouse.engine import Columns, Dialect, Engine, Insert, Rows, Session, insert_each
from headwater.warehouse.loader import META_SCHEMA, SETTLE_AT_LEAST_EVERY, Loader
from headwater.warehouse.postgres import PostgresEngine, PostgresSession
from headwater.warehouse.schema import ColumnType
from headwater.warehouse.worker import Batch
from tests.warehouses import Warehouse, make_warehouse

T = ColumnType
SENT = "2024-05-01T12:00:00.500Z"
RECEIVED = "2024-05-01T12:00:01.000Z"
CONTEXT = {
    "library": {"name": "analytics.js", "version": "next-1.70.0"},
    "page": {"path": "/checkout", "title": "Checkout", "url": "https://example.com/checkout"},
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0",
}


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment).astimezone(UTC)


def message(
    kind: str, message_id: str, moment: str = "2024-05-01T12:00:00.400Z", user_id: Any = "u-1", **fields: Any
) -> dict[str, Any]:
    """An enriched message as the router hands it over."""
    return {
        "type": kind,
        "messageId": message_id,
        "anonymousId": "anon-1",
        "userId": user_id,
        "timestamp": moment,
        "originalTimestamp": moment,
        "sentAt": SENT,
        "receivedAt": RECEIVED,
        "context": CONTEXT,
        **fields,
    }


def track(message_id: str, event: str = "Order Completed", **properties: Any) -> dict[str, Any]:
    return message("track", message_id, event=event, properties=properties)


def changes(warehouse: Warehouse, schema: str) -> list[tuple[str, str | None, str]]:
    change = warehouse.engine.dialect.quote("change")  # a keyword in MySQL
    found = warehouse.rows(
        f"SELECT table_name, column_name, {change} FROM"
        f" {warehouse.table(META_SCHEMA, 'schema_changes')} WHERE schema_name = '{schema}'"
    )
    return sorted(
        ((row["table_name"], row["column_name"], row["change"]) for row in found), key=lambda c: str(c)
    )


def test_every_message_type_lands_in_its_table(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    batch = [
        track(
            "m-track",
            orderId="50314b8e",
            total=27.5,
            revenue=25,
            isGift=False,
            shippedAt="2024-05-03T09:30:00Z",
            products=[{"sku": "G-32", "price": 19}],
            shipping={"address": {"city": "Lyon"}},
        ),
        message("page", "m-page", name="Checkout", category="Shop", properties={"path": "/checkout"}),
        message("screen", "m-screen", name="Home", category="Main", properties={"tab": 2}),
        message("identify", "m-identify", traits={"email": "ada@example.com", "plan": "pro", "logins": 3}),
        message("group", "m-group", groupId="g-1", traits={"name": "Acme", "employees": 120}),
        message("alias", "m-alias", previousId="anon-1"),
    ]

    report = Loader(warehouse.engine).load([(slug, m) for m in batch])

    assert (report.events, report.rows, report.tables) == (6, 7, 7)
    assert warehouse.tables(slug) == {
        "tracks",
        "order_completed",
        "pages",
        "screens",
        "identifies",
        "users",
        "groups",
        "accounts",
        "aliases",
    }
    tracks = warehouse.read(slug, "tracks")["m-track"]
    assert tracks["event"] == "order_completed"
    assert tracks["event_text"] == "Order Completed"
    assert tracks["user_id"] == "u-1"
    assert tracks["anonymous_id"] == "anon-1"
    assert tracks["context_page_url"] == "https://example.com/checkout"
    assert tracks["context_library_name"] == "analytics.js"
    assert tracks["context_ip"] == "203.0.113.7"
    assert tracks["context_user_agent"] == "Mozilla/5.0"
    assert tracks["timestamp"] == at("2024-05-01T12:00:00.400+00:00")
    assert tracks["sent_at"] == at("2024-05-01T12:00:00.500+00:00")
    assert tracks["received_at"] == at("2024-05-01T12:00:01+00:00")
    assert isinstance(tracks["uuid_ts"], datetime)
    types = warehouse.column_types(slug, "tracks")
    for column in ("timestamp", "sent_at", "received_at", "original_timestamp", "uuid_ts"):
        assert types[column] is T.TIMESTAMP
    for column in ("id", "event", "event_text", "user_id", "anonymous_id", "context_page_url"):
        assert types[column] is T.TEXT

    order = warehouse.read(slug, "order_completed")["m-track"]
    assert order["order_id"] == "50314b8e"
    assert order["total"] == 27.5
    assert order["revenue"] == 25
    assert order["is_gift"] is False
    assert order["shipped_at"] == at("2024-05-03T09:30:00+00:00")
    assert orjson.loads(order["products"]) == [{"sku": "G-32", "price": 19}]
    assert order["shipping_address_city"] == "Lyon"
    assert (order["event"], order["event_text"]) == ("order_completed", "Order Completed")
    assert order["context_page_path"] == "/checkout"
    assert order["uuid_ts"] is not None
    types = warehouse.column_types(slug, "order_completed")
    typed = ("total", "revenue", "is_gift", "shipped_at", "products")
    assert {column: types[column] for column in typed} == {
        "total": T.DOUBLE,
        "revenue": T.BIGINT,
        "is_gift": T.BOOLEAN,
        "shipped_at": T.TIMESTAMP,
        "products": T.TEXT,
    }

    page = warehouse.read(slug, "pages")["m-page"]
    assert (page["name"], page["category"], page["path"]) == ("Checkout", "Shop", "/checkout")
    screen = warehouse.read(slug, "screens")["m-screen"]
    assert (screen["name"], screen["category"], screen["tab"]) == ("Home", "Main", 2)

    identify = warehouse.read(slug, "identifies")["m-identify"]
    assert (identify["email"], identify["plan"], identify["logins"]) == ("ada@example.com", "pro", 3)
    users = warehouse.read(slug, "users")
    assert list(users) == ["u-1"]
    assert (users["u-1"]["email"], users["u-1"]["plan"], users["u-1"]["logins"]) == (
        "ada@example.com",
        "pro",
        3,
    )
    assert users["u-1"]["timestamp"] == at("2024-05-01T12:00:00.400+00:00")
    assert users["u-1"]["received_at"] == at("2024-05-01T12:00:01+00:00")
    assert warehouse.column_types(slug, "users")["logins"] is T.BIGINT
    assert not any(column.startswith("context_") for column in warehouse.columns(slug, "users"))

    group = warehouse.read(slug, "groups")["m-group"]
    assert (group["group_id"], group["name"], group["employees"]) == ("g-1", "Acme", 120)
    accounts = warehouse.read(slug, "accounts")
    assert list(accounts) == ["g-1"]
    assert (accounts["g-1"]["name"], accounts["g-1"]["employees"]) == ("Acme", 120)

    alias = warehouse.read(slug, "aliases")["m-alias"]
    assert (alias["previous_id"], alias["user_id"]) == ("anon-1", "u-1")


def test_a_new_property_adds_a_column_earlier_rows_null(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    loader = Loader(warehouse.engine)
    loader.load([(slug, track("m1", "Signed Up", plan="free"))])

    report = loader.load([(slug, track("m2", "Signed Up", plan="pro", seats=5))])

    rows = warehouse.read(slug, "signed_up")
    assert (rows["m1"]["seats"], rows["m2"]["seats"]) == (None, 5)
    assert warehouse.column_types(slug, "signed_up")["seats"] is T.BIGINT
    assert [(c.table, c.column, c.change) for c in report.changes] == [("signed_up", "seats", "added column")]
    assert ("signed_up", "seats", "added column") in changes(warehouse, slug)


def test_conflicting_types_widen_and_keep_every_value(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    loader = Loader(warehouse.engine)
    loader.load([(slug, track("m1", "Rated", score=42, ratio=1, flag=True, due="2024-01-01T00:00:00Z"))])

    loader.load(
        [
            (slug, track("m2", "Rated", score="forty-two", ratio=2.5, flag=3, due="soon")),
            (slug, track("m3", "Rated", mixed=1)),
            (slug, track("m4", "Rated", mixed="one")),
        ]
    )

    types = warehouse.column_types(slug, "rated")
    assert {c: types[c] for c in ("score", "ratio", "flag", "due", "mixed")} == {
        "score": T.TEXT,
        "ratio": T.DOUBLE,
        "flag": T.TEXT,
        "due": T.TEXT,
        "mixed": T.TEXT,
    }
    rows = warehouse.read(slug, "rated")
    assert (rows["m1"]["score"], rows["m2"]["score"]) == ("42", "forty-two")
    assert (rows["m1"]["ratio"], rows["m2"]["ratio"]) == (1.0, 2.5)
    assert (rows["m1"]["flag"], rows["m2"]["flag"]) == ("true", "3")
    assert rows["m1"]["due"].startswith("2024-01-01")
    assert rows["m2"]["due"] == "soon"
    assert (rows["m3"]["mixed"], rows["m4"]["mixed"]) == ("1", "one")
    recorded = changes(warehouse, slug)
    for column in ("score", "ratio", "flag", "due"):
        assert ("rated", column, "widened column") in recorded


def lines_of(slug: str, messages: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[bytes]]:
    return [slug] * len(messages), [orjson.dumps(m) for m in messages]


def test_rows_prepared_before_a_widening_load_are_encoded_again(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    loader = Loader(warehouse.engine)
    loader.load([(slug, track("m1", "Rated", score=1, ratio=2))])
    later = lines_of(slug, [track("m3", "Rated", score=3, ratio=4)])
    prepared = loader.prepare(*later)  # for BIGINT columns, as the table has them now

    loader.load([(slug, track("m2", "Rated", score="two", ratio=2.5))])  # widens both
    loader.load_batch(*later, prepared)

    rows = warehouse.read(slug, "rated")
    assert [rows[m]["score"] for m in ("m1", "m2", "m3")] == ["1", "two", "3"]
    assert [rows[m]["ratio"] for m in ("m1", "m2", "m3")] == [2.0, 2.5, 4.0]


def test_users_prepared_before_a_widening_load_are_computed_again(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    loader = Loader(warehouse.engine)
    loader.load([(slug, message("identify", "i1", "2024-05-01T12:00:00Z", traits={"plan": 1}))])
    later = lines_of(slug, [message("identify", "i3", "2024-05-03T12:00:00Z", traits={"plan": 3})])
    prepared = loader.prepare(*later)  # for a BIGINT `plan`, as `users` has it now

    loader.load([(slug, message("identify", "i2", "2024-05-02T12:00:00Z", traits={"plan": "two"}))])
    loader.load_batch(*later, prepared)

    assert warehouse.column_types(slug, "users")["plan"] is T.TEXT
    assert warehouse.read(slug, "users")["u-1"]["plan"] == "3"


def test_uuid_ts_is_the_time_of_the_load_not_of_its_preparation(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    loader = Loader(warehouse.engine)
    loader.load([(slug, track("m1", "Rated", score=1))])
    batch = lines_of(slug, [track("m2", "Rated", score=2)])
    prepared = loader.prepare(*batch)
    between = datetime.now(UTC)

    loader.load_batch(*batch, prepared)

    loaded_at = warehouse.read(slug, "rated")["m2"]["uuid_ts"]
    assert loaded_at >= between.replace(microsecond=between.microsecond // 1000 * 1000)


def test_a_postgres_table_made_before_uuid_ts_had_a_default_still_gets_it(tmp_path: Path) -> None:
    warehouse = make_warehouse("postgres", tmp_path)
    slug = warehouse.slug()
    try:
        Loader(warehouse.engine).load([(slug, track("m1", "Rated", score=1))])
        session = warehouse.engine.session()
        try:  # as an earlier release made it
            session.execute(f"ALTER TABLE {warehouse.table(slug, 'rated')} ALTER COLUMN uuid_ts DROP DEFAULT")
            session.commit()
        finally:
            session.close()

        Loader(warehouse.engine).load([(slug, track("m2", "Rated", score=2))])

        rows = warehouse.read(slug, "rated")
        assert rows["m2"]["uuid_ts"] >= rows["m1"]["uuid_ts"]
    finally:
        warehouse.drop()


def test_reserved_names_are_kept_aside_without_overwriting_columns(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    clashing = message(
        "track",
        "m1",
        event="Order Completed",
        properties={
            "user_id": "not-the-user",
            "event": "not-the-event",
            "id": "prop-id",
            "context": {"ip": "198.51.100.1"},
            "plan": "pro",
        },
    )
    traits = {"id": "trait-id", "uuid_ts": "x", "email": "ada@example.com"}
    identify = message("identify", "m2", traits=traits)

    Loader(warehouse.engine).load([(slug, clashing), (slug, identify)])

    row = warehouse.read(slug, "order_completed")["m1"]
    assert (row["id"], row["user_id"], row["event"], row["context_ip"], row["plan"]) == (
        "m1",
        "u-1",
        "order_completed",
        "203.0.113.7",
        "pro",
    )
    assert orjson.loads(row["reserved_properties"]) == {
        "user_id": "not-the-user",
        "event": "not-the-event",
        "id": "prop-id",
        "context.ip": "198.51.100.1",
    }
    assert warehouse.column_types(slug, "order_completed")["reserved_properties"] is T.TEXT
    identified = warehouse.read(slug, "identifies")["m2"]
    assert orjson.loads(identified["reserved_properties"]) == {"id": "trait-id", "uuid_ts": "x"}
    assert isinstance(identified["uuid_ts"], datetime)
    assert list(warehouse.read(slug, "users")) == ["u-1"]


def test_users_and_accounts_hold_each_traits_latest_value(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    loader = Loader(warehouse.engine)
    newer, older = "2024-05-02T10:00:00Z", "2024-05-01T10:00:00Z"

    def identify(message_id: str, moment: str, user_id: str = "u-1", **traits: Any) -> dict[str, Any]:
        return message("identify", message_id, moment, user_id, traits=traits)

    def group(message_id: str, moment: str, **traits: Any) -> dict[str, Any]:
        return message("group", message_id, moment, groupId="acme", traits=traits)

    loader.load(
        [
            (slug, identify("i1", newer, plan="pro", email="new@example.com", age=36)),
            (slug, group("g1", newer, name="Acme Inc", employees=50)),
            (slug, identify("i0", newer, "u-2", plan="free")),
        ]
    )
    # Older messages arriving late: they fill only what nothing newer says.
    loader.load(
        [
            (slug, identify("i2", older, plan="free", email="old@example.com", company="Ada")),
            (slug, group("g2", older, name="Acme", industry="retail")),
        ]
    )

    users = warehouse.read(slug, "users")
    assert sorted(users) == ["u-1", "u-2"]
    assert (users["u-1"]["plan"], users["u-1"]["email"], users["u-1"]["company"]) == (
        "pro",
        "new@example.com",
        "Ada",
    )
    assert users["u-1"]["timestamp"] == at("2024-05-02T10:00:00+00:00")
    assert (users["u-2"]["plan"], users["u-2"]["company"]) == ("free", None)
    accounts = warehouse.read(slug, "accounts")
    assert list(accounts) == ["acme"]
    assert (accounts["acme"]["name"], accounts["acme"]["employees"], accounts["acme"]["industry"]) == (
        "Acme Inc",
        50,
        "retail",
    )

    # Within one batch too, and in any order; a trait changing type widens in `users` too;
    # an identify without a user id has no `users` row.
    loader.load(
        [
            (slug, identify("i3", "2024-05-03T00:00:00Z", plan="enterprise", age="thirty-six")),
            (slug, identify("i4", "2024-04-01T00:00:00Z", plan="trial", phone="555")),
            (slug, message("identify", "i5", user_id=None, traits={"plan": "anonymous"})),
        ]
    )

    users = warehouse.read(slug, "users")
    assert sorted(users) == ["u-1", "u-2"]
    user = users["u-1"]
    assert (user["plan"], user["email"], user["phone"]) == ("enterprise", "new@example.com", "555")
    assert user["age"] == "thirty-six"
    assert warehouse.column_types(slug, "users")["age"] is T.TEXT
    assert user["timestamp"] == at("2024-05-03T00:00:00+00:00")


def test_loads_are_idempotent_on_message_id(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    loader = Loader(warehouse.engine)
    batch = [
        (slug, track("m1")),
        (slug, track("m2")),
        (slug, message("identify", "m3", traits={"plan": "pro"})),
    ]
    assert loader.load(batch).rows == 5

    assert loader.load(batch).rows == 0
    assert Loader(warehouse.engine).load(batch).rows == 0
    repeated = loader.load([(slug, track("m1")), (slug, track("m4")), (slug, track("m4"))])

    assert repeated.rows == 2
    # Received after everything loaded (a backlog in order), twice in its batch; then the
    # earlier batch once more, now older than what the tables hold.
    later = {**track("m5"), "receivedAt": "2024-05-01T12:30:00.000Z"}
    assert loader.load([(slug, later), (slug, later)]).rows == 2
    assert loader.load(batch).rows == 0
    assert sorted(warehouse.read(slug, "tracks")) == ["m1", "m2", "m4", "m5"]
    assert sorted(warehouse.read(slug, "order_completed")) == ["m1", "m2", "m4", "m5"]
    assert list(warehouse.read(slug, "identifies")) == ["m3"]
    assert warehouse.rows(f"SELECT count(*) AS n FROM {warehouse.table(slug, 'users')}") == [{"n": 1}]


class HalfCommittingSession:
    """A PostgreSQL session whose load ends as if the server died between its two commits:
    the second connection's share is committed, the session's own is not."""

    def __init__(self, session: PostgresSession) -> None:
        self.session = session
        self.dialect = session.dialect
        self.commits = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.session.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.session.query(sql, params)

    def insert_new(self, schema: str, table: str, columns: Columns, rows: Rows) -> int:
        return self.session.insert_new(schema, table, columns, rows)

    def insert_all(self, inserts: Sequence[Insert]) -> int:
        return self.session.insert_all(inserts)

    def commit(self) -> None:
        self.commits += 1
        if self.commits == 1:  # the schema changes
            self.session.commit()
            return
        assert self.session.aside is not None, "the load used one connection"
        self.session.aside.commit()
        raise ConnectionError("the server went away between the two commits")

    def rollback(self) -> None:
        self.session.rollback()

    def close(self) -> None:
        self.session.close()


class HalfCommittingEngine:
    def __init__(self, engine: PostgresEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect

    def session(self, *, read_only: bool = False) -> Session:
        return HalfCommittingSession(self.engine.session(read_only=read_only))

    def describe(self) -> str:
        return self.engine.describe()


def test_a_postgres_load_cut_between_its_two_commits_is_completed_by_its_redelivery(tmp_path: Path) -> None:
    warehouse = make_warehouse("postgres", tmp_path)
    assert isinstance(warehouse.engine, PostgresEngine)
    slug = warehouse.slug()
    batch = [(slug, track(f"m{n}", "Order Completed", n=n)) for n in range(20)]
    batch += [(slug, track(f"v{n}", "Video Played", n=n)) for n in range(5)]
    batch += [(slug, message("identify", "i1", traits={"plan": "pro"}))]
    try:
        with pytest.raises(ConnectionError):
            Loader(HalfCommittingEngine(warehouse.engine)).load(batch)
        counts = {
            table: len(warehouse.read(slug, table))
            for table in ("tracks", "order_completed", "video_played", "identifies")
        }
        assert counts["identifies"] == 0 and any(counts.values()), counts  # a part of the load

        report = Loader(warehouse.engine).load(batch)

        assert report.rows == 2 * 25 + 1 - sum(counts.values())
        assert sorted(warehouse.read(slug, "tracks")) == sorted(m["messageId"] for _, m in batch[:25])
        assert len(warehouse.read(slug, "order_completed")) == 20
        assert len(warehouse.read(slug, "video_played")) == 5
        assert list(warehouse.read(slug, "identifies")) == ["i1"]
        assert warehouse.read(slug, "users")["u-1"]["plan"] == "pro"
    finally:
        warehouse.drop()


def test_a_postgres_insert_failing_on_the_second_connection_rolls_back_both(tmp_path: Path) -> None:
    warehouse = make_warehouse("postgres", tmp_path)
    slug = warehouse.slug()
    try:
        Loader(warehouse.engine).load(
            [(slug, track("m0", "Rated", score=0)), (slug, track("s0", "Scored", score=0))]
        )
        columns = {"id": T.TEXT, "score": T.BIGINT}
        good = warehouse.engine.dialect.encode(columns, {"id": pa.array(["m1"]), "score": pa.array([1])})
        bad = Rows(good.values, b"m2\tnot a number\n")
        session = warehouse.engine.session()
        assert isinstance(session, PostgresSession)
        try:
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                session.insert_all(
                    [
                        Insert(slug, "scored", columns, good, read_later=True),  # this connection
                        Insert(slug, "rated", columns, bad),  # the other
                    ]
                )
            assert session.aside is not None
            session.rollback()
        finally:
            session.close()

        assert sorted(warehouse.read(slug, "scored")) == ["s0"]
        assert sorted(warehouse.read(slug, "rated")) == ["m0"]
    finally:
        warehouse.drop()


def test_two_sources_load_into_two_schemas(warehouse: Warehouse) -> None:
    web, ios = warehouse.slug("web"), warehouse.slug("ios")

    Loader(warehouse.engine).load(
        [
            (web, track("m1", "Signed Up", plan="pro")),
            (ios, track("m1", "Signed Up", plan="free")),
            (ios, message("screen", "m2", name="Home")),
        ]
    )

    assert warehouse.tables(web) == {"tracks", "signed_up"}
    assert warehouse.tables(ios) == {"tracks", "signed_up", "screens"}
    assert warehouse.read(web, "signed_up")["m1"]["plan"] == "pro"
    assert warehouse.read(ios, "signed_up")["m1"]["plan"] == "free"


def test_long_names_fit_the_engine(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    dialect = warehouse.engine.dialect
    event = "Completed " + "an extraordinarily long onboarding step " * 3  # > 100 characters
    first, second = "p" * 99 + "a", "p" * 99 + "b"  # one prefix, two properties
    assert len(event) > 100
    Loader(warehouse.engine).load([(slug, track("m1", event, **{first: 1, second: "two"}))])

    # A new loader reads the fitted names back from the catalog, and adds a long column.
    third = "q" * 100
    Loader(warehouse.engine).load([(slug, track("m2", event, **{first: 3, third: True}))])

    (table,) = warehouse.tables(slug) - {"tracks"}
    assert len(table.encode()) <= dialect.max_name
    columns = warehouse.column_types(slug, table)
    long_columns = sorted(column for column in columns if column[0] in "pq")
    assert len(long_columns) == 3
    assert all(len(column.encode()) <= dialect.max_name for column in long_columns)
    a, b, q = long_columns
    rows = warehouse.read(slug, table)
    assert (rows["m1"][a], rows["m1"][b], rows["m1"][q]) == (1, "two", None)
    assert (rows["m2"][a], rows["m2"][b], rows["m2"][q]) == (3, None, True)
    assert warehouse.read(slug, "tracks")["m2"]["event"] == table
    assert warehouse.read(slug, "tracks")["m2"]["event_text"] == event


def test_a_long_source_slug_fits_the_engine(warehouse: Warehouse) -> None:
    slug = "x" * 60 + warehouse.slug()  # the engine never sees this name: not dropped as is
    schema = warehouse.engine.dialect.fit(slug)
    warehouse.schemas.append(schema)

    Loader(warehouse.engine).load([(slug, track("m1"))])
    Loader(warehouse.engine).load([(slug, track("m2", coupon="SPRING"))])

    assert sorted(warehouse.read(schema, "order_completed")) == ["m1", "m2"]


def test_nul_in_text_loads(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    loader = Loader(warehouse.engine)

    loader.load(
        [
            (slug, track("m1", note="before\x00after")),
            (slug, message("identify", "m2", user_id="u\x00nul", traits={"name": "Nul\x00"})),
        ]
    )

    kept = "\ufffd" if warehouse.kind == "postgres" else "\x00"
    assert warehouse.read(slug, "order_completed")["m1"]["note"] == f"before{kept}after"
    assert warehouse.read(slug, "users")[f"u{kept}nul"]["name"] == f"Nul{kept}"


def test_text_that_bulk_formats_escape_loads_as_sent(warehouse: Warehouse) -> None:
    """Tabs, newlines, carriage returns, backslashes, quotes and commas: the separators and
    escapes of COPY's text format and of CSV."""
    slug = warehouse.slug()
    awkward = ["tab\there", "two\nlines", "cr\rlf", "back\\slash \\. \\N", 'say "hi", ok', "", "\\"]
    Loader(warehouse.engine).load(
        [(slug, track(f"m{i}", note=text, ratio=i + 0.5, flag=i % 2 == 0)) for i, text in enumerate(awkward)]
    )

    rows = warehouse.read(slug, "order_completed")
    assert {key: row["note"] for key, row in rows.items()} == {
        f"m{i}": text for i, text in enumerate(awkward)
    }
    assert {key: row["ratio"] for key, row in rows.items()} == {f"m{i}": i + 0.5 for i in range(len(awkward))}
    assert {key: bool(row["flag"]) for key, row in rows.items()} == {
        f"m{i}": i % 2 == 0 for i in range(len(awkward))
    }


def test_escapes_are_found_in_each_event_tables_share_of_a_batch(warehouse: Warehouse) -> None:
    """Each event's rows are a share of the batch's columns: what needs escaping is looked
    for in that share, wherever it lies in the batch."""
    slug = warehouse.slug()
    notes = {"A Plain": ["plain", "also plain"], "M Tabbed": ["tab\there", "ok"], "Z Last": ["ok", "back\\"]}
    batch = [
        (slug, track(f"{event[0]}{index}", event=event, note=note))
        for index in range(2)
        for event, values in notes.items()
        for note in [values[index]]
    ]
    Loader(warehouse.engine).load(batch)

    for event, values in notes.items():
        rows = warehouse.read(slug, event.lower().replace(" ", "_"))
        assert {key: row["note"] for key, row in rows.items()} == {
            f"{event[0]}{index}": value for index, value in enumerate(values)
        }


def test_numbers_load_as_sent(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    numbers = [
        (0.1, 0),
        (1e-7, -1),
        (1e21, 2**62),
        (-2.5, -(2**63)),
        (1.5e300, 7),
        (123456.789, 2**31),
        (-0.0, -1),
    ]
    Loader(warehouse.engine).load(
        [(slug, track(f"m{i}", ratio=ratio, count=count)) for i, (ratio, count) in enumerate(numbers)]
    )

    rows = warehouse.read(slug, "order_completed")
    assert [(rows[f"m{i}"]["ratio"], rows[f"m{i}"]["count"]) for i in range(len(numbers))] == numbers


def test_awkward_names_and_values(warehouse: Warehouse) -> None:
    slug = warehouse.slug()

    keywords = {"from": 1, "order": "asc", "group": True, "table": "t", "desc": 2.5}
    Loader(warehouse.engine).load(
        [
            (slug, track("m1", "Select", **keywords)),
            (slug, track("m2", "Users", plan="pro")),
            (slug, message("track", "m3", properties={"orphan": 1})),
            (slug, message("page", "m4", user_id=20240501, name="2024-05-01", properties={"id": 7})),
            (slug, message("identify", "m5", user_id="2024-05-01", traits={"plan": "pro"})),
            (slug, message("identify", "m6", user_id="u" * 300, traits={"plan": "free"})),
        ]
    )

    assert warehouse.tables(slug) == {"tracks", "select", "_users", "pages", "identifies", "users"}
    assert warehouse.read(slug, "select")["m1"]["from"] == 1
    assert warehouse.read(slug, "select")["m1"]["order"] == "asc"
    assert warehouse.read(slug, "_users")["m2"]["plan"] == "pro"
    assert warehouse.read(slug, "tracks")["m3"]["event"] is None
    page = warehouse.read(slug, "pages")["m4"]
    assert (page["user_id"], page["name"], orjson.loads(page["reserved_properties"])) == (
        "20240501",
        "2024-05-01",
        {"id": 7},
    )
    assert warehouse.column_types(slug, "pages")["name"] is T.TEXT
    assert warehouse.column_types(slug, "identifies")["user_id"] is T.TEXT
    assert sorted(warehouse.read(slug, "users")) == ["2024-05-01", "u" * 300]


def test_timestamps_in_any_iso_spelling_load_as_utc(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    spellings = {
        "comma": ("2024-05-01T12:00:00,5Z", "2024-05-01T12:00:00.5+00:00"),
        "lower_z": ("2024-05-01 12:00z", "2024-05-01T12:00:00+00:00"),
        "offset": ("2024-05-01T12:00:00.5-0330", "2024-05-01T15:30:00.5+00:00"),
        "nanoseconds": ("2024-05-01T12:00:00.123456789Z", "2024-05-01T12:00:00.123456+00:00"),
        "date": ("2024-05-01", "2024-05-01T00:00:00+00:00"),
        "naive": ("2024-05-01T12:00:00", "2024-05-01T12:00:00+00:00"),
        "far": ("9999-12-31T23:00:00-05:00", "9999-12-31T23:59:59.999999+00:00"),
    }

    Loader(warehouse.engine).load(
        [(slug, track("m1", "Timed", **{name: sent for name, (sent, _) in spellings.items()}))]
    )

    row = warehouse.read(slug, "timed")["m1"]
    types = warehouse.column_types(slug, "timed")
    for name, (_, expected) in spellings.items():
        assert types[name] is T.TIMESTAMP, name
        assert row[name] == at(expected), name


EVERY_MESSAGE = "*"


class RefusingSession:
    """A real session that refuses to insert one message's rows into one table."""

    def __init__(self, session: Session, table: str, message_id: str) -> None:
        self.session = session
        self.refused = (table, message_id)

    @property
    def dialect(self) -> Dialect:
        return self.session.dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.session.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.session.query(sql, params)

    def insert_all(self, inserts: Sequence[Insert]) -> int:
        return insert_each(self, inserts)

    def insert_new(self, schema: str, table: str, columns: Columns, rows: Rows) -> int:
        refused_table, refused_id = self.refused
        ids = rows.values["id"].to_pylist()
        if table == refused_table and (refused_id == EVERY_MESSAGE or refused_id in ids):
            raise ValueError(f"refused {refused_id}")
        return self.session.insert_new(schema, table, columns, rows)

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()

    def close(self) -> None:
        self.session.close()


class RefusingEngine:
    def __init__(self, engine: Engine, table: str, message_id: str) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.refused = (table, message_id)

    def session(self, *, read_only: bool = False) -> Session:
        return RefusingSession(self.engine.session(read_only=read_only), *self.refused)

    def describe(self) -> str:
        return self.engine.describe()


def destination(warehouse: Warehouse, settings: Mapping[str, Any] | None = None) -> WarehouseDestination:
    kind = {cls.kind: cls for cls in WAREHOUSES}[warehouse.kind]
    return kind("warehouse", settings or warehouse.settings)


def test_a_failed_load_leaves_no_rows_and_the_loader_recovers(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    loader = Loader(RefusingEngine(warehouse.engine, "order_completed", "m2"))

    with pytest.raises(ValueError, match="refused m2"):
        loader.load([(slug, track("m1")), (slug, track("m2", coupon="X"))])

    assert warehouse.read(slug, "tracks") == {}  # its rows went in first, then were rolled back
    assert "coupon" in warehouse.columns(slug, "order_completed")  # the tables were committed first,
    assert ("order_completed", None, "created table") in changes(warehouse, slug)  # and recorded
    loader.load([(slug, track("m1")), (slug, track("m3", coupon="Y"))])
    assert sorted(warehouse.read(slug, "order_completed")) == ["m1", "m3"]


def test_an_event_that_fails_alone_is_failed_and_the_rest_load(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    target = destination(warehouse)
    target.engine = RefusingEngine(warehouse.engine, "order_completed", "m4")
    target.loader = Loader(target.engine)
    events = [track(f"m{i}", step=i) for i in range(7)]

    outcomes = target.load_here(Batch.of([slug] * len(events), events))

    assert outcomes[:4] + outcomes[5:] == [DELIVERED] * 6
    assert isinstance(outcomes[4], Failed)
    assert "refused m4" in outcomes[4].reason
    assert sorted(warehouse.read(slug, "order_completed")) == ["m0", "m1", "m2", "m3", "m5", "m6"]
    assert "m4" not in warehouse.read(slug, "tracks")


def test_a_warehouse_that_answers_but_takes_nothing_retries_every_event(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    target = destination(warehouse)
    target.engine = RefusingEngine(warehouse.engine, "tracks", EVERY_MESSAGE)
    target.loader = Loader(target.engine)
    events = [track(f"m{i}") for i in range(4)]

    outcomes = target.load_here(Batch.of([slug] * len(events), events))

    assert [type(outcome) for outcome in outcomes] == [Retry] * 4
    assert all("refused *" in outcome.reason for outcome in outcomes if isinstance(outcome, Retry))


def test_an_unreachable_warehouse_retries_every_event(warehouse: Warehouse, tmp_path: Path) -> None:
    if warehouse.kind == "duckdb":
        (tmp_path / "a-file").write_text("")
        settings = {"path": str(tmp_path / "a-file" / "warehouse.duckdb")}
    else:
        scheme = "postgresql" if warehouse.kind == "postgres" else "mysql"
        settings = {"url": f"{scheme}://nobody@127.0.0.1:1/test"}
    target = destination(warehouse, settings)
    events = [track(f"m{i}") for i in range(3)]

    outcomes = asyncio.run(target.deliver(events, [warehouse.slug()] * 3))

    assert all(isinstance(outcome, Retry) for outcome in outcomes)
    assert len(outcomes) == 3


def test_a_dead_loader_process_means_retry_then_a_new_one(tmp_path: Path) -> None:
    duckdb_warehouse = make_warehouse("duckdb", tmp_path)
    target = destination(duckdb_warehouse)
    slug = duckdb_warehouse.slug()

    async def scenario() -> tuple[list[Outcome], list[Outcome], list[Outcome]]:
        first = await target.deliver([track("m1")], [slug])
        executor = target.process.executor
        assert executor is not None
        for worker in list(executor._processes.values()):
            os.kill(worker.pid, signal.SIGKILL)
            worker.join()
        during = await target.deliver([track("m2")], [slug])
        after = await target.deliver([track("m2")], [slug])
        await target.close()
        return first, during, after

    first, during, after = asyncio.run(scenario())
    assert first == [DELIVERED]
    assert isinstance(during[0], Retry) and "loader process" in during[0].reason
    assert after == [DELIVERED]
    assert sorted(duckdb_warehouse.read(slug, "tracks")) == ["m1", "m2"]


def test_a_delivery_loads_its_own_batch_whether_it_was_sent_ahead_or_not(tmp_path: Path) -> None:
    """The router sends the next batch ahead while one loads; the loader process prepares
    it (and loads it early, `worker.Loads`). Delivering that same batch answers for it;
    delivering another loads the other."""
    duckdb_warehouse = make_warehouse("duckdb", tmp_path)
    target = destination(duckdb_warehouse)
    slug = duckdb_warehouse.slug()

    async def scenario() -> list[list[Outcome]]:
        outcomes = [await target.deliver([track("m1")], [slug])]  # starts the loader process
        await target.prefetch([track("m2", step=2), track("m3")], [slug, slug])
        outcomes.append(await target.deliver([track("m2", step=2), track("m3")], [slug, slug]))
        await target.prefetch([track("m4")], [slug])
        outcomes.append(await target.deliver([track("m5", step=5)], [slug]))
        outcomes.append(await target.deliver([track("m4")], [slug]))  # sent ahead before, not kept
        await target.close()
        return outcomes

    assert asyncio.run(scenario()) == [[DELIVERED], [DELIVERED] * 2, [DELIVERED], [DELIVERED]]
    assert sorted(duckdb_warehouse.read(slug, "tracks")) == ["m1", "m2", "m3", "m4", "m5"]
    steps = duckdb_warehouse.rows(f"SELECT id, step FROM {duckdb_warehouse.table(slug, 'order_completed')}")
    assert {row["id"]: row["step"] for row in steps} == {"m1": None, "m2": 2, "m3": None, "m4": None, "m5": 5}


def test_two_batches_sent_ahead_are_prepared_at_once_and_each_loads_its_own_rows(tmp_path: Path) -> None:
    """The router reads two batches ahead; the loader process prepares them side by side.
    Each delivery loads the rows of its own batch."""
    duckdb_warehouse = make_warehouse("duckdb", tmp_path)
    target = destination(duckdb_warehouse)
    slug = duckdb_warehouse.slug()
    first = [track(f"a{n}", step=n) for n in range(40)]
    second = [track(f"b{n}", step=100 + n) for n in range(60)]

    async def scenario() -> list[list[Outcome]]:
        outcomes = [await target.deliver([track("m1")], [slug])]  # starts the loader process
        await target.prefetch(first, [slug] * len(first))
        await target.prefetch(second, [slug] * len(second))
        outcomes.append(await target.deliver(first, [slug] * len(first)))
        outcomes.append(await target.deliver(second, [slug] * len(second)))
        await target.close()
        return outcomes

    assert asyncio.run(scenario()) == [[DELIVERED], [DELIVERED] * 40, [DELIVERED] * 60]
    steps = duckdb_warehouse.rows(f"SELECT id, step FROM {duckdb_warehouse.table(slug, 'order_completed')}")
    assert {row["id"]: row["step"] for row in steps} == {
        "m1": None,
        **{f"a{n}": n for n in range(40)},
        **{f"b{n}": 100 + n for n in range(60)},
    }


def random_identifies(rng: random.Random, load: int) -> list[dict[str, Any]]:
    """25 identifies of six users, a few arriving late, with traits of mixed types."""
    batch = []
    for index in range(25):
        minute = load * 10 + rng.randrange(10) - (15 if rng.random() < 0.15 else 0)  # some arrive late
        traits = {
            name: rng.choice([None, f"{name}-{load}-{index}", load * 100 + index])
            if name == "plan"
            else rng.choice([None, f"{name}-{load}-{index}"])
            for name in ("plan", "email", "city")
        }
        batch.append(
            message(
                "identify",
                f"m{load}-{index}",
                f"2024-05-01T12:{max(minute, 0):02d}:{index:02d}.000Z",
                user_id=f"u{rng.randrange(6)}",
                traits={name: value for name, value in traits.items() if value is not None},
            )
        )
    return batch


@pytest.mark.parametrize("backlog", [False, True], ids=["each-load-settles", "backlog"])
def test_users_over_many_loads_hold_what_a_rebuild_from_all_identifies_would(
    warehouse: Warehouse, backlog: bool
) -> None:
    """Loads merge newer identifies into stored `users` rows and rebuild on late arrivals —
    or, in a backlog, leave them to a later load that rebuilds what they touched; either way
    each trait is its latest non-null value by timestamp over every identify."""
    slug = warehouse.slug()
    loader = Loader(warehouse.engine, slug)
    rng = random.Random(11)
    sent: list[dict[str, Any]] = []
    for load in range(6):
        batch = random_identifies(rng, load)
        loader.load([(slug, m) for m in batch], more_follow=backlog and load % 3 != 2)
        sent += batch

    expected: dict[str, dict[str, Any]] = {}
    for m in sorted(sent, key=lambda m: m["timestamp"]):
        row = expected.setdefault(m["userId"], {})
        row["timestamp"] = m["timestamp"]
        for name, value in m["traits"].items():
            row[name] = str(value)  # `plan` holds numbers and text: a text column
    users = warehouse.read(slug, "users")
    assert set(users) == set(expected)
    for user, row in expected.items():
        found = users[user]
        assert found["timestamp"] == datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00")), user
        assert {name: found.get(name) for name in ("plan", "email", "city")} == {
            name: row.get(name) for name in ("plan", "email", "city")
        }, user


def test_users_with_the_same_timestamp_take_the_latest_received(warehouse: Warehouse) -> None:
    """Identifies that share a timestamp are ordered by `received_at`, whether a load merges
    them into the stored row or rebuilds it; a late one (received earlier) fills only gaps."""
    slug = warehouse.slug()
    loader = Loader(warehouse.engine)
    moment = "2024-05-01T12:00:00.000Z"

    def identify(message_id: str, received: str, **traits: Any) -> tuple[str, dict[str, Any]]:
        found = message("identify", message_id, moment, "u-1", traits=traits)
        return slug, {**found, "receivedAt": f"2024-05-01T12:{received}.000Z"}

    loader.load([identify("i1", "05:00", plan="free", email="a@example.com")])
    loader.load([identify("i2", "06:00", plan="pro"), identify("i3", "07:00", seats=3)])
    first = warehouse.read(slug, "users")["u-1"]
    loader.load([identify("i4", "05:30", plan="late", city="Lyon"), identify("i5", "08:00", seats=4)])
    latest = warehouse.read(slug, "users")["u-1"]

    assert (first["plan"], first["email"], first["seats"]) == ("pro", "a@example.com", 3)
    assert first["received_at"] == at("2024-05-01T12:07:00+00:00")
    assert (latest["plan"], latest["email"], latest["seats"], latest["city"]) == (
        "pro",
        "a@example.com",
        4,
        "Lyon",
    )
    assert latest["received_at"] == at("2024-05-01T12:08:00+00:00")


def test_users_and_accounts_are_rebuilt_through_an_index_where_the_engine_has_them(
    warehouse: Warehouse,
) -> None:
    slug = warehouse.slug()
    Loader(warehouse.engine).load(
        [
            (slug, message("identify", "i-1", traits={"plan": "pro"})),
            (slug, message("group", "g-1", groupId="acme", traits={"seats": 3})),
        ]
    )
    if warehouse.kind == "postgres":
        found = warehouse.rows(f"SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = '{slug}'")
        indexed = {(row["tablename"], row["indexdef"].rsplit("(", 1)[1].strip(")")) for row in found}
        assert {("identifies", "user_id"), ("groups", "group_id")} <= indexed
    elif warehouse.kind == "mysql":
        found = warehouse.rows(
            "SELECT table_name AS t, column_name AS c FROM information_schema.statistics"
            f" WHERE table_schema = '{slug}'"
        )
        assert {("identifies", "user_id"), ("groups", "group_id")} <= {(row["t"], row["c"]) for row in found}
    # DuckDB keeps no index (one would be loaded at every open): the rebuild scans.
    assert warehouse.read(slug, "users")["u-1"]["plan"] == "pro"
    assert warehouse.read(slug, "accounts")["acme"]["seats"] == 3


def stale_ids(warehouse: Warehouse, destination: str) -> set[tuple[str, str]]:
    found = warehouse.rows(
        f"SELECT table_name, latest_id FROM {warehouse.table(META_SCHEMA, 'stale_latest')}"
        f" WHERE destination = '{destination}'"
    )
    return {(row["table_name"], row["latest_id"]) for row in found}


def test_loads_that_more_follow_leave_users_and_accounts_to_the_load_that_settles(
    warehouse: Warehouse,
) -> None:
    slug = warehouse.slug()
    loader = Loader(warehouse.engine, slug)
    loader.load([(slug, message("identify", "i-1", "2024-05-01T12:00:00.000Z", traits={"plan": "free"}))])
    loader.load(
        [
            (slug, message("identify", "i-2", "2024-05-01T12:01:00.000Z", traits={"plan": "pro"})),
            (slug, message("identify", "i-3", user_id="u-2", traits={"email": "b@example.com"})),
            (slug, message("group", "g-1", groupId="acme", traits={"seats": 3})),
        ],
        more_follow=True,
    )
    assert {user: row["plan"] for user, row in warehouse.read(slug, "users").items()} == {"u-1": "free"}
    assert warehouse.read(slug, "accounts") == {}
    assert stale_ids(warehouse, slug) == {("users", "u-1"), ("users", "u-2"), ("accounts", "acme")}

    loader.load([(slug, track("t-1"))])  # touches neither table, and settles both

    users = warehouse.read(slug, "users")
    assert (users["u-1"]["plan"], users["u-2"]["email"]) == ("pro", "b@example.com")
    assert warehouse.read(slug, "accounts")["acme"]["seats"] == 3
    assert stale_ids(warehouse, slug) == set()


def test_ids_left_stale_by_a_loader_that_stopped_are_settled_by_the_next(warehouse: Warehouse) -> None:
    """What a crash between a backlog's loads leaves: the record of the ids, not lost
    with the process. A loader's first load settles, backlog or not."""
    slug = warehouse.slug()
    stopped = Loader(warehouse.engine, slug)
    stopped.load([(slug, track("t-1"))], more_follow=True)
    stopped.load([(slug, message("identify", "i-1", traits={"plan": "pro"}))], more_follow=True)
    assert warehouse.read(slug, "users") == {}

    Loader(warehouse.engine, slug).load(
        [(slug, message("identify", "i-2", user_id="u-2", traits={"a": 1}))], more_follow=True
    )

    assert {user: row.get("plan") for user, row in warehouse.read(slug, "users").items()} == {
        "u-1": "pro",
        "u-2": None,
    }
    assert stale_ids(warehouse, slug) == set()


def test_a_backlog_settles_users_at_least_every_so_often(warehouse: Warehouse) -> None:
    slug = warehouse.slug()
    loader = Loader(warehouse.engine, slug)
    loader.settled_at = time.monotonic() - SETTLE_AT_LEAST_EVERY  # the last settle was that long ago
    loader.load([(slug, message("identify", "i-1", traits={"plan": "pro"}))], more_follow=True)
    assert warehouse.read(slug, "users")["u-1"]["plan"] == "pro"

    loader.load([(slug, message("identify", "i-2", traits={"plan": "max"}))], more_follow=True)
    assert warehouse.read(slug, "users")["u-1"]["plan"] == "pro"  # settled just now: this one waits
    assert stale_ids(warehouse, slug) == {("users", "u-1")}


def test_stale_ids_of_a_dropped_schema_are_forgotten_and_the_schema_not_made_again(
    warehouse: Warehouse,
) -> None:
    slug = warehouse.slug()
    stopped = Loader(warehouse.engine, slug)
    stopped.load([(slug, track("t-1"))])
    stopped.load([(slug, message("identify", "i-1", traits={"plan": "pro"}))], more_follow=True)
    session = warehouse.engine.session()
    cascade = "" if warehouse.kind == "mysql" else " CASCADE"
    session.execute(f"DROP SCHEMA {warehouse.engine.dialect.quote(slug)}{cascade}")
    session.commit()
    session.close()
    other = warehouse.slug()

    Loader(warehouse.engine, slug).load([(other, track("t-1"))])

    assert warehouse.tables(slug) == set()
    assert stale_ids(warehouse, slug) == set()


def test_rows_kept_for_a_settle_are_spelled_from_their_own_messages_after_a_widening(
    warehouse: Warehouse,
) -> None:
    """A backlog's load keeps its `identifies` rows for the settle, apart from the rest of its
    batch; a number trait turned text meanwhile is still spelled as it was sent."""
    slug = warehouse.slug()
    loader = Loader(warehouse.engine, slug)
    loader.load([(slug, message("identify", "i-1", "2024-05-01T11:00:00.000Z", traits={"plan": "free"}))])
    loader.load(
        [(slug, message("identify", "i-2", "2024-05-01T12:00:00.000Z", traits={"score": 2.0}))],
        more_follow=True,
    )
    loader.load(
        [
            (slug, message("identify", "i-3", "2024-05-01T12:01:00.000Z", traits={"plan": "pro"})),
            (slug, message("identify", "i-4", user_id="u-2", traits={"score": "high"})),
        ],
        more_follow=True,
    )
    loader.load([(slug, track("t-1"))])

    users = warehouse.read(slug, "users")
    assert (users["u-1"]["plan"], users["u-1"]["score"]) == ("pro", "2.0")
    assert users["u-2"]["score"] == "high"


def test_more_ids_than_one_statement_takes_are_recorded_and_rebuilt_in_turn(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(warehouse.engine.dialect), "ids_at_once", 2)
    slug = warehouse.slug()
    loader = Loader(warehouse.engine, slug)
    loader.load([(slug, message("identify", f"a{n}", user_id=f"u{n}", traits={"n": n})) for n in range(5)])
    later = "2024-05-01T12:05:00.000Z"
    loader.load(
        [
            (slug, message("identify", f"b{n}", later, user_id=f"u{n}", traits={"n": n + 10}))
            for n in range(5)
        ],
        more_follow=True,
    )
    assert stale_ids(warehouse, slug) == {("users", f"u{n}") for n in range(5)}

    Loader(warehouse.engine, slug).load([(slug, track("t-1"))])  # their rows went with the first loader

    users = warehouse.read(slug, "users")
    assert {user: row["n"] for user, row in users.items()} == {f"u{n}": n + 10 for n in range(5)}
