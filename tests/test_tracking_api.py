"""The Tracking API over real HTTP: every route, auth form, body form and error path."""

from __future__ import annotations

import base64
import gzip
import uuid
from typing import Any

import httpx
import orjson
import pytest

from tests.support import HeadwaterServer

KEY = "test-write-key"


def basic(key: str, colon: bool = True) -> dict[str, str]:
    token = base64.b64encode(f"{key}{':' if colon else ''}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def track(event: str = "Order Completed", **fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": "user-1",
        "event": event,
        "messageId": str(uuid.uuid4()),
        **fields,
    }


def post(server: HeadwaterServer, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(f"{server.url}{path}", content=content, timeout=10, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/track", "track"),
        ("/v1/t", "track"),
        ("/v1/identify", "identify"),
        ("/v1/i", "identify"),
        ("/v1/page", "page"),
        ("/v1/p", "page"),
        ("/v1/screen", "screen"),
        ("/v1/s", "screen"),
        ("/v1/group", "group"),
        ("/v1/g", "group"),
        ("/v1/alias", "alias"),
        ("/v1/a", "alias"),
    ],
)
def test_single_message_routes_store_the_type_of_the_path(
    server: HeadwaterServer, path: str, kind: str
) -> None:
    message = {
        "userId": "u-1",
        "event": "Clicked",
        "groupId": "g-1",
        "previousId": "anon-1",
        "messageId": f"m-{kind}-{path}",
        "writeKey": KEY,
    }
    response = post(server, path, message, headers={"Content-Type": "text/plain"})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    (stored,) = server.events()
    assert stored["type"] == kind
    assert stored["messageId"] == f"m-{kind}-{path}"
    assert "writeKey" not in stored


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b", "/v1/import"])
def test_batch_routes_merge_batch_context_and_integrations(server: HeadwaterServer, path: str) -> None:
    own = track(context={"locale": "fr-FR"}, integrations={"Mixpanel": False})
    other = track(event="Viewed")
    body = {
        "batch": [own, other],
        "writeKey": KEY,
        "context": {"locale": "en-US", "app": {"name": "shop"}},
        "integrations": {"All": True, "Mixpanel": True},
    }
    assert post(server, path, body).json() == {"success": True}
    first, second = server.events()
    assert first["context"] == {"locale": "fr-FR", "app": {"name": "shop"}}
    assert first["integrations"] == {"All": True, "Mixpanel": False}
    assert second["context"] == {"locale": "en-US", "app": {"name": "shop"}}


def test_every_auth_form_is_accepted(server: HeadwaterServer) -> None:
    forms = [
        ({}, {"writeKey": KEY}),
        (basic(KEY), {}),
        (basic(KEY, colon=False), {}),
        ({"Authorization": "Bearer some-oauth-token"}, {"writeKey": KEY}),
    ]
    for headers, extra in forms:
        response = post(server, "/v1/batch", {"batch": [track()], **extra}, headers=headers)
        assert response.status_code == 200, (headers, response.text)
    per_message_key = {"batch": [{**track(), "writeKey": KEY}]}
    assert post(server, "/v1/batch", per_message_key).status_code == 200
    assert len(server.events()) == 5


