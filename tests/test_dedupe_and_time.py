"""Duplicates by messageId are stored once; clock-skew correction is exact."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.support import HeadwaterServer

KEY = "test-write-key"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def send(server: HeadwaterServer, batch: list[dict[str, object]], key: str = KEY, **top: object) -> None:
    response = httpx.post(f"{server.url}/v1/batch", json={"batch": batch, "writeKey": key, **top})
    assert response.status_code == 200, response.text


def track(message_id: str, **fields: object) -> dict[str, object]:
    return {"type": "track", "userId": "u-1", "event": "Clicked", "messageId": message_id, **fields}


def test_same_message_id_twice_is_stored_once(server: HeadwaterServer) -> None:
    repeated = str(uuid.uuid4())
    send(server, [track(repeated, properties={"try": 1})])
    send(server, [track(repeated, properties={"try": 2}), track(repeated, properties={"try": 3})])
    send(server, [track("other")])
    stored = server.events()
    assert [event["messageId"] for event in stored] == [repeated, "other"]
    assert stored[0]["properties"] == {"try": 1}
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'headwater_messages_total{outcome="duplicate"} 2.0' in metrics
    assert 'headwater_messages_total{outcome="accepted"} 2.0' in metrics


def test_dedupe_is_per_source(tmp_path: Path) -> None:
    sources = {"Web": "web-key", "Server": "server-key"}
    with HeadwaterServer(tmp_path, sources=sources) as server:
        send(server, [track("shared-id")], key="web-key")
        send(server, [track("shared-id")], key="server-key")
        assert sorted(event["messageId"] for event in server.events()) == ["shared-id"] * 2
        assert [event["messageId"] for event in server.events("--source", "web")] == ["shared-id"]


def test_dedupe_can_be_turned_off(tmp_path: Path) -> None:
    with HeadwaterServer(tmp_path, extra_yaml="collect:\n  dedupe: false\n") as server:
        send(server, [track("again"), track("again")])
        assert len(server.events()) == 2


def test_timestamp_is_corrected_exactly_for_a_skewed_client_clock(server: HeadwaterServer) -> None:
    skew = timedelta(hours=1, minutes=3, seconds=7, milliseconds=250)
    client_now = datetime.now(UTC) + skew
    happened = client_now - timedelta(seconds=42, milliseconds=125)
    send(server, [track("skewed", timestamp=iso(happened), sentAt=iso(client_now))])
    (stored,) = server.events()
    received = parse(stored["receivedAt"])
    assert stored["originalTimestamp"] == iso(happened)
    assert parse(stored["timestamp"]) == received - timedelta(seconds=42, milliseconds=125)
    assert abs(received - datetime.now(UTC)) < timedelta(seconds=30)


def test_batch_sent_at_applies_and_a_message_sent_at_wins(server: HeadwaterServer) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    batch_sent = iso(base + timedelta(seconds=100))
    own_sent = iso(base + timedelta(seconds=10))
    send(
        server,
        [
            track("uses-batch", timestamp=iso(base)),
            track("uses-own", timestamp=iso(base), sentAt=own_sent),
        ],
        sentAt=batch_sent,
    )
    by_batch, by_own = server.events()
    assert parse(by_batch["timestamp"]) == parse(by_batch["receivedAt"]) - timedelta(seconds=100)
    assert by_batch["sentAt"] == batch_sent
    assert parse(by_own["timestamp"]) == parse(by_own["receivedAt"]) - timedelta(seconds=10)


def test_without_sent_at_or_timestamp(server: HeadwaterServer) -> None:
    happened = "2025-06-01T12:00:00.123456+02:00"
    send(server, [track("no-sent-at", timestamp=happened), track("no-timestamp")])
    no_sent_at, no_timestamp = server.events()
    assert no_sent_at["originalTimestamp"] == happened
    assert no_sent_at["timestamp"] == "2025-06-01T10:00:00.123456Z"
    assert no_timestamp["timestamp"] == no_timestamp["receivedAt"]
    assert "originalTimestamp" not in no_timestamp
    assert no_timestamp["receivedAt"].endswith("Z")


def test_message_id_is_assigned_when_missing(server: HeadwaterServer) -> None:
    send(server, [{"type": "identify", "anonymousId": "a-1"}] * 2)
    first, second = server.events()
    assert first["messageId"] and second["messageId"]
    assert first["messageId"] != second["messageId"]
