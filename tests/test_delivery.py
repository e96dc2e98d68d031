"""Delivery to real local HTTP receivers: batching, signatures, retries in per-user order,
dead letters and redrive, isolation, crash safety and replay."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.receiver import Receiver
from tests.support import HeadwaterServer

KEY = "test-write-key"


def destination(name: str, url: str, **fields: Any) -> str:
    settings = {"url": url, "allow_private_addresses": True, **fields.pop("settings", {})}
    entry = {
        "name": name,
        "type": "webhook",
        "settings": settings,
        "retry_backoff": "50ms",
        "retry_backoff_max": "200ms",
        **fields,
    }
    return json.dumps(entry)


def workspace(*destinations: str) -> str:
    return "destinations:\n" + "".join(f"  - {entry}\n" for entry in destinations)


def track(user: str, number: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": "Step",
        "messageId": f"{user}-{number}",
        "properties": {"n": number},
        **fields,
    }


def send(server: HeadwaterServer, messages: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{server.url}/v1/batch", json={"batch": messages, "writeKey": KEY}, timeout=10)
    assert response.status_code == 200, response.text


def cli(server: HeadwaterServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "headwater",
            *args,
            "--config",
            str(server.config),
            "--data-dir",
            str(server.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def test_unbatched_delivery_is_signed(tmp_path: Path, receiver: Receiver) -> None:
    hook = destination("hook", receiver.url, settings={"secret": "s3cret"})
    with HeadwaterServer(tmp_path, extra_yaml=workspace(hook)) as server:
        send(server, [track("ada", n) for n in range(3)])
        delivered = receiver.wait_for(3)
    assert [m["messageId"] for m in delivered] == ["ada-0", "ada-1", "ada-2"]
    for request in receiver.requests:
        timestamp = request.headers["X-Headwater-Timestamp"]
        expected = hmac.new(b"s3cret", timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
        assert request.headers["X-Headwater-Signature"] == f"sha256={expected}"
    assert delivered[0]["receivedAt"] and delivered[0]["properties"] == {"n": 0}


def test_batched_delivery(tmp_path: Path, receiver: Receiver) -> None:
    hook = destination("hook", receiver.url, settings={"batch_size": 50}, max_in_flight=1)
    with HeadwaterServer(tmp_path, extra_yaml=workspace(hook)) as server:
        send(server, [track("ada", n) for n in range(120)])
        delivered = receiver.wait_for(120)
    assert [m["properties"]["n"] for m in delivered] == list(range(120))
    assert len(receiver.requests) < 120
    assert all(len(request.json()["batch"]) <= 50 for request in receiver.requests)


def test_a_failing_receiver_recovers_and_every_user_keeps_order(tmp_path: Path, receiver: Receiver) -> None:
    receiver.answer = lambda number: 500 if number < 15 else 200
    hook = destination("hook", receiver.url)
    with HeadwaterServer(tmp_path, extra_yaml=workspace(hook)) as server:
        users = ["ada", "bob", "cy"]
        send(server, [track(user, n) for n in range(10) for user in users])
        delivered = receiver.wait_for(30)
        for user in users:
            assert [m["properties"]["n"] for m in delivered if m["userId"] == user] == list(range(10))
        assert len({m["messageId"] for m in delivered}) == 30
        status = cli(server, "destinations", "status", "hook")
    assert status.returncode == 0, status.stderr
    assert "HTTP 500" in status.stdout


def overview(server: HeadwaterServer, name: str) -> dict[str, Any]:
    documents = httpx.get(f"{server.url}/api/destinations", timeout=10).json()
    (document,) = [document for document in documents if document["name"] == name]
    result: dict[str, Any] = document
    return result


def wait_until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)  # polling the overview, bounded by the deadline


def test_a_refusing_receiver_dead_letters_and_redrive_delivers_once_more(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.answer = lambda _: 400
    hook = destination("hook", receiver.url)
    with HeadwaterServer(tmp_path, extra_yaml=workspace(hook)) as server:
        send(server, [track("ada", n) for n in range(4)])
        wait_until(lambda: overview(server, "hook")["dead_letters"] == 4)
        letters = httpx.get(f"{server.url}/api/destinations/hook/dead-letters").json()
        assert [letter["message"]["messageId"] for letter in letters] == [f"ada-{n}" for n in range(4)]
        assert all(letter["reason"].startswith("HTTP 400") for letter in letters)
        assert receiver.delivered() == []
        receiver.answer = lambda _: 200
        redriven = cli(server, "redrive", "hook")
        assert redriven.returncode == 0, redriven.stderr
        assert "Redriving 4 dead letter(s)" in redriven.stdout
        delivered = receiver.wait_for(4)
        wait_until(lambda: overview(server, "hook")["delivered"] == 4)
        again = httpx.post(f"{server.url}/api/destinations/hook/redrive").json()
        assert again == {"redriven": 0}
        assert overview(server, "hook")["dead_letters"] == 0
    assert [m["messageId"] for m in delivered] == [f"ada-{n}" for n in range(4)]
    assert len(receiver.delivered()) == 4


def test_metrics_show_delivery_per_destination(tmp_path: Path, receiver: Receiver) -> None:
    hook = destination("hook", receiver.url, filters=[{"if": 'event = "Noise"', "drop": True}])
    with HeadwaterServer(tmp_path, extra_yaml=workspace(hook)) as server:
        send(server, [track("ada", 0), track("ada", 1, event="Noise")])
        wait_until(lambda: overview(server, "hook")["delivered"] == 1)
        text = httpx.get(f"{server.url}/metrics").text
    assert 'headwater_delivery_events_total{destination="hook",outcome="delivered"} 1.0' in text
    assert 'headwater_delivery_events_total{destination="hook",outcome="filtered_filter"} 1.0' in text
    assert 'headwater_delivery_dead_letters{destination="hook"} 0.0' in text
    assert 'headwater_delivery_latency_ms{destination="hook",quantile="p95"}' in text


def test_redrive_by_condition_moves_only_matching_dead_letters(tmp_path: Path, receiver: Receiver) -> None:
    receiver.answer = lambda _: 400
    hook = destination("hook", receiver.url)
    with HeadwaterServer(tmp_path, extra_yaml=workspace(hook)) as server:
        send(server, [track("ada", 0), track("bob", 1, event="Order Completed"), track("cy", 2)])
        wait_until(lambda: overview(server, "hook")["dead_letters"] == 3)
        receiver.answer = lambda _: 200
        bad = cli(server, "redrive", "hook", "--where", "event = ")
        assert bad.returncode == 2
        assert "--where" in bad.stderr
        invalid = httpx.post(f"{server.url}/api/destinations/hook/redrive", params={"where": "event ="})
        assert invalid.status_code == 400
        assert invalid.json()["code"] == "invalid_condition"
        moved = cli(server, "redrive", "hook", "--where", 'event = "Order Completed"')
        assert "Redriving 1 dead letter(s)" in moved.stdout, moved.stderr
        assert [m["messageId"] for m in receiver.wait_for(1)] == ["bob-1"]
        wait_until(lambda: overview(server, "hook")["delivered"] == 1)
        assert overview(server, "hook")["dead_letters"] == 2
        none = httpx.post(
            f"{server.url}/api/destinations/hook/redrive", params={"where": 'userId = "nobody"'}
        )
        assert none.json() == {"redriven": 0}
        assert overview(server, "hook")["dead_letters"] == 2


def test_filters_can_belong_to_one_source(tmp_path: Path, receiver: Receiver) -> None:
    sources = {"Web": "web-key", "Server": "server-key"}
    rule = {"source": "web", "if": 'event = "Step"', "drop": True}
    hook = destination("hook", receiver.url, filters=[rule], max_in_flight=1)
    with HeadwaterServer(tmp_path, sources=sources, extra_yaml=workspace(hook)) as server:
        for key, user in (("web-key", "from-web"), ("server-key", "from-server")):
            body = {"batch": [track(user, 0), track(user, 1, event="Other")], "writeKey": key}
            assert httpx.post(f"{server.url}/v1/batch", json=body).status_code == 200
        wait_until(lambda: overview(server, "hook")["delivered"] == 3)
        delivered = receiver.delivered()
        assert overview(server, "hook")["filtered"] == {"filter": 1}
    assert sorted(m["messageId"] for m in delivered) == ["from-server-0", "from-server-1", "from-web-1"]


def test_a_filter_for_an_unknown_source_is_a_config_error(tmp_path: Path) -> None:
    hook = destination("hook", "http://127.0.0.1:9/hook", filters=[{"source": "nope", "drop": True}])
    server = HeadwaterServer(tmp_path, extra_yaml=workspace(hook))
    result = server.cli(
        "serve", "--config", str(server.config), "--data-dir", str(server.data_dir), check=False
    )
    assert result.returncode == 2
    assert "filters[0].source" in result.stderr
    assert "headwater.yaml:" in result.stderr


def test_a_destination_that_is_down_leaves_new_events_in_the_log(tmp_path: Path, receiver: Receiver) -> None:
    receiver.answer = lambda _: 503
    hook = destination("hook", receiver.url)
    with HeadwaterServer(tmp_path, extra_yaml=workspace(hook)) as server:
        users = [f"user-{n}" for n in range(10)]
        send(server, [track(user, 0) for user in users])
        wait_until(lambda: overview(server, "hook")["retrying"] == 10)
        send(server, [track(user, n) for n in range(1, 51) for user in users])
        wait_until(lambda: overview(server, "hook")["lag"] == 500)
        assert overview(server, "hook")["retrying"] == 10
        receiver.answer = lambda _: 200
        delivered = receiver.wait_for(510)
        wait_until(lambda: overview(server, "hook")["lag"] == 0 and overview(server, "hook")["retrying"] == 0)
    for user in users:
        assert [m["properties"]["n"] for m in delivered if m["userId"] == user] == list(range(51))


def test_status_on_a_fresh_data_dir_creates_nothing(tmp_path: Path) -> None:
    config = tmp_path / "headwater.yaml"
    config.write_text(
        "sources:\n  - name: Web\n    write_key: k\n"
        + workspace(destination("hook", "https://example.com/hook"))
    )
    data_dir = tmp_path / "data"
    command = ["destinations", "status", "--json", "--config", str(config), "--data-dir", str(data_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "headwater", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["delivered"] == 0
    assert not data_dir.exists()
