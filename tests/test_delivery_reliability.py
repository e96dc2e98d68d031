"""Delivery reliability against real local HTTP receivers: a hanging destination does not
hold back a healthy one, `kill -9` mid-delivery loses nothing, and replay backfills a
destination added after the fact with the log's history, in order, timestamps intact."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.receiver import Receiver
from tests.support import HeadwaterServer, write_workspace
from tests.test_delivery import cli, destination, overview, send, track, wait_until, workspace

KEY = "test-write-key"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


@pytest.fixture
def other_receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def message_ids(receiver: Receiver) -> list[str]:
    return [message["messageId"] for message in receiver.delivered()]


def test_a_hanging_destination_does_not_hold_back_a_healthy_one(
    tmp_path: Path, receiver: Receiver, other_receiver: Receiver
) -> None:
    stuck, healthy = receiver, other_receiver
    stuck.hang.set()  # accepts the connection, reads the request, never answers
    hooks = workspace(
        destination("stuck", stuck.url, settings={"timeout": "1s"}),
        destination("healthy", healthy.url),
    )
    users = ["ada", "bob", "cy", "dee"]
    sent = [track(user, n) for n in range(15) for user in users]
    with HeadwaterServer(tmp_path, extra_yaml=hooks) as server:
        send(server, sent)
        delivered = healthy.wait_for(len(sent), timeout=15)
        wait_until(lambda: overview(server, "healthy")["delivered"] == len(sent), timeout=15)
        # The stuck one timed out (1 s) and parked its users' events for a retry.
        wait_until(lambda: overview(server, "stuck")["retrying"] > 0, timeout=15)
        stuck_view = overview(server, "stuck")
        healthy_view = overview(server, "healthy")
        send(server, [track("eve", n) for n in range(5)])
        later = healthy.wait_for(len(sent) + 5, timeout=15)
        stuck_after = overview(server, "stuck")
    assert sorted(m["messageId"] for m in delivered) == sorted(m["messageId"] for m in sent)
    for user in users:
        assert [m["properties"]["n"] for m in delivered if m["userId"] == user] == list(range(15))
    assert [m["messageId"] for m in later[len(sent) :]] == [f"eve-{n}" for n in range(5)]
    assert healthy_view["retrying"] == 0 and healthy_view["dead_letters"] == 0
    # Nothing the healthy one delivered waited out the stuck one's 1 s timeout.
    assert healthy_view["p95_ms"] is not None and healthy_view["p95_ms"] < 1000, healthy_view
    assert stuck_view["delivered"] == 0 and stuck_after["delivered"] == 0
    assert stuck.delivered() == [] and stuck.requests == []
    assert any("no answer" in error["reason"] for error in stuck_after["recent_errors"]), stuck_after


def test_kill_9_during_delivery_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    settled, answered = 10, 8

    def answer(number: int) -> int:
        # After the first wave and `answered` requests of the second, the receiver stops
        # answering: the next request hangs, so the kill below lands mid-delivery.
        if number == settled + answered:
            receiver.hang.set()
        return 200

    receiver.answer = answer
    hook = destination("hook", receiver.url, max_in_flight=1)
    server = HeadwaterServer(tmp_path, extra_yaml=workspace(hook))
    first = [track("zed", n) for n in range(settled)]
    users = ["ada", "bob", "cy"]
    second = [track(user, n) for n in range(20) for user in users]
    server.start()
    try:
        send(server, first)
        receiver.wait_for(settled)
        # Delivered and recorded together with the destination's position: settled for good.
        wait_until(lambda: overview(server, "hook")["delivered"] == settled)
        send(server, second)
        wait_until(receiver.hang.is_set)
        server.kill()
        before_kill = receiver.delivered()
        assert len(before_kill) == settled + answered + 1
        receiver.hang.clear()
        server.start()
        expected = {m["messageId"] for m in first + second}
        wait_until(lambda: set(message_ids(receiver)) == expected)
        wait_until(lambda: overview(server, "hook")["lag"] == 0)
        final = overview(server, "hook")
    finally:
        server.stop()
    delivered = receiver.delivered()
    counts = Counter(m["messageId"] for m in delivered)
    assert set(counts) == expected
    # What was settled before the crash is not sent again; the wave in flight may be.
    assert all(counts[m["messageId"]] == 1 for m in first)
    assert len(delivered) >= len(first) + len(second)
    # A duplicate is the same message: same messageId, same body.
    by_id: dict[str, dict[str, Any]] = {}
    for message in delivered:
        assert by_id.setdefault(message["messageId"], message) == message
    for message in first + second:
        assert by_id[message["messageId"]]["properties"] == message["properties"]
    # Before the kill and after the restart, every user's events came in order.
    after_restart = delivered[len(before_kill) :]
    for user in users:
        for part in (before_kill, after_restart):
            numbers = [m["properties"]["n"] for m in part if m["userId"] == user]
            assert numbers == sorted(numbers), (user, numbers)
    assert final["dead_letters"] == 0 and final["retrying"] == 0


def ms(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp() * 1_000_000) // 1000


def history_event(n: int) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": f"user-{n % 7}",
        "event": "Signed Up" if n % 10 == 0 else "Step",
        "messageId": f"history-{n}",
        "properties": {"n": n},
        "timestamp": f"2024-03-01T10:{n // 60 % 60:02d}:{n % 60:02d}.{n % 1000:03d}Z",
    }


def clear(receiver: Receiver) -> None:
    with receiver.lock:
        receiver.requests.clear()


def test_replay_backfills_a_destination_added_after_1000_events(tmp_path: Path, receiver: Receiver) -> None:
    sources = {"Web": KEY, "Server": "server-write-key"}
    server = HeadwaterServer(tmp_path, sources=sources)
    history = [history_event(n) for n in range(1000)]
    with server:
        for start in range(0, 1000, 250):
            send(server, history[start : start + 250])
        stored = server.wait_for_events(1000)
    assert [m["messageId"] for m in stored] == [m["messageId"] for m in history]

    # Add the destination afterwards; it starts from "now", so history is not sent by itself.
    hook = destination("backfill", receiver.url, settings={"batch_size": 100})
    paced = destination("paced", receiver.url, sources=["web"])
    write_workspace(server.config, sources, workspace(hook, paced))
    with server:
        marker = {"type": "track", "userId": "ops", "event": "Marker", "messageId": "marker-1"}
        response = httpx.post(
            f"{server.url}/v1/track", json={**marker, "writeKey": "server-write-key"}, timeout=10
        )
        assert response.status_code == 200, response.text
        # The worker is running and has reached the marker: it skipped the 1,000 before it.
        assert [m["messageId"] for m in receiver.wait_for(1)] == ["marker-1"]
        wait_until(lambda: overview(server, "backfill")["lag"] == 0)
        assert overview(server, "backfill")["delivered"] == 1
        clear(receiver)

        replayed = cli(server, "replay", "backfill", "--source", "web")
        assert replayed.returncode == 0, replayed.stderr
        assert "Replayed 1000 event(s): 1000 delivered, 0 filtered, 0 dead-lettered." in replayed.stdout
        delivered = receiver.delivered()
        # Every event, in log order, exactly as stored: original timestamps and receivedAt.
        assert delivered == stored
        assert [m["originalTimestamp"] for m in delivered] == [m["timestamp"] for m in history]
        assert [m["timestamp"] for m in delivered] == [m["timestamp"] for m in history]
        assert all(len(request.json()["batch"]) <= 100 for request in receiver.requests)

        clear(receiver)
        signups = cli(server, "replay", "backfill", "--event", "Signed Up")
        assert signups.returncode == 0, signups.stderr
        assert receiver.delivered() == [m for m in stored if m["event"] == "Signed Up"]
        assert len(receiver.delivered()) == 100

        clear(receiver)
        # From the third batch on: its receivedAt (the server's clock) is the cut.
        since = stored[500]["receivedAt"]
        recent = cli(server, "replay", "backfill", "--since", since, "--source", "web")
        assert recent.returncode == 0, recent.stderr
        expected = [m for m in stored if ms(m["receivedAt"]) >= ms(since)]
        # Batches are separate requests, so the cut falls at or just before the third one.
        assert expected[-500:] == stored[500:] and len(expected) < 1000
        assert receiver.delivered() == expected

        clear(receiver)
        window = cli(server, "replay", "backfill", "--event", "Signed Up", "--until", since)
        assert window.returncode == 0, window.stderr
        before = [m for m in stored if ms(m["receivedAt"]) < ms(since)]
        assert receiver.delivered() == [m for m in before if m["event"] == "Signed Up"]
        assert len(receiver.delivered()) >= 25

        clear(receiver)
        arrivals: list[float] = []
        receiver.answer = lambda _: arrivals.append(time.monotonic()) or 200
        limited = cli(server, "replay", "paced", "--event", "Signed Up", "--rate", "50")
        assert limited.returncode == 0, limited.stderr
        assert receiver.delivered() == [m for m in stored if m["event"] == "Signed Up"]
        # 50 events/s (a second's worth may go at once): the last 50 of 100 take about a second.
        assert arrivals[-1] - arrivals[0] >= 0.8, arrivals[-1] - arrivals[0]

        bad_time = cli(server, "replay", "backfill", "--since", "last tuesday")
        assert bad_time.returncode == 2 and "--since/--until take ISO-8601 times" in bad_time.stderr
        unknown = cli(server, "replay", "nowhere")
        assert unknown.returncode == 2 and "no destination named 'nowhere'" in unknown.stderr

        status = cli(server, "destinations", "status", "backfill", "--json")
    assert status.returncode == 0, status.stderr
    (document,) = [json.loads(line) for line in status.stdout.splitlines() if line.strip()]
    assert document["dead_letters"] == 0
    # Replay runs beside the server's worker, whose own count is untouched.
    assert document["delivered"] == 1
