"""Webhook: POST each event (or a batch of them) as JSON to a URL, signed with HMAC.

Settings:
  url                      where to POST (http or https)
  batch_size               1 posts one message per request; more posts {"batch": [...]}
  headers                  extra request headers
  secret                   signs each body: X-Headwater-Signature: sha256=HMAC(secret, "<t>.<body>")
                           with t in X-Headwater-Timestamp (unix seconds)
  timeout                  per request, e.g. 10s
  allow_private_addresses  by default loopback and private addresses are refused (SSRF guard)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import orjson

from headwater.destinations.base import DELIVERED, Failed, Outcome, Retry, SettingsError
from headwater.units import parse_duration

SIGNATURE_HEADER = "X-Headwater-Signature"
TIMESTAMP_HEADER = "X-Headwater-Timestamp"
RESOLVE_CACHE_SECONDS = 60.0
RETRY_STATUSES = frozenset({408, 429})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature a receiver recomputes to check that Headwater sent `body`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


class WebhookDestination:
    kind: ClassVar[str] = "webhook"
    linger_seconds = 0.0
    max_lanes: int | None = None
    takes_json: bool = False

    def __init__(self, name: str, settings: Mapping[str, Any], data_dir: Path | None = None) -> None:
        known = {"url", "batch_size", "headers", "secret", "timeout", "allow_private_addresses"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise SettingsError(f"webhook {name!r}: unknown setting {unknown[0]!r}; known: {sorted(known)}")
        url = settings.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise SettingsError(f"webhook {name!r}: `url` must be an http:// or https:// URL")
        batch_size = settings.get("batch_size", 1)
        if not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
            raise SettingsError(f"webhook {name!r}: `batch_size` must be a whole number from 1 to 10000")
        headers = settings.get("headers", {})
        if not isinstance(headers, Mapping) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in headers.items()
        ):
            raise SettingsError(f"webhook {name!r}: `headers` must map header names to strings")
        secret = settings.get("secret")
        if secret is not None and not isinstance(secret, str):
            raise SettingsError(f"webhook {name!r}: `secret` must be a string")
        try:
            timeout = parse_duration(settings.get("timeout", "10s"))
        except ValueError as error:
            raise SettingsError(f"webhook {name!r}: `timeout`: {error}") from None
        self.name = name
        self.url = url
        self.host = urlsplit(url).hostname or ""
        self.port = urlsplit(url).port or (443 if url.startswith("https") else 80)
        self.max_batch = batch_size
        self.headers = {"Content-Type": "application/json", "User-Agent": "Headwater", **headers}
        self.secret = secret
        self.allow_private = bool(settings.get("allow_private_addresses", False))
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._checked_until = 0.0
        self._refusal: str | None = None

    async def deliver(
        self, events: Sequence[Mapping[str, Any]], sources: Sequence[str] = ()
    ) -> list[Outcome]:
        refusal = await self._address_check()
        if refusal is not None:
            return [refusal] * len(events)
        body = orjson.dumps(events[0] if self.max_batch == 1 else {"batch": list(events)})
        outcome = await self._post(body)
        return [outcome] * len(events)

    async def _post(self, body: bytes) -> Outcome:
        headers = dict(self.headers)
        if self.secret:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return Retry(f"no answer from {self.host} within the timeout")
        except httpx.TransportError as error:
            return Retry(f"cannot reach {self.host}: {error.__class__.__name__}: {error}")
        status = response.status_code
        if 200 <= status < 300:
            return DELIVERED
        reason = f"HTTP {status}: {response.text[:300]}"
        if status >= 500 or status in RETRY_STATUSES:
            return Retry(reason, _retry_after(response.headers.get("retry-after")))
        return Failed(reason)

    async def _address_check(self) -> Outcome | None:
        """Refuse loopback, private and link-local targets unless allowed (checked once a minute)."""
        if self.allow_private:
            return None
        now = time.monotonic()
        if now < self._checked_until:
            return None if self._refusal is None else Failed(self._refusal)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(self.host, self.port)
        except OSError as error:
            return Retry(f"cannot resolve {self.host}: {error}")
        self._refusal = None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global:
                self._refusal = (
                    f"{self.host} resolves to {address}, a non-public address; set"
                    " allow_private_addresses: true to deliver there"
                )
                break
        self._checked_until = now + RESOLVE_CACHE_SECONDS
        return None if self._refusal is None else Failed(self._refusal)

    async def open(self) -> None:
        """Nothing to start: the HTTP client opens with the first delivery."""

    async def prefetch(self, events: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> None:
        """Nothing to do ahead: each delivery is one request."""

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
