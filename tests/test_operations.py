"""/health, /ready, /metrics and the index: what an operator sees."""

from __future__ import annotations

import re

import httpx

from tests.support import HeadwaterServer

KEY = "test-write-key"


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_health_ready_and_index(server: HeadwaterServer) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert httpx.get(f"{server.url}/ready").json() == {"ready": True}
    index = httpx.get(f"{server.url}/").json()
    assert index["sources"] == [{"name": "Test Source", "slug": "test_source"}]


def test_metrics_count_requests_messages_rejections_and_the_log(server: HeadwaterServer) -> None:
    batch = [
        {"type": "track", "userId": "u", "event": "A", "messageId": "a"},
        {"type": "track", "userId": "u", "event": "B", "messageId": "b"},
        {"type": "track", "userId": "u", "messageId": "no-event"},
    ]
    assert httpx.post(f"{server.url}/v1/batch", json={"batch": batch, "writeKey": KEY}).status_code == 200
    assert httpx.post(f"{server.url}/v1/batch", json={"batch": [], "writeKey": "bad"}).status_code == 401
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, 'headwater_http_requests_total{route="batch",status="200"}') == 1
    assert metric(text, 'headwater_http_requests_total{route="batch",status="401"}') == 1
    assert metric(text, 'headwater_messages_total{outcome="accepted"}') == 2
    assert metric(text, 'headwater_messages_total{outcome="quarantined"}') == 1
    assert metric(text, 'headwater_rejected_total{reason="missing_event"}') == 1
    assert metric(text, 'headwater_rejected_total{reason="invalid_write_key"}') == 1
    assert metric(text, "headwater_log_events") == 2
    assert metric(text, "headwater_log_bytes") > 0
    assert metric(text, "headwater_log_pending_messages") == 0
    assert metric(text, 'headwater_request_seconds_count{route="batch"}') == 2


def test_metrics_show_consumer_lag(server: HeadwaterServer) -> None:
    import sqlite3

    batch = [{"type": "identify", "userId": f"u{n}", "messageId": f"m{n}"} for n in range(5)]
    assert httpx.post(f"{server.url}/v1/batch", json={"batch": batch, "writeKey": KEY}).status_code == 200
    with sqlite3.connect(server.data_dir / "log.sqlite3") as connection:
        first = connection.execute("SELECT min(position) FROM events").fetchone()[0]
        connection.execute("INSERT INTO consumers (name, position) VALUES ('webhook', ?)", (first + 1,))
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, 'headwater_log_consumer_lag{consumer="webhook"}') == 3
