"""Segment's warehouse layout: golden rows for messages as the real SDKs send them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from headwater.warehouse.schema import (
    ColumnType,
    Row,
    event_table,
    infer_type,
    rows_for,
    snake_case,
    widen,
)

TIMES = {
    "receivedAt": "2024-05-01T12:00:01.000Z",
    "sentAt": "2024-05-01T12:00:00.500Z",
    "timestamp": "2024-05-01T12:00:00.400Z",
    "originalTimestamp": "2024-05-01T12:00:00.000Z",
}
COMMON = {
    "received_at": "2024-05-01T12:00:01.000Z",
    "sent_at": "2024-05-01T12:00:00.500Z",
    "timestamp": "2024-05-01T12:00:00.400Z",
    "original_timestamp": "2024-05-01T12:00:00.000Z",
}
BROWSER_CONTEXT = {
    "library": {"name": "analytics.js", "version": "next-1.70.0"},
    "page": {
        "path": "/checkout",
        "referrer": "https://example.com/cart",
        "search": "",
        "title": "Checkout",
        "url": "https://example.com/checkout",
    },
    "userAgent": "Mozilla/5.0",
    "locale": "en-US",
    "campaign": {"name": "spring", "source": "newsletter"},
}
BROWSER_COLUMNS = {
    "context_library_name": "analytics.js",
    "context_library_version": "next-1.70.0",
    "context_page_path": "/checkout",
    "context_page_referrer": "https://example.com/cart",
    "context_page_search": "",
    "context_page_title": "Checkout",
    "context_page_url": "https://example.com/checkout",
    "context_user_agent": "Mozilla/5.0",
    "context_locale": "en-US",
    "context_campaign_name": "spring",
    "context_campaign_source": "newsletter",
}


def by_table(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = rows_for(message)
    assert len({row.table for row in rows}) == len(rows)
    return {row.table: row.values for row in rows}


def test_track_golden() -> None:
    message = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "ajs-next-1",
        "anonymousId": "anon-1",
        "userId": "u-1",
        "properties": {
            "orderId": "50314b8e",
            "total": 27.5,
            "revenue": 25,
            "coupon": None,
            "currency": "USD",
            "isGift": False,
            "products": [{"product_id": "507f1", "sku": "G-32", "price": 19}],
            "shipping": {"method": "ground", "address": {"city": "Lyon"}},
        },
        "context": BROWSER_CONTEXT,
        "integrations": {"All": True},
        "writeKey": "wk",
        **TIMES,
    }
    tables = by_table(message)
    assert list(tables) == ["tracks", "order_completed"]
    base = {
        "id": "ajs-next-1",
        "anonymous_id": "anon-1",
        "user_id": "u-1",
        **COMMON,
        **BROWSER_COLUMNS,
        "event": "order_completed",
        "event_text": "Order Completed",
    }
    assert tables["tracks"] == base
    assert tables["order_completed"] == {
        **base,
        "order_id": "50314b8e",
        "total": 27.5,
        "revenue": 25,
        "currency": "USD",
        "is_gift": False,
        "products": '[{"product_id":"507f1","sku":"G-32","price":19}]',
        "shipping_method": "ground",
        "shipping_address_city": "Lyon",
    }
    assert "uuid_ts" not in tables["tracks"]


def test_identify_golden_users_row() -> None:
    message = {
        "type": "identify",
        "messageId": "py-1",
        "userId": 42,
        "anonymousId": "anon-1",
        "traits": {
            "email": "ada@example.com",
            "firstName": "Ada",
            "createdAt": "2023-01-02T03:04:05Z",
            "address": {"street": "6th Street", "city": "SF", "postalCode": "94103"},
            "tags": ["a", "b"],
            "plan": None,
        },
        "context": {"library": {"name": "analytics-python", "version": "2.3.2"}},
        **TIMES,
    }
    tables = by_table(message)
    traits = {
        "email": "ada@example.com",
        "first_name": "Ada",
        "created_at": "2023-01-02T03:04:05Z",
        "address_street": "6th Street",
        "address_city": "SF",
        "address_postal_code": "94103",
        "tags": '["a","b"]',
    }
    assert tables["identifies"] == {
        "id": "py-1",
        "anonymous_id": "anon-1",
        "user_id": "42",
        **COMMON,
        "context_library_name": "analytics-python",
        "context_library_version": "2.3.2",
        **traits,
    }
    assert tables["users"] == {
        "id": "42",
        "received_at": TIMES["receivedAt"],
        "timestamp": TIMES["timestamp"],
        **traits,
    }


def test_identify_without_user_id_has_no_users_row() -> None:
    tables = by_table({"type": "identify", "anonymousId": "a", "traits": {"x": 1}, **TIMES})
    assert list(tables) == ["identifies"]


def test_group_golden_accounts_row() -> None:
    message = {
        "type": "group",
        "messageId": "m-g",
        "userId": "u-1",
        "groupId": "acme",
        "traits": {"name": "Acme", "employees": 120, "industry": "Tech"},
        **TIMES,
    }
    tables = by_table(message)
    assert tables["groups"] == {
        "id": "m-g",
        "user_id": "u-1",
        **COMMON,
        "group_id": "acme",
        "name": "Acme",
        "employees": 120,
        "industry": "Tech",
    }
    assert tables["accounts"] == {
        "id": "acme",
        "received_at": TIMES["receivedAt"],
        "timestamp": TIMES["timestamp"],
        "name": "Acme",
        "employees": 120,
        "industry": "Tech",
    }


def test_page_golden_with_name_and_category() -> None:
    # analytics.js copies name and category into properties: the same value is no collision.
    message = {
        "type": "page",
        "messageId": "m-p",
        "anonymousId": "anon-1",
        "name": "Pricing",
        "category": "Docs",
        "properties": {
            "name": "Pricing",
            "category": "Docs",
            "path": "/pricing",
            "url": "https://example.com/pricing",
            "title": "Pricing",
        },
        "context": BROWSER_CONTEXT,
        **TIMES,
    }
    assert rows_for(message) == [
        Row(
            "pages",
            {
                "id": "m-p",
                "anonymous_id": "anon-1",
                **COMMON,
                **BROWSER_COLUMNS,
                "name": "Pricing",
                "category": "Docs",
                "path": "/pricing",
                "url": "https://example.com/pricing",
                "title": "Pricing",
            },
        )
    ]


def test_screen_and_alias() -> None:
    screen = by_table({"type": "screen", "messageId": "s", "name": "Home", "properties": {"tab": 2}})
    assert screen == {"screens": {"id": "s", "name": "Home", "tab": 2}}
    alias = by_table({"type": "alias", "messageId": "a", "userId": "u-2", "previousId": "anon-1", **TIMES})
    assert alias == {"aliases": {"id": "a", "user_id": "u-2", **COMMON, "previous_id": "anon-1"}}


def test_unknown_type_produces_no_rows() -> None:
    assert rows_for({"type": "nonsense", "messageId": "x"}) == []


def test_reserved_collisions_are_preserved() -> None:
    message = {
        "type": "track",
        "event": "Signed Up",
        "messageId": "m-1",
        "userId": "u-1",
        "properties": {
            "user_id": "someone-else",
            "event": "custom",
            "id": 7,
            "uuid_ts": "x",
            "context": {"ip": "1.2.3.4"},
            "accountType": "Facebook",
            "account_type": "Google",
            "plan": "Pro",
        },
    }
    row = by_table(message)["signed_up"]
    assert row["user_id"] == "u-1"
    assert row["event"] == "signed_up"
    assert row["id"] == "m-1"
    assert row["account_type"] == "Facebook"
    assert row["plan"] == "Pro"
    assert "context_ip" not in row and "uuid_ts" not in row
    assert orjson.loads(row["reserved_properties"]) == {
        "user_id": "someone-else",
        "event": "custom",
        "id": 7,
        "uuid_ts": "x",
        "context.ip": "1.2.3.4",
        "account_type": "Google",
    }
    assert "reserved_properties" not in by_table(message)["tracks"]


def test_track_property_name_is_not_reserved() -> None:
    row = by_table(
        {"type": "track", "event": "Product Added", "properties": {"name": "Mug", "category": "Home"}}
    )
    assert row["product_added"] == {
        "event": "product_added",
        "event_text": "Product Added",
        "name": "Mug",
        "category": "Home",
    }


def test_identify_trait_id_collides_with_message_id() -> None:
    tables = by_table({"type": "identify", "messageId": "m", "userId": "u", "traits": {"id": "u"}})
    assert orjson.loads(tables["identifies"]["reserved_properties"]) == {"id": "u"}
    assert "reserved_properties" not in tables["users"]  # same value as users.id: nothing lost


def test_nulls_are_omitted() -> None:
    tables = by_table(
        {
            "type": "track",
            "event": "X",
            "userId": None,
            "sentAt": None,
            "properties": {"a": None, "b": {"c": None}, "d": []},
            "context": {"ip": None},
        }
    )
    assert tables["x"] == {"event": "x", "event_text": "X", "d": "[]"}


@pytest.mark.parametrize(
    ("event", "table"),
    [
        ("Order Completed", "order_completed"),
        ("order_completed", "order_completed"),
        ("  Checkout -- Step 2!! ", "checkout_step_2"),
        ("3D Secure Passed", "_3d_secure_passed"),
        ("Users", "_users"),
        ("tracks", "_tracks"),
        ("Identifies", "_identifies"),
        ("Café Visited", "cafe_visited"),
        ("🎉", "_"),
        ("x" * 300, "x" * 127),
        ("Video.Playback/Started", "video_playback_started"),
    ],
)
def test_event_table_names(event: str, table: str) -> None:
    assert event_table(event) == table
    rows = rows_for({"type": "track", "event": event, "messageId": "m"})
    assert [row.table for row in rows] == ["tracks", table]
    assert rows[1].values["event_text"] == event


def test_track_without_event_only_in_tracks() -> None:
    assert [row.table for row in rows_for({"type": "track", "messageId": "m"})] == ["tracks"]


@pytest.mark.parametrize(
    ("name", "snake"),
    [
        ("accountType", "account_type"),
        ("Order Completed", "order_completed"),
        ("HTMLParser", "html_parser"),
        ("userID", "user_id"),
        ("postalCode", "postal_code"),
        ("address2", "address2"),
        ("Step2Done", "step2_done"),
        ("__a__b__", "a_b"),
        ("a--b  c", "a_b_c"),
        ("3ds", "_3ds"),
        ("2FA Enabled", "_2fa_enabled"),
        ("v2API", "v2_api"),
        ("", "_"),
        ("!!!", "_"),
        ("already_snake", "already_snake"),
        ("x" * 200, "x" * 127),
    ],
)
def test_snake_case(name: str, snake: str) -> None:
    assert snake_case(name) == snake


def test_snake_case_cap_does_not_end_in_underscore() -> None:
    assert snake_case("a" * 126 + " b") == "a" * 126


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, ColumnType.BOOLEAN),
        (False, ColumnType.BOOLEAN),
        (0, ColumnType.BIGINT),
        (2**63 - 1, ColumnType.BIGINT),
        (2**63, ColumnType.TEXT),
        (1.5, ColumnType.DOUBLE),
        ("hello", ColumnType.TEXT),
        ("2024-05-01T12:00:00.000Z", ColumnType.TIMESTAMP),
        ("2024-05-01T12:00:00+02:00", ColumnType.TIMESTAMP),
        ("2024-05-01 12:00:00", ColumnType.TIMESTAMP),
        ("2024-05-01", ColumnType.TIMESTAMP),
        ("2024-02-30T00:00:00Z", ColumnType.TEXT),
        ("20240501", ColumnType.TEXT),
        ("2024-05-01T12:00:00Z trailing", ColumnType.TEXT),
        ([1, 2], ColumnType.TEXT),
        ({"a": 1}, ColumnType.TEXT),
    ],
)
def test_infer_type(value: Any, expected: ColumnType | None) -> None:
    assert infer_type(value) is expected


def test_widen() -> None:
    T = ColumnType
    assert widen(T.BIGINT, T.BIGINT) is T.BIGINT
    assert widen(T.BIGINT, T.DOUBLE) is T.DOUBLE
    assert widen(T.DOUBLE, T.BIGINT) is T.DOUBLE
    for a, b in [(T.BIGINT, T.TEXT), (T.BOOLEAN, T.BIGINT), (T.TIMESTAMP, T.TEXT), (T.DOUBLE, T.BOOLEAN)]:
        assert widen(a, b) is T.TEXT
        assert widen(b, a) is T.TEXT


def test_row_values_infer_to_the_expected_types() -> None:
    row = by_table(
        {
            "type": "track",
            "event": "Paid",
            "messageId": "m",
            "properties": {
                "amount": 3,
                "rate": 0.2,
                "ok": True,
                "paidAt": "2024-05-01T00:00:00Z",
                "items": [1],
            },
            **TIMES,
        }
    )["paid"]
    types = {column: infer_type(value) for column, value in row.items()}
    assert types["amount"] is ColumnType.BIGINT
    assert types["rate"] is ColumnType.DOUBLE
    assert types["ok"] is ColumnType.BOOLEAN
    assert types["paid_at"] is ColumnType.TIMESTAMP
    assert types["items"] is ColumnType.TEXT
    assert types["received_at"] is ColumnType.TIMESTAMP
    assert types["id"] is ColumnType.TEXT
