"""The Segment Tracking API as a plain ASGI app: every path, auth form and error body.

Routes: `/v1/{track,identify,page,screen,group,alias}` and their browser short forms
`/v1/{t,i,p,s,g,a}` (one message), `/v1/{batch,b,import}` (a batch), `/v1/m` (browser
telemetry, ignored), and `/v1/projects/{writeKey}/settings` (browser settings).
A 200 `{"success": true}` is sent only after the log has committed the messages.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from headwater.collect.auth import write_key_from_body, write_key_from_header
from headwater.collect.body import parse_json, read_body
from headwater.collect.errors import ApiError
from headwater.collect.messages import (
    ENRICHMENT_ALLOWANCE,
    MESSAGE_TYPES,
    SHORT_TYPES,
    Arrival,
    InvalidMessage,
    enrich,
    now_us,
    quarantine_payload,
)
from headwater.control.readiness import Readiness
from headwater.log import EventLog, EventRecord, LogUnavailable, QuarantineRecord
from headwater.metrics import Metrics
from headwater.settings import Settings, SourceConfig
from headwater.types import Receive, Scope, Send

logger = logging.getLogger("headwater.collect")

SUCCESS = b'{"success":true}'
SINGLE_ROUTES = {**{kind: kind for kind in MESSAGE_TYPES}, **SHORT_TYPES}
BATCH_ROUTES = frozenset({"batch", "b", "import"})
CORS_ALLOW_HEADERS = b"Content-Type, Authorization, X-Retry-Count, Content-Encoding"


class TrackingAPI:
    def __init__(self, settings: Settings, log: EventLog, readiness: Readiness, metrics: Metrics) -> None:
        self.settings = settings
        self.log = log
        self.readiness = readiness
        self.metrics = metrics
        self.sources = settings.sources_by_write_key
        collect = settings.workspace.collect
        self.message_limit = collect.message_limit
        self.batch_limit = collect.batch_limit
        self.max_batch_messages = collect.max_batch_messages
        self.trust_forwarded_for = collect.trust_forwarded_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        route, name = _route(scope["path"])
        method = scope["method"]
        if method == "OPTIONS" and route != "unknown":
            await _respond(send, 204, b"", origin, preflight=True)
            return
        try:
            body = await self._handle(route, name, method, scope, headers, receive)
            status = 200
        except ApiError as error:
            status, body = error.status, error.body()
            self.metrics.rejected.labels(error.code).inc()
            logger.warning(
                "request rejected",
                extra={"code": error.code, "status": status, "path": scope["path"]},
            )
            await _respond(send, status, body, origin, extra_headers=error.headers)
        else:
            await _respond(send, status, body, origin)
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _handle(
        self,
        route: str,
        name: str,
        method: str,
        scope: Scope,
        headers: dict[bytes, bytes],
        receive: Receive,
    ) -> bytes:
        if route == "unknown":
            raise ApiError(404, "not_found", f"no such endpoint: {scope['path']}")
        if route == "settings":
            if method not in ("GET", "HEAD"):
                raise ApiError(405, "method_not_allowed", "use GET for settings")
            return self._browser_settings(name, headers, scope)
        if method != "POST":
            raise ApiError(405, "method_not_allowed", f"use POST for {scope['path']}")
        encoding = headers.get(b"content-encoding")
        if route == "telemetry":
            await read_body(receive, self.batch_limit, encoding, "batch")
            return SUCCESS
        if route == "batch":
            raw = await read_body(receive, self.batch_limit, encoding, "batch")
        else:
            raw = await read_body(receive, self.message_limit, encoding, "message")
        payload = parse_json(raw)
        source = self._authenticate(headers, payload)
        refusal = self.readiness.refusal()
        if refusal is not None:
            reset_at = int(time.time()) + refusal.retry_after_seconds
            raise ApiError(
                503,
                refusal.code,
                refusal.message,
                {
                    "Retry-After": str(refusal.retry_after_seconds),
                    "X-RateLimit-Reset": str(reset_at),
                },
            )
        ip = self._client_ip(scope, headers)
        rejection: ApiError | None = None
        if route == "batch":
            events, quarantined = self._batch_records(payload, source, ip)
        else:
            events, quarantined, rejection = self._single_records(payload, SINGLE_ROUTES[name], source, ip)
        # Free the parsed messages before waiting for the commit: with many requests in
        # flight, holding them costs more in allocator churn than the parsing itself.
        del payload, raw
        await self._append(events, quarantined)
        if rejection is not None:
            raise rejection
        return SUCCESS

    def _authenticate(self, headers: dict[bytes, bytes], payload: Any) -> SourceConfig:
        key = write_key_from_header(headers.get(b"authorization")) or write_key_from_body(payload)
        if key is None:
            raise ApiError(
                401,
                "missing_write_key",
                "send the source's write key as HTTP Basic auth (`writeKey:`) or as `writeKey` in the body",
            )
        source = self.sources.get(key)
        if source is None:
            raise ApiError(401, "invalid_write_key", "no source has this write key; check headwater.yaml")
        return source

    def _client_ip(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        if self.trust_forwarded_for:
            forwarded = headers.get(b"x-forwarded-for")
            if forwarded:
                return forwarded.split(b",", 1)[0].strip().decode()
        client = scope.get("client")
        return str(client[0]) if client else ""

    def _batch_records(
        self, payload: Any, source: SourceConfig, ip: str
    ) -> tuple[list[EventRecord], list[QuarantineRecord]]:
        if not isinstance(payload, dict) or not isinstance(payload.get("batch"), list):
            raise ApiError(400, "invalid_batch", 'a batch body is {"batch": [messages...]}')
        messages: list[Any] = payload["batch"]
        if len(messages) > self.max_batch_messages:
            raise ApiError(
                400,
                "too_many_messages",
                f"a batch holds at most {self.max_batch_messages} messages; this one has {len(messages)}",
            )
        context = payload.get("context")
        integrations = payload.get("integrations")
        arrival = Arrival(
            source=source.slug,
            received_at_us=now_us(),
            ip=ip,
            sent_at=payload.get("sentAt"),
            context=context if isinstance(context, dict) else None,
            integrations=integrations if isinstance(integrations, dict) else None,
        )
        limit = self.message_limit + ENRICHMENT_ALLOWANCE
        events: list[EventRecord] = []
        quarantined: list[QuarantineRecord] = []
        for message in messages:
            try:
                record = enrich(message, arrival)
                if len(record.payload) > limit:
                    raise InvalidMessage(
                        "message_too_large",
                        f"a message is at most {self.message_limit // 1024} KB",
                    )
                events.append(record)
            except InvalidMessage as invalid:
                quarantined.append(self._quarantine(message, invalid, arrival))
        return events, quarantined

    def _single_records(
        self, payload: Any, kind: str, source: SourceConfig, ip: str
    ) -> tuple[list[EventRecord], list[QuarantineRecord], ApiError | None]:
        """The record for one message; an invalid one is quarantined and answered with 400."""
        arrival = Arrival(source=source.slug, received_at_us=now_us(), ip=ip)
        try:
            return [enrich(payload, arrival, type_from_path=kind)], [], None
        except InvalidMessage as invalid:
            kept = [self._quarantine(payload, invalid, arrival)] if isinstance(payload, dict) else []
            return [], kept, ApiError(400, invalid.code, invalid.message)

    def _quarantine(self, message: Any, invalid: InvalidMessage, arrival: Arrival) -> QuarantineRecord:
        self.metrics.rejected.labels(invalid.code).inc()
        return QuarantineRecord(
            arrival.source,
            arrival.received_at_ms,
            f"{invalid.code}: {invalid.message}",
            quarantine_payload(message),
        )

    async def _append(self, events: list[EventRecord], quarantined: list[QuarantineRecord]) -> None:
        try:
            result = await self.log.append(events, quarantined)
        except LogUnavailable as error:
            self.readiness.write_failed(str(error))
            raise ApiError(503, "log_unavailable", str(error), {"Retry-After": "2"}) from None
        self.metrics.messages.labels("accepted").inc(result.stored)
        if result.duplicates:
            self.metrics.messages.labels("duplicate").inc(result.duplicates)
        if quarantined:
            self.metrics.messages.labels("quarantined").inc(len(quarantined))

    def _browser_settings(self, write_key: str, headers: dict[bytes, bytes], scope: Scope) -> bytes:
        if write_key not in self.sources:
            raise ApiError(404, "unknown_write_key", "no source has this write key")
        host = headers.get(b"host", b"").decode() or f"{self.settings.host}:{self.settings.port}"
        protocol = "https" if scope.get("scheme") == "https" else "http"
        return orjson.dumps(
            {
                "integrations": {
                    "Segment.io": {
                        "apiKey": write_key,
                        "apiHost": f"{host}/v1",
                        "protocol": protocol,
                    }
                },
                "metrics": {"sampleRate": 0},
                "remotePlugins": [],
                "plan": {},
                "enabledMiddleware": {},
                "middlewareSettings": {},
            }
        )


def _route(path: str) -> tuple[str, str]:
    """(route kind, the path's last meaningful part)."""
    parts = path.strip("/").split("/")
    if parts[0] == "v1":
        parts = parts[1:]
    if len(parts) == 1:
        name = parts[0]
        if name in SINGLE_ROUTES:
            return "single", name
        if name in BATCH_ROUTES:
            return "batch", name
        if name == "m":
            return "telemetry", name
    if len(parts) == 3 and parts[0] == "projects" and parts[2] == "settings":
        return "settings", parts[1]
    return "unknown", ""


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    origin: bytes | None,
    *,
    preflight: bool = False,
    extra_headers: dict[str, str] | None = None,
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"access-control-allow-origin", origin or b"*"),
        (b"access-control-expose-headers", b"Retry-After, X-RateLimit-Reset"),
    ]
    if origin:
        headers.append((b"vary", b"Origin"))
    if preflight:
        headers += [
            (b"access-control-allow-methods", b"POST, GET, OPTIONS"),
            (b"access-control-allow-headers", CORS_ALLOW_HEADERS),
            (b"access-control-max-age", b"86400"),
        ]
    for name, value in (extra_headers or {}).items():
        headers.append((name.lower().encode(), value.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
