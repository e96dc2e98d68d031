"""The webhook destination on its own: outcomes by status, signatures, the SSRF guard, settings."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterator
from typing import Any

import pytest

from headwater.destinations.base import Delivered, Failed, Retry, SettingsError
from headwater.destinations.webhook import WebhookDestination, sign
from tests.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def deliver(settings: dict[str, Any], events: list[dict[str, Any]]) -> list[Any]:
    async def run() -> list[Any]:
        destination = WebhookDestination("hook", settings)
        try:
            return await destination.deliver(events)
        finally:
            await destination.close()

    return asyncio.run(run())


def test_loopback_is_refused_unless_allowed(receiver: Receiver) -> None:
    (refused,) = deliver({"url": receiver.url}, [{"type": "track"}])
    assert isinstance(refused, Failed)
    assert "allow_private_addresses" in refused.reason
    assert receiver.requests == []
    (delivered,) = deliver({"url": receiver.url, "allow_private_addresses": True}, [{"type": "track"}])
    assert isinstance(delivered, Delivered)
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, Delivered),
        (204, Delivered),
        (400, Failed),
        (404, Failed),
        (408, Retry),
        (429, Retry),
        (500, Retry),
        (503, Retry),
    ],
)
def test_outcome_by_status(receiver: Receiver, status: int, kind: type) -> None:
    receiver.answer = lambda _: status
    outcomes = deliver(
        {"url": receiver.url, "allow_private_addresses": True, "batch_size": 10}, [{"n": 1}, {"n": 2}]
    )
    assert [type(outcome) for outcome in outcomes] == [kind, kind]
    assert receiver.requests[0].json() == {"batch": [{"n": 1}, {"n": 2}]}


def test_unreachable_host_is_retried() -> None:
    (outcome,) = deliver({"url": "http://127.0.0.1:9/hook", "allow_private_addresses": True}, [{}])
    assert isinstance(outcome, Retry)


def test_signature_and_custom_headers(receiver: Receiver) -> None:
    settings = {
        "url": receiver.url,
        "allow_private_addresses": True,
        "secret": "k",
        "headers": {"X-Team": "growth"},
    }
    deliver(settings, [{"messageId": "m-1"}])
    (request,) = receiver.requests
    timestamp = request.headers["X-Headwater-Timestamp"]
    expected = hmac.new(b"k", f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert (
        request.headers["X-Headwater-Signature"] == f"sha256={expected}" == sign("k", timestamp, request.body)
    )
    assert request.headers["X-Team"] == "growth"


@pytest.mark.parametrize(
    ("settings", "mentions"),
    [
        ({}, "url"),
        ({"url": "ftp://example.com"}, "url"),
        ({"url": "https://example.com", "batch_size": 0}, "batch_size"),
        ({"url": "https://example.com", "headers": {"X": 1}}, "headers"),
        ({"url": "https://example.com", "timeout": "soon"}, "timeout"),
        ({"url": "https://example.com", "colour": "red"}, "colour"),
    ],
)
def test_bad_settings_name_the_setting(settings: dict[str, Any], mentions: str) -> None:
    with pytest.raises(SettingsError, match=mentions):
        WebhookDestination("hook", settings)
