"""segment-analytics-python against a real `headwater serve`: every message lands, enriched.

`check_delivered` is shared with the Node and browser tests: it matches what a client
library says it sent against what Headwater stored, field by field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from segment.analytics import Client
from segment.analytics.version import VERSION

from tests.support import HeadwaterServer

# Stored times are millisecond strings: allow for rounding of each of the three involved.
ROUNDING = timedelta(milliseconds=5)
# receivedAt is the server's clock, which is this machine's clock too.
CLOCK_SLACK = timedelta(seconds=1)


def when(value: Any) -> datetime:
    """An ISO-8601 string with a UTC offset, as a datetime."""
    assert isinstance(value, str), f"not an ISO-8601 string: {value!r}"
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"no UTC offset in {value!r}"
    return parsed


def check_delivered(
    stored: list[dict[str, Any]],
    sent: list[dict[str, Any]],
    *,
    since: datetime,
    ignore: frozenset[str] = frozenset(),
) -> dict[str, dict[str, Any]]:
    """Every sent message stored exactly once, round-tripped and enriched; by messageId."""
    by_id = {message.get("messageId"): message for message in stored}
    assert len(by_id) == len(stored), f"duplicate messageIds stored: {stored}"
    assert set(by_id) == {message["messageId"] for message in sent}, stored
    until = datetime.now(UTC) + CLOCK_SLACK
    for original in sent:
        message = by_id[original["messageId"]]
        # Round trip: what the client built comes back unchanged, except `timestamp`
        # (kept as originalTimestamp) and `context`, which the server may add to.
        for key, value in original.items():
            if key not in {"timestamp", "context", *ignore}:
                assert message.get(key) == value, f"{key}: {message.get(key)!r} != {value!r}"
        for key, value in original["context"].items():
            assert message["context"].get(key) == value, f"context.{key} in {message}"

        received = when(message["receivedAt"])
        assert since - CLOCK_SLACK <= received <= until, message
        client_time = when(message["originalTimestamp"])
        assert client_time == when(original["timestamp"]), message
        sent_at = when(message["sentAt"])
        assert client_time - ROUNDING <= sent_at <= received + ROUNDING, message
        # Clock-skew correction: timestamp = receivedAt - (sentAt - originalTimestamp).
        expected = received - (sent_at - client_time)
        assert abs(when(message["timestamp"]) - expected) <= ROUNDING, message
    return by_id


def send_all(client: Client) -> list[dict[str, Any]]:
    """identify, track (anonymous), group and alias; the messages as the client built them."""
    results = [
        client.identify("py-user-1", {"email": "ada@example.com", "plan": "pro", "logins": 3}),
        client.track(
            anonymous_id="py-anon-1",
            event="Order Completed",
            properties={
                "total": 42.5,
                "currency": "EUR",
                "items": [{"sku": "A-1", "qty": 2}],
                "note": "café ✓",
                "gift": None,
            },
        ),
        client.group("py-user-1", "py-group-1", {"name": "Acme", "seats": 12}),
        client.alias("py-anon-1", "py-user-1"),
    ]
    assert all(ok for ok, _ in results), results
    return [message for _, message in results]


def check_python_messages(server: HeadwaterServer, sent: list[dict[str, Any]], since: datetime):
    stored = server.wait_for_events(len(sent))
    by_id = check_delivered(stored, sent, since=since)
    identify, track, group, alias = (by_id[message["messageId"]] for message in sent)

    assert [m["type"] for m in (identify, track, group, alias)] == [
        "identify",
        "track",
        "group",
        "alias",
    ]
    assert identify["userId"] == "py-user-1"
    assert identify["traits"] == {"email": "ada@example.com", "plan": "pro", "logins": 3}
    assert track["anonymousId"] == "py-anon-1"
    assert track.get("userId") is None
    assert track["event"] == "Order Completed"
    assert track["properties"]["items"] == [{"sku": "A-1", "qty": 2}]
    assert track["properties"]["note"] == "café ✓"
    assert group["groupId"] == "py-group-1"
    assert group["traits"] == {"name": "Acme", "seats": 12}
    assert (alias["previousId"], alias["userId"]) == ("py-anon-1", "py-user-1")
    for message in by_id.values():
        assert message["context"]["library"] == {"name": "analytics-python", "version": VERSION}
        # A server-side library: the request's address is the server's, not the user's.
        assert "ip" not in message["context"], message


def test_python_client_sync_mode_plain_json(server: HeadwaterServer) -> None:
    since = datetime.now(UTC)
    # sync_mode: one POST /v1/batch per call, and an APIError raised on any non-2xx.
    client = Client(server.write_key, host=server.url, sync_mode=True, max_retries=0)
    sent = send_all(client)
    check_python_messages(server, sent, since)


def test_python_client_queued_gzip_batch(server: HeadwaterServer) -> None:
    since = datetime.now(UTC)
    errors: list[tuple[Exception, list[dict[str, Any]]]] = []
    client = Client(
        server.write_key,
        host=server.url,
        gzip=True,
        max_retries=0,
        upload_size=4,  # the four messages go out together in one gzipped /v1/batch
        on_error=lambda error, batch: errors.append((error, batch)),
    )
    sent = send_all(client)
    client.flush()  # blocks until the consumer has uploaded (or failed) every message
    client.join()
    assert errors == []
    check_python_messages(server, sent, since)
