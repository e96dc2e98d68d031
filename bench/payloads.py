"""Realistic Segment traffic with a unique messageId in every message.

A request body is built from a *template*: the serialized body cut at each place a
messageId goes. The load generators (wrk's Lua and `loadgen.py`) glue the pieces back
together with fresh ids, so every message of a run is distinct (Headwater dedupes on
messageId) while the bytes stay realistic: track events with properties, and a context
like analytics.js and analytics-python send (library, page, userAgent, ip, locale,
campaign, ...). A message serializes to roughly 700 bytes.

The ids are 36 characters, shaped like a uuid: `{run:8}-{thread:4}-{slot:4}-8000-{n:12}`,
where `run` is a random prefix per load-generator process, `thread` the wrk thread (or 0),
`slot` the message's place in its batch and `n` the request counter of that thread.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

PLACEHOLDER = "@@MESSAGE_ID@@"
ID_LENGTH = 36  # length of the ids the generators put in place of PLACEHOLDER

EVENTS: list[tuple[str, dict[str, Any]]] = [
    (
        "Product Viewed",
        {
            "product_id": "507f1f77bcf86cd799439011",
            "sku": "G-32",
            "category": "Games",
            "name": "Monopoly: 3rd Edition",
            "price": 18.99,
            "currency": "USD",
        },
    ),
    (
        "Product Added",
        {
            "cart_id": "skdjsidjsdkdj29j",
            "product_id": "507f1f77bcf86cd799439011",
            "sku": "G-32",
            "category": "Games",
            "name": "Monopoly: 3rd Edition",
            "price": 18.99,
            "quantity": 1,
            "coupon": "MAYDEALS",
        },
    ),
    (
        "Order Completed",
        {
            "order_id": "50314b8e9bcf000000000000",
            "total": 27.5,
            "revenue": 25.0,
            "shipping": 3.0,
            "tax": 2.0,
            "discount": 2.5,
            "coupon": "hasbros",
            "currency": "USD",
            "products": [{"product_id": "507f1f77bcf86cd799439011", "quantity": 1}],
        },
    ),
    (
        "Signed Up",
        {"plan": "Pro Annual", "method": "google", "referrer": "newsletter", "trial": True},
    ),
    (
        "Video Playback Started",
        {
            "content_asset_id": "0129370",
            "position": 0,
            "total_length": 392,
            "video_player": "youtube",
            "full_screen": False,
        },
    ),
]

USER_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
]

PAGES = [
    ("/products/monopoly-3rd-edition", "Monopoly: 3rd Edition | Example Shop", "?ref=home"),
    ("/cart", "Your cart | Example Shop", ""),
    ("/checkout/complete", "Thank you! | Example Shop", "?order=50314b8e"),
    ("/pricing", "Pricing | Example", "?utm_source=newsletter&utm_medium=email"),
]


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track_message(rng: random.Random, now: datetime, *, browser: bool) -> dict[str, Any]:
    """One track message, messageId left as PLACEHOLDER."""
    event, properties = rng.choice(EVENTS)
    path, title, search = rng.choice(PAGES)
    user = rng.randrange(100_000)
    when = now - timedelta(milliseconds=rng.randrange(5_000))
    context: dict[str, Any] = {
        "library": (
            {"name": "analytics.js", "version": "next-1.70.0"}
            if browser
            else {"name": "analytics-python", "version": "2.3.2"}
        ),
        "page": {
            "path": path,
            "search": search,
            "title": title,
            "url": f"https://shop.example.com{path}{search}",
        },
        "userAgent": rng.choice(USER_AGENTS),
        "ip": f"203.0.113.{rng.randrange(1, 255)}",
        "locale": "en-US",
    }
    message: dict[str, Any] = {
        "type": "track",
        "event": event,
        "userId": f"user_{user:06d}",
        "anonymousId": f"{rng.getrandbits(128):032x}",
        "messageId": PLACEHOLDER,
        "timestamp": _iso(when),
        "properties": properties,
        "context": context,
    }
    return message


@dataclass(frozen=True)
class Workload:
    """What one load generator sends: a path, headers and body templates."""

    path: str
    headers: dict[str, str]
    ids_per_request: int
    templates: list[list[str]]  # each: ids_per_request + 1 pieces of the body

    @property
    def body_bytes(self) -> int:
        pieces = self.templates[0]
        return sum(len(piece.encode()) for piece in pieces) + ID_LENGTH * self.ids_per_request

    @property
    def message_bytes(self) -> float:
        """Average serialized size of one message inside the body."""
        return self.body_bytes / self.ids_per_request

    def write_lua(self, path: Path) -> Path:
        """A Lua chunk returning this workload, for `wrk.lua` to `dofile`."""

        def quote(text: str) -> str:
            return json.dumps(text)  # a JSON string literal is a valid Lua string literal here

        lines = ["return {", f"  path = {quote(self.path)},", "  headers = {"]
        lines += [f"    [{quote(k)}] = {quote(v)}," for k, v in self.headers.items()]
        lines += ["  },", f"  ids_per_request = {self.ids_per_request},", "  templates = {"]
        for pieces in self.templates:
            lines.append("    {" + ", ".join(quote(p) for p in pieces) + "},")
        lines += ["  },", "}"]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def write_json(self, path: Path) -> Path:
        path.write_bytes(
            orjson.dumps(
                {
                    "path": self.path,
                    "headers": self.headers,
                    "ids_per_request": self.ids_per_request,
                    "templates": self.templates,
                }
            )
        )
        return path


def _split(body: bytes, expected: int) -> list[str]:
    pieces = body.decode().split(PLACEHOLDER)
    assert len(pieces) == expected + 1, "a property value contains the placeholder"
    return pieces


def batch_workload(write_key: str, batch_size: int = 100, variants: int = 8, seed: int = 7) -> Workload:
    """`POST /v1/batch` the way analytics-python sends it: writeKey in the body."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    templates = []
    for _ in range(variants):
        body = {
            "batch": [track_message(rng, now, browser=False) for _ in range(batch_size)],
            "sentAt": _iso(now),
            "writeKey": write_key,
        }
        templates.append(_split(orjson.dumps(body), batch_size))
    return Workload(
        path="/v1/batch",
        headers={"Content-Type": "application/json"},
        ids_per_request=batch_size,
        templates=templates,
    )


