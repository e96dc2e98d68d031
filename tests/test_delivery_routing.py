"""Routing controls against real local HTTP receivers: the message's `integrations` object,
a destination's `sources`, filters and mappings — what passes, what is filtered, and the
filtered counts by reason — plus a real Segment SDK through to a webhook, and the
`headwater destinations` CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics import Client

from tests.e2e.test_python_sdk import send_all
from tests.receiver import Receiver
from tests.support import HeadwaterServer
from tests.test_delivery import cli, destination, overview, send, wait_until, workspace

KEY = "test-write-key"
SERVER_KEY = "server-write-key"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def at(receiver: Receiver, name: str) -> str:
    """A URL on `receiver` whose path is /<name>, so one receiver serves several destinations."""
    return receiver.url.rsplit("/", 1)[0] + f"/{name}"


def delivered_at(receiver: Receiver, name: str) -> list[dict[str, Any]]:
    with receiver.lock:
        accepted = [r for r in receiver.requests if r.path == f"/{name}" and 200 <= r.status < 300]
    messages: list[dict[str, Any]] = []
    for request in accepted:
        body = request.json()
        messages.extend(body["batch"] if isinstance(body, dict) and "batch" in body else [body])
    return messages


def settle(server: HeadwaterServer, name: str, delivered: int, filtered: dict[str, int]) -> dict[str, Any]:
    """Wait until the overview shows exactly these counts; return it."""
    wait_until(
        lambda: (
            (overview(server, name)["delivered"], overview(server, name)["filtered"]) == (delivered, filtered)
        )
    )
    document = overview(server, name)
    assert document["retrying"] == 0 and document["dead_letters"] == 0, document
    assert document["lag"] == 0, document
    return document


def event(message_id: str, name: str = "Step", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "ada", "event": name, "messageId": message_id, **fields}


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [message["messageId"] for message in messages]


def test_the_integrations_object_decides_per_destination(tmp_path: Path, receiver: Receiver) -> None:
    hooks = workspace(destination("hook", at(receiver, "hook")), destination("other", at(receiver, "other")))
    messages = [
        event("only-hook", integrations={"All": False, "hook": True}),
        event("not-hook", integrations={"hook": False}),
        event("none", integrations={"All": False}),
        event("default"),
        event("all-but-hook", integrations={"All": True, "hook": False}),
        event("empty", integrations={}),
    ]
    with HeadwaterServer(tmp_path, extra_yaml=hooks) as server:
        send(server, messages)
        settle(server, "hook", 3, {"integrations": 3})
        settle(server, "other", 4, {"integrations": 2})
    assert ids(delivered_at(receiver, "hook")) == ["only-hook", "default", "empty"]
    assert ids(delivered_at(receiver, "other")) == ["not-hook", "default", "all-but-hook", "empty"]
    # The integrations object travels on unchanged.
    assert delivered_at(receiver, "hook")[0]["integrations"] == {"All": False, "hook": True}


def test_a_destination_restricted_to_sources(tmp_path: Path, receiver: Receiver) -> None:
    hooks = workspace(
        destination("server_only", at(receiver, "server_only"), sources=["server"]),
        destination("everywhere", at(receiver, "everywhere")),
    )
    sources = {"Web": KEY, "Server": SERVER_KEY}
    with HeadwaterServer(tmp_path, sources=sources, extra_yaml=hooks) as server:
        send(server, [event(f"web-{n}") for n in range(3)])
        response = httpx.post(
            f"{server.url}/v1/batch",
            json={"batch": [event(f"server-{n}") for n in range(2)], "writeKey": SERVER_KEY},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        settle(server, "server_only", 2, {"source": 3})
        settle(server, "everywhere", 5, {})
    assert ids(delivered_at(receiver, "server_only")) == ["server-0", "server-1"]
    assert ids(delivered_at(receiver, "everywhere")) == [
        *(f"web-{n}" for n in range(3)),
        *(f"server-{n}" for n in range(2)),
    ]


def test_destination_filters_drop_sample_and_prune(tmp_path: Path, receiver: Receiver) -> None:
    filters = [
        {"if": 'event = "Debug"', "drop": True},
        {"if": 'contains(properties.email, "@test.example")', "drop": True},
        {"if": 'event = "Sampled Out"', "sample": 0},
        {"if": 'event = "Sampled In"', "sample": 100},
        {"if": 'event = "Half"', "sample": 50},
        {"drop_properties": ["properties.password", "properties.card.number"]},
        {"if": 'event = "Checkout"', "allow_properties": ["properties.total", "properties.currency"]},
    ]
    hook = destination("hook", receiver.url, filters=filters, settings={"batch_size": 50})
    halves = [event(f"half-{n}", "Half") for n in range(100)]
    messages = [
        event("debug-1", "Debug"),
        event("tester", "Signed Up", properties={"email": "qa@test.example"}),
        *(event(f"out-{n}", "Sampled Out") for n in range(3)),
        *(event(f"in-{n}", "Sampled In") for n in range(3)),
        event(
            "signup",
            "Signed Up",
            properties={
                "email": "ada@example.com",
                "password": "hunter2",
                "card": {"number": "4242", "exp": "12/30"},
            },
        ),
        event(
            "checkout",
            "Checkout",
            properties={"total": 42.5, "currency": "EUR", "password": "x", "coupon": "SPRING"},
            context={"traits": {"email": "ada@example.com"}},
        ),
        event("debug-2", "Debug"),
        *halves,
    ]
    # Which of the 100 "Half" events the 50 % sample keeps: a stable hash of the messageId.
    threshold = int(50 * (1 << 64) / 100)
    kept_halves = [
        m["messageId"]
        for m in halves
        if int.from_bytes(hashlib.blake2b(m["messageId"].encode(), digest_size=8).digest(), "big") < threshold
    ]
    assert 20 < len(kept_halves) < 80
    passing = 3 + 2 + len(kept_halves)
    with HeadwaterServer(tmp_path, extra_yaml=workspace(hook)) as server:
        send(server, messages)
        settle(server, "hook", passing, {"filter": 3, "sampling": 3 + 100 - len(kept_halves)})
    delivered = receiver.delivered()
    assert ids(delivered) == [*(f"in-{n}" for n in range(3)), "signup", "checkout", *kept_halves]
    by_id = {m["messageId"]: m for m in delivered}
    # drop_properties removes exactly the named fields, nested ones too.
    assert by_id["signup"]["properties"] == {"email": "ada@example.com", "card": {"exp": "12/30"}}
    # allow_properties keeps only the named properties; other top-level fields stay.
    assert by_id["checkout"]["properties"] == {"total": 42.5, "currency": "EUR"}
    assert by_id["checkout"]["context"]["traits"] == {"email": "ada@example.com"}
    assert by_id["checkout"]["event"] == "Checkout"


ORDER_MAPPING = {
    "kind": {"@literal": "order"},
    "id": {"@path": "$.messageId"},
    "summary": {"@template": "Order {{properties.order_id}} by {{userId}} for {{properties.total}}"},
    "email": {
        "@if": {
            "exists": {"@path": "$.context.traits.email"},
            "then": {"@path": "$.context.traits.email"},
            "else": {"@literal": "unknown"},
        }
    },
    "coupon": {"@if": {"exists": {"@path": "$.properties.coupon"}, "then": {"@path": "$.properties.coupon"}}},
    "lines": {
        "@arrayPath": ["$.properties.products", {"sku": {"@path": "$.sku"}, "qty": {"@path": "$.quantity"}}]
    },
    "fixed": {"nested": {"@literal": {"a": [1, 2]}}, "plain": True},
}
PROFILE_MAPPING = {
    "kind": {"@literal": "profile"},
    "user": {"@path": "$.userId"},
    "plan": {"@path": "$.traits.plan"},
}


def test_mappings_shape_what_is_posted_and_filter_the_rest(tmp_path: Path, receiver: Receiver) -> None:
    hook = destination(
        "actions",
        receiver.url,
        max_in_flight=1,  # one lane: the requests come in log order across users
        filters=[{"if": "properties.test = true", "drop": True}],
        mappings=[
            {
                "name": "orders",
                "trigger": 'type = "track" and event = "Order Completed"',
                "mapping": ORDER_MAPPING,
            },
            {"name": "profiles", "trigger": 'type = "identify"', "mapping": PROFILE_MAPPING},
        ],
    )
    products = [{"sku": "A-1", "quantity": 2, "price": 3}, {"sku": "B-2", "quantity": 1}]
    messages = [
        event(
            "order-1",
            "Order Completed",
            properties={"order_id": "o-1", "total": 42.5, "products": products, "coupon": "SPRING"},
            context={"traits": {"email": "ada@example.com"}},
        ),
        event("viewed", "Product Viewed", properties={"sku": "A-1"}),
        event("order-test", "Order Completed", properties={"order_id": "t", "test": True}),
        {"type": "identify", "userId": "bob", "messageId": "identify-1", "traits": {"plan": "pro"}},
        {"type": "page", "userId": "bob", "messageId": "page-1", "name": "Home"},
        event("order-2", "Order Completed", userId="cy", properties={"order_id": "o-2", "total": 7}),
    ]
    with HeadwaterServer(tmp_path, extra_yaml=workspace(hook)) as server:
        send(server, messages)
        settle(server, "actions", 3, {"mapping": 2, "filter": 1})
    assert [request.json() for request in receiver.requests] == [
        {
            "kind": "order",
            "id": "order-1",
            "summary": "Order o-1 by ada for 42.5",
            "email": "ada@example.com",
            "coupon": "SPRING",
            "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}],
            "fixed": {"nested": {"a": [1, 2]}, "plain": True},
        },
        {"kind": "profile", "user": "bob", "plan": "pro"},
        {
            # No email: the @if's else; no coupon: the key is left out; no products: no lines.
            "kind": "order",
            "id": "order-2",
            "summary": "Order o-2 by cy for 7",
            "email": "unknown",
            "fixed": {"nested": {"a": [1, 2]}, "plain": True},
        },
    ]


def verify_signature(request: Any, secret: bytes) -> None:
    timestamp = request.headers["X-Headwater-Timestamp"]
    expected = hmac.new(secret, timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Headwater-Signature"] == f"sha256={expected}"


def test_a_real_sdk_through_headwater_to_webhooks(tmp_path: Path, receiver: Receiver) -> None:
    hooks = workspace(
        destination("single", at(receiver, "single"), settings={"secret": "s3cret"}),
        destination("batched", at(receiver, "batched"), settings={"batch_size": 10, "secret": "other"}),
    )
    with HeadwaterServer(tmp_path, extra_yaml=hooks) as server:
        client = Client(server.write_key, host=server.url, sync_mode=True, max_retries=0)
        sent = send_all(client)
        stored = server.wait_for_events(len(sent))
        settle(server, "single", len(sent), {})
        settle(server, "batched", len(sent), {})
    sent_ids = sorted(message["messageId"] for message in sent)
    single, batched = delivered_at(receiver, "single"), delivered_at(receiver, "batched")
    # Exactly the SDK's messageIds, once each (users travel in separate lanes, so sort).
    assert sorted(ids(single)) == sent_ids
    assert sorted(ids(batched)) == sent_ids
    # What the webhooks got is what Headwater stored: the SDK's message, enriched.
    by_id = {m["messageId"]: m for m in stored}
    assert {m["messageId"]: m for m in single} == by_id
    assert {m["messageId"]: m for m in batched} == by_id
    assert sorted(m["type"] for m in single) == ["alias", "group", "identify", "track"]
    assert all(m["context"]["library"]["name"] == "analytics-python" for m in single)
    for request in receiver.requests:
        verify_signature(request, b"s3cret" if request.path == "/single" else b"other")


def test_destinations_cli_list_test_and_status(tmp_path: Path, receiver: Receiver) -> None:
    refusing = Receiver(answer=lambda _: 400).start()
    try:
        hooks = workspace(
            destination("good", receiver.url, filters=[{"if": 'event = "Debug"', "drop": True}]),
            destination("bad", refusing.url),
        )
        with HeadwaterServer(tmp_path, extra_yaml=hooks) as server:
            send(server, [event("one"), event("two"), event("debug", "Debug")])
            settle(server, "good", 2, {"filter": 1})
            wait_until(lambda: overview(server, "bad")["dead_letters"] == 3)

            listed = cli(server, "destinations", "list")
            assert listed.returncode == 0, listed.stderr
            assert "2 destination(s)" in listed.stdout
            rows = [line for line in listed.stdout.splitlines() if "webhook" in line]
            assert len(rows) == 2 and "good" in rows[0] and "bad" in rows[1], listed.stdout

            tested = cli(server, "destinations", "test", "good")
            assert tested.returncode == 0, tested.stdout + tested.stderr
            assert "Delivered" in tested.stdout
            (test_event,) = receiver.delivered()[2:]
            assert test_event["event"] == "Headwater Test Event"
            assert test_event["messageId"].startswith("headwater-test-")

            refused = cli(server, "destinations", "test", "bad")
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert "refused" in refused.stdout and "HTTP 400" in refused.stdout

            unknown = cli(server, "destinations", "test", "nowhere")
            assert unknown.returncode == 2
            assert "no destination named 'nowhere'" in unknown.stderr

            status = cli(server, "destinations", "status", "--json")
            assert status.returncode == 0, status.stderr
            table = cli(server, "destinations", "status")
            assert table.returncode == 0, table.stderr
    finally:
        refusing.stop()
    documents = {d["name"]: d for d in (json.loads(line) for line in status.stdout.splitlines() if line)}
    assert set(documents) == {"good", "bad"}
    good, bad = documents["good"], documents["bad"]
    # A test event is not a delivery of the log's events: the counters are untouched.
    assert (good["delivered"], good["filtered"], good["dead_letters"], good["lag"]) == (
        2,
        {"filter": 1},
        0,
        0,
    )
    assert (bad["delivered"], bad["dead_letters"], bad["retrying"], bad["lag"]) == (0, 3, 0, 0)
    assert bad["recent_errors"] and bad["recent_errors"][0]["reason"].startswith("HTTP 400")
    assert good["p50_ms"] is not None and good["p95_ms"] >= good["p50_ms"]
    assert "HTTP 400" in table.stdout and "good" in table.stdout
