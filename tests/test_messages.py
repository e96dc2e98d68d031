"""Checks and enrichment of one message, without a server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.collect.messages import (
    Arrival,
    InvalidMessage,
    enrich,
    format_time,
    parse_time,
)

RECEIVED = parse_time("2026-11-29T10:00:00.000Z", "t")


def stored(message: dict[str, Any], **arrival: Any) -> dict[str, Any]:
    record = enrich(message, Arrival(source="web", received_at_us=RECEIVED, ip="10.1.2.3", **arrival))
    result: dict[str, Any] = orjson.loads(record.payload)
    return result


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)))
def test_format_and_parse_round_trip(moment: datetime) -> None:
    epoch_us = parse_time(moment.isoformat() + "Z", "t")
    assert parse_time(format_time(epoch_us), "t") == epoch_us
    assert datetime.fromisoformat(format_time(epoch_us)) == moment.replace(tzinfo=UTC)


@given(
    st.integers(min_value=-(10**9), max_value=10**9),
    st.integers(min_value=0, max_value=10**11),
)
def test_skew_correction_is_exact(skew_us: int, age_us: int) -> None:
    sent = RECEIVED + skew_us
    happened = sent - age_us
    message = {
        "type": "track",
        "userId": "u",
        "event": "E",
        "timestamp": format_time(happened),
        "sentAt": format_time(sent),
    }
    assert parse_time(stored(message)["timestamp"], "t") == RECEIVED - age_us


def test_offsets_are_converted_to_utc() -> None:
    message = {"type": "identify", "userId": "u", "timestamp": "2026-11-29T12:00:00+02:00"}
    assert stored(message)["timestamp"] == "2026-11-29T10:00:00.000Z"


def test_client_side_libraries_get_the_request_ip() -> None:
    browser = {"type": "page", "anonymousId": "a", "context": {"library": {"name": "analytics.js"}}}
    server = {"type": "page", "anonymousId": "a", "context": {"library": {"name": "analytics-python"}}}
    direct = {"type": "page", "anonymousId": "a", "context": {"direct": True}}
    own_ip = {"type": "page", "anonymousId": "a", "context": {"ip": "1.1.1.1", "direct": True}}
    assert stored(browser)["context"]["ip"] == "10.1.2.3"
    assert "ip" not in stored(server)["context"]
    assert stored(direct)["context"]["ip"] == "10.1.2.3"
    assert stored(own_ip)["context"]["ip"] == "1.1.1.1"


def test_unknown_fields_and_nulls_are_kept() -> None:
    message = {"type": "track", "userId": "u", "event": "E", "custom": {"x": [1, None]}, "category": None}
    result = stored(message)
    assert result["custom"] == {"x": [1, None]}
    assert result["category"] is None


def test_a_rejected_message_is_left_as_it_came() -> None:
    message = {"type": "track", "userId": 7, "event": "E", "timestamp": "not a time"}
    before = dict(message)
    with pytest.raises(InvalidMessage) as caught:
        stored(message)
    assert caught.value.code == "invalid_timestamp"
    assert message == before


def test_message_id_over_100_characters_is_refused() -> None:
    with pytest.raises(InvalidMessage) as caught:
        stored({"type": "identify", "userId": "u", "messageId": "m" * 101})
    assert caught.value.code == "invalid_field"


def test_received_at_is_the_arrival_time() -> None:
    result = stored({"type": "identify", "userId": "u"})
    assert datetime.fromisoformat(result["receivedAt"]) == datetime(2026, 11, 29, 10, tzinfo=UTC)
    assert result["timestamp"] == result["receivedAt"]