def test_gzip_bodies_and_explicit_nulls(server: HeadwaterServer) -> None:
    message = track(anonymousId=None, properties={"category": None})
    body = gzip.compress(orjson.dumps({"batch": [message], "writeKey": KEY}))
    response = post(server, "/v1/batch", body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200
    (stored,) = server.events()
    assert stored["messageId"] == message["messageId"]
    assert stored["properties"] == {"category": None}


def test_unknown_and_missing_write_keys_get_401(server: HeadwaterServer) -> None:
    assert_error(
        post(server, "/v1/batch", {"batch": [track()], "writeKey": "nope"}), 401, "invalid_write_key"
    )
    assert_error(post(server, "/v1/batch", {"batch": [track()]}), 401, "missing_write_key")
    assert_error(post(server, "/v1/t", track(), headers=basic("nope")), 401, "invalid_write_key")
    assert server.events() == []


def test_invalid_json_gets_400(server: HeadwaterServer) -> None:
    assert_error(post(server, "/v1/batch", b'{"batch": [', headers=basic(KEY)), 400, "invalid_json")
    assert_error(post(server, "/v1/track", b"", headers=basic(KEY)), 400, "invalid_json")
    broken_gzip = b"\x1f\x8b\x08\x00garbage"
    response = post(server, "/v1/batch", broken_gzip, headers={**basic(KEY), "Content-Encoding": "gzip"})
    assert_error(response, 400, "invalid_encoding")


def test_oversize_single_message_gets_400(server: HeadwaterServer) -> None:
    message = track(properties={"blob": "x" * 33_000}, writeKey=KEY)
    assert_error(post(server, "/v1/track", message), 400, "message_too_large")
    assert server.events() == []


def test_oversize_message_in_a_batch_is_quarantined_and_the_rest_kept(
    server: HeadwaterServer,
) -> None:
    big = track(properties={"blob": "x" * 40_000})
    small = track()
    response = post(server, "/v1/batch", {"batch": [big, small], "writeKey": KEY})
    assert response.json() == {"success": True}
    assert [event["messageId"] for event in server.events()] == [small["messageId"]]
    (held,) = server.quarantined()
    assert held["reason"].startswith("message_too_large")
    assert held["message"]["messageId"] == big["messageId"]


def test_oversize_batch_and_too_many_messages_get_400(server: HeadwaterServer) -> None:
    huge = {"batch": [track(properties={"blob": "y" * 20_000}) for _ in range(30)], "writeKey": KEY}
    assert_error(post(server, "/v1/batch", huge), 400, "batch_too_large")
    many = {"batch": [{"type": "track", "userId": "u", "event": "e"}] * 2501, "writeKey": KEY}
    assert_error(post(server, "/v1/batch", many), 400, "too_many_messages")
    gzipped_bomb = gzip.compress(orjson.dumps({"batch": [track(properties={"p": "z" * 600_000})]}))
    response = post(server, "/v1/batch", gzipped_bomb, headers={**basic(KEY), "Content-Encoding": "gzip"})
    assert_error(response, 400, "batch_too_large")
    assert server.events() == []


@pytest.mark.parametrize(
    ("broken", "code"),
    [
        ({"type": "track", "event": "No One"}, "missing_id"),
        ({"type": "track", "userId": "u-1"}, "missing_event"),
        ({"type": "track", "userId": "u-1", "event": ""}, "missing_event"),
        ({"type": "alias", "userId": "u-1"}, "missing_id"),
        ({"type": "group", "userId": "u-1"}, "missing_id"),
        ({"type": "launch", "userId": "u-1"}, "invalid_type"),
        ({"type": "track", "userId": "u-1", "event": "e", "properties": [1]}, "invalid_field"),
        ({"type": "identify", "userId": True}, "invalid_field"),
        ({"type": "identify", "userId": "u", "timestamp": "yesterday"}, "invalid_timestamp"),
        ("just a string", "invalid_message"),
    ],
)
def test_invalid_messages_in_a_batch_are_quarantined_and_valid_ones_kept(
    server: HeadwaterServer, broken: Any, code: str
) -> None:
    before, after = track(event="Before"), track(event="After")
    response = post(server, "/v1/batch", {"batch": [before, broken, after], "writeKey": KEY})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert [event["event"] for event in server.events()] == ["Before", "After"]
    (held,) = server.quarantined()
    assert held["reason"].split(":")[0] == code
    assert held["message"] == broken
    assert held["source"] == "test_source"


@pytest.mark.parametrize(
    ("path", "broken", "code"),
    [
        ("/v1/track", {"event": "No One"}, "missing_id"),
        ("/v1/t", {"userId": "u-1"}, "missing_event"),
        ("/v1/alias", {"previousId": "a"}, "missing_id"),
    ],
)
def test_invalid_single_message_gets_400_and_is_still_kept(
    server: HeadwaterServer, path: str, broken: dict[str, Any], code: str
) -> None:
    assert_error(post(server, path, {**broken, "writeKey": KEY}), 400, code)
    (held,) = server.quarantined()
    assert held["reason"].split(":")[0] == code


def test_cors_preflight_and_headers(server: HeadwaterServer) -> None:
    origin = {"Origin": "https://shop.example"}
    for path in ("/v1/t", "/v1/batch", f"/v1/projects/{KEY}/settings"):
        preflight = httpx.options(
            f"{server.url}{path}",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code in (200, 204)
        assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        for header in ("content-type", "authorization", "x-retry-count"):
            assert header in allowed
    response = post(server, "/v1/t", {**track(), "writeKey": KEY}, headers=origin)
    assert response.headers["access-control-allow-origin"] == "https://shop.example"
    assert "retry-after" in response.headers["access-control-expose-headers"].lower()


def test_browser_settings_and_telemetry(server: HeadwaterServer) -> None:
    settings = httpx.get(f"{server.url}/v1/projects/{KEY}/settings")
    assert settings.status_code == 200
    segment = settings.json()["integrations"]
    assert list(segment) == ["Segment.io"]
    assert segment["Segment.io"]["apiKey"] == KEY
    assert segment["Segment.io"]["apiHost"] == f"127.0.0.1:{server.port}/v1"
    assert_error(httpx.get(f"{server.url}/v1/projects/unknown/settings"), 404, "unknown_write_key")
    telemetry = post(server, "/v1/m", {"series": [{"type": "Counter", "metric": "x", "value": 1}]})
    assert telemetry.status_code == 200
    assert server.events() == []


def test_unknown_path_and_wrong_method(server: HeadwaterServer) -> None:
    assert_error(post(server, "/v1/nothing", {}), 404, "not_found")
    assert_error(httpx.get(f"{server.url}/v1/track"), 405, "method_not_allowed")


def test_numeric_ids_are_kept_as_strings(server: HeadwaterServer) -> None:
    message = {"type": "identify", "userId": 42, "messageId": 7, "traits": {"n": 1}}
    assert post(server, "/v1/batch", {"batch": [message], "writeKey": KEY}).status_code == 200
    (stored,) = server.events()
    assert stored["userId"] == "42"
    assert stored["messageId"] == "7"
