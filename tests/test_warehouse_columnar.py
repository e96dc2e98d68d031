"""`columnar.parts_for` computes in Arrow exactly what `schema.tables_for` computes in Python.

Every test here compares the two on the same batch: the tables, each column's type, and
each row's values once converted to the column's type (timestamps as instants). The
generated batches lean on what is irregular — names that collide, values whose types
conflict, arrays, huge integers, timestamps of every shape — since that is where the
Arrow path hands rows or columns back to Python.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.warehouse.columnar import Part, parts_for
from headwater.warehouse.loader import LATEST
from headwater.warehouse.schema import ColumnType, coerce, tables_for, utc_timestamp, widen

Rows = dict[Any, list[tuple[tuple[str, Any], ...]]]
Tables = dict[tuple[str, str], tuple[dict[str, ColumnType], Rows]]


def _instant(value: Any, kind: ColumnType) -> Any:
    if value is None or kind is not ColumnType.TIMESTAMP:
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(utc_timestamp(value).replace("Z", "+00:00"))
    return value.astimezone(UTC)


def _add_rows(rows: Rows, columns: dict[str, list[Any]], types: dict[str, ColumnType], size: int) -> None:
    for index in range(size):
        row = tuple(
            sorted(
                (name, _instant(values[index], types[name]))
                for name, values in columns.items()
                if values[index] is not None
            )
        )
        if not row:  # a message without a single value (not even an id) has nothing to load
            continue
        key = columns["id"][index] if "id" in columns else None
        rows.setdefault(key, []).append(row)


def encoded(batch: list[tuple[str, dict[str, Any]]]) -> list[bytes]:
    """The batch as JSON lines (`json`, which writes integers of any size, as a client may)."""
    return [json.dumps(message).encode() for _, message in batch]


def reference(batch: list[tuple[str, dict[str, Any]]]) -> Tables:
    """`tables_for` of the messages as the loader process parses them."""
    parsed = [(source, orjson.loads(line)) for (source, _), line in zip(batch, encoded(batch), strict=True)]
    tables: Tables = {}
    for rows in tables_for(parsed):
        if rows.table in LATEST:  # the loader rebuilds these in SQL; parts_for leaves them out
            continue
        columns = {name: coerce(rows.values[name], kind) for name, kind in rows.columns.items()}
        found: Rows = {}
        _add_rows(found, columns, rows.columns, len(rows.rows))
        tables[(rows.schema, rows.table)] = (dict(rows.columns), found)
    return tables


def columnar(batch: list[tuple[str, dict[str, Any]]]) -> tuple[Tables, list[Part]]:
    parts = parts_for([source for source, _ in batch], encoded(batch))
    types: dict[tuple[str, str], dict[str, ColumnType]] = {}
    for part in parts:
        table = types.setdefault((part.schema, part.table), {})
        for name, kind in part.columns.items():
            table[name] = widen(table[name], kind) if name in table else kind
    tables: Tables = {}
    for part in parts:
        if part.table in LATEST:  # from `tables_for`, for rows it computed; the loader ignores them
            continue
        table_types = types[(part.schema, part.table)]
        arrays = part.arrays_as({name: table_types[name] for name in part.columns})
        columns = {name: array.to_pylist() for name, array in arrays.items()}
        size = len(next(iter(columns.values()))) if columns else 0
        _, rows = tables.setdefault((part.schema, part.table), (table_types, {}))
        _add_rows(rows, columns, table_types, size)
    return tables, parts


def assert_same(batch: list[tuple[str, dict[str, Any]]]) -> list[Part]:
    expected = reference(batch)
    found, parts = columnar(batch)
    assert sorted(found) == sorted(expected)
    for key, (types, rows) in expected.items():
        assert found[key][0] == types, key
        assert {k: sorted(v) for k, v in found[key][1].items()} == {k: sorted(v) for k, v in rows.items()}, (
            key
        )
    return parts


# -- generated batches ---------------------------------------------------------------------

KEYS = [
    "plan",
    "Plan",
    "accountType",
    "account_type",
    "id",
    "user_id",
    "event",
    "name",
    "context_x",
    "when",
    "n",
]
STAMPS = [
    "2024-05-01T10:00:00.123Z",
    "2024-05-01T10:00:00Z",
    "2024-05-01",
    "2024-05-01 10:00",
    "2024-05-01T12:00:00+02:00",
    "2024-02-30T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999-05:00",
    "2024-05-01T10:00:00.1234567Z",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 7, -3, 2**63 - 1, 2**63, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 2.5, 0.1, 1e20]),
    st.text(max_size=6),
    st.sampled_from(STAMPS),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    ),
    max_leaves=6,
)
ids = st.one_of(
    st.text(min_size=1, max_size=4), st.integers(0, 50), st.sampled_from([True, 1.5, "2024-05-01"])
)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["track", "track", "identify", "page", "screen", "group", "alias", "other"]))
    message: dict[str, Any] = {"type": kind, "messageId": draw(st.one_of(ids, st.none()))}
    for field in ("userId", "anonymousId"):
        if draw(st.booleans()):
            message[field] = draw(ids)
    for field in ("receivedAt", "timestamp", "sentAt"):
        message[field] = draw(st.sampled_from([*STAMPS[:5], None]))
    if draw(st.booleans()):
        message["context"] = draw(st.dictionaries(st.sampled_from(["page", "ip", "Ip", "library"]), values))
    custom = draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=5))
    if kind == "track":
        message["event"] = draw(st.sampled_from(["Signed Up", "Order Completed", "users", "", None, 5]))
        message["properties"] = custom
    elif kind in ("page", "screen"):
        message["name"] = draw(st.sampled_from(["Home", "2024-05-01", None]))
        message["properties"] = custom
    else:
        message["traits"] = custom
        message["groupId"] = draw(st.one_of(ids, st.none()))
        message["previousId"] = draw(st.one_of(ids, st.none()))
    return message


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["shop", "app"]), messages()), min_size=1, max_size=40))
def test_generated_batches_come_out_the_same(batch: list[tuple[str, dict[str, Any]]]) -> None:
    assert_same(batch)


# -- what SDKs send ------------------------------------------------------------------------


def sdk_batch(count: int, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """Track, identify and page calls as analytics.js and the server SDKs send them."""
    rng = random.Random(seed)
    batch = []
    for index in range(count):
        context = {
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "page": {"path": "/cart", "url": "https://shop.example.com/cart", "title": "Cart"},
            "userAgent": "Mozilla/5.0",
            "ip": f"203.0.113.{rng.randrange(1, 255)}",
        }
        common = {
            "messageId": f"m{index}",
            "anonymousId": f"a{rng.randrange(1000)}",
            "userId": f"u{rng.randrange(100)}",
            "timestamp": f"2026-11-29T06:{rng.randrange(60):02d}:00.{rng.randrange(1000):03d}Z",
            "receivedAt": "2026-11-29T07:00:00.000Z",
            "context": context,
        }
        pick = rng.random()
        if pick < 0.1:
            traits = {
                "email": f"u{index}@example.com",
                "logins": rng.randrange(9),
                "created_at": "2024-05-01T10:00:00.000Z",
            }
            batch.append(("shop", {"type": "identify", "traits": traits, **common}))
        elif pick < 0.2:
            properties = {
                "path": "/cart",
                "title": "Cart",
                "url": "https://shop.example.com/cart",
                "name": "Cart",
            }
            batch.append(("shop", {"type": "page", "name": "Cart", "properties": properties, **common}))
        else:
            event = rng.choice(["Order Completed", "Product Added"])
            properties = {
                "revenue": rng.choice([25.0, 12.5]),
                "products": [{"product_id": "507f", "quantity": 1}],
                "coupon": None,
            }
            batch.append(("shop", {"type": "track", "event": event, "properties": properties, **common}))
    return batch


def test_what_sdks_send_is_computed_in_arrow() -> None:
    parts = assert_same(sdk_batch(2000))
    arrow_rows = sum(len(part.arrays["id"]) for part in parts if part.python is None)
    assert arrow_rows == sum(
        len(part.arrays["id"]) if part.python is None else len(part.python["id"]) for part in parts
    )
    assert {part.table for part in parts} == {
        "tracks",
        "identifies",
        "pages",
        "order_completed",
        "product_added",
    }


def test_a_property_whose_type_changes_within_a_batch_splits_the_batch_and_keeps_every_value() -> None:
    batch = sdk_batch(300)
    batch[150][1]["properties"] = {"revenue": "a lot"}  # a string where every other is a number
    batch[150][1]["type"] = "track"
    batch[150][1]["event"] = "Order Completed"
    parts = assert_same(batch)
    assert any(part.python is None for part in parts)  # the rest still went through Arrow
    revenue = [part for part in parts if part.table == "order_completed" and "revenue" in part.columns]
    assert {part.columns["revenue"] for part in revenue} == {ColumnType.DOUBLE, ColumnType.TEXT}


def test_numbers_made_text_are_spelled_as_sent() -> None:
    batch = [
        ("shop", {"type": "track", "event": "Rated", "messageId": "m1", "properties": {"score": 1}}),
        ("shop", {"type": "track", "event": "Rated", "messageId": "m2", "properties": {"score": 1.5}}),
        ("shop", {"type": "track", "event": "Rated", "messageId": "m3", "properties": {"score": 2.0}}),
    ]
    (part,) = [
        part for part in parts_for(["shop"] * 3, [orjson.dumps(m) for _, m in batch]) if part.table == "rated"
    ]
    assert part.columns["score"] is ColumnType.DOUBLE
    as_text = part.arrays_as({"id": ColumnType.TEXT, "score": ColumnType.TEXT})
    assert dict(zip(as_text["id"].to_pylist(), as_text["score"].to_pylist(), strict=True)) == {
        "m1": "1",
        "m2": "1.5",
        "m3": "2.0",
    }
    assert as_text["score"].type == pa.string()