def single_workload(write_key: str, variants: int = 64, seed: int = 11) -> Workload:
    """`POST /v1/t` the way analytics.js (analytics-next) sends it: text/plain, writeKey inside."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    templates = []
    for _ in range(variants):
        message = track_message(rng, now, browser=True)
        message.update(
            {
                "writeKey": write_key,
                "sentAt": _iso(now),
                "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
            }
        )
        templates.append(_split(orjson.dumps(message), 1))
    return Workload(
        path="/v1/t",
        headers={"Content-Type": "text/plain"},
        ids_per_request=1,
        templates=templates,
    )


def make_id(run: str, thread: int, slot: int, counter: int) -> str:
    """The same id shape as wrk.lua builds (see module docstring)."""
    return f"{run}-{thread:04x}-{slot:04x}-8000-{counter:012x}"


# -- a mix of message types (bench/warehouse.py) --------------------------------------------

PLANS = ["Free", "Pro Monthly", "Pro Annual", "Enterprise"]
FIRST_NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John"]
LAST_NAMES = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus"]


def _context(rng: random.Random, path: str, title: str, search: str) -> dict[str, Any]:
    return {
        "library": {"name": "analytics-python", "version": "2.3.2"},
        "page": {
            "path": path,
            "search": search,
            "title": title,
            "url": f"https://shop.example.com{path}{search}",
        },
        "userAgent": rng.choice(USER_AGENTS),
        "ip": f"203.0.113.{rng.randrange(1, 255)}",
        "locale": "en-US",
    }


def identify_message(rng: random.Random, now: datetime, users: int = 100_000) -> dict[str, Any]:
    """One identify message with ~10 traits (one nested object, one date), messageId left as
    PLACEHOLDER."""
    user = rng.randrange(users)
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    path, title, search = rng.choice(PAGES)
    return {
        "type": "identify",
        "userId": f"user_{user:06d}",
        "anonymousId": f"{rng.getrandbits(128):032x}",
        "messageId": PLACEHOLDER,
        "timestamp": _iso(now - timedelta(milliseconds=rng.randrange(5_000))),
        "traits": {
            "email": f"{first.lower()}.{last.lower()}.{user}@example.com",
            "name": f"{first} {last}",
            "first_name": first,
            "last_name": last,
            "plan": rng.choice(PLANS),
            "logins": rng.randrange(1, 500),
            "created_at": _iso(now - timedelta(days=rng.randrange(1, 900))),
            "company": {"name": "Example Corp", "employees": rng.choice([12, 140, 3200])},
            "newsletter": rng.random() < 0.4,
        },
        "context": _context(rng, path, title, search),
    }


def page_message(rng: random.Random, now: datetime) -> dict[str, Any]:
    """One page message (name, category, the page's properties), messageId left as PLACEHOLDER."""
    path, title, search = rng.choice(PAGES)
    return {
        "type": "page",
        "name": title.split(" | ")[0],
        "category": "Shop",
        "userId": f"user_{rng.randrange(100_000):06d}",
        "anonymousId": f"{rng.getrandbits(128):032x}",
        "messageId": PLACEHOLDER,
        "timestamp": _iso(now - timedelta(milliseconds=rng.randrange(5_000))),
        "properties": {
            "path": path,
            "referrer": "https://www.google.com/",
            "search": search,
            "title": title,
            "url": f"https://shop.example.com{path}{search}",
        },
        "context": _context(rng, path, title, search),
    }


def mixed_workload(
    write_key: str,
    batch_size: int = 100,
    variants: int = 64,
    seed: int = 13,
    identify_share: float = 0.1,
    page_share: float = 0.1,
) -> Workload:
    """`POST /v1/batch` (writeKey in the body) with mostly track events of EVENTS' five names,
    and `identify_share` identifies and `page_share` pages mixed in."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    templates = []
    for _ in range(variants):
        batch = []
        for _ in range(batch_size):
            pick = rng.random()
            if pick < identify_share:
                batch.append(identify_message(rng, now))
            elif pick < identify_share + page_share:
                batch.append(page_message(rng, now))
            else:
                batch.append(track_message(rng, now, browser=False))
        body = {"batch": batch, "sentAt": _iso(now), "writeKey": write_key}
        templates.append(_split(orjson.dumps(body), batch_size))
    return Workload(
        path="/v1/batch",
        headers={"Content-Type": "application/json"},
        ids_per_request=batch_size,
        templates=templates,
    )
