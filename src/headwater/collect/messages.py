"""Check and enrich one Segment message: the per-message work of the collector, kept lean.

A message passes when it has the fields its type needs with the right JSON types. It is
then enriched as Segment's API does: `receivedAt`, `originalTimestamp`, a clock-skew
corrected `timestamp`, a `messageId` when missing, `context.ip` for client-side traffic,
and the batch's `context` / `integrations` merged underneath its own.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from typing import Any

import orjson

from headwater.log import EventRecord
from headwater.units import epoch_micros

MESSAGE_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
SHORT_TYPES = {
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
TEXT_FIELDS = ("name", "category")
MAX_MESSAGE_ID = 100
# A batch message is measured after enrichment; this covers the fields the server adds.
ENRICHMENT_ALLOWANCE = 1024
CLIENT_SIDE_LIBRARIES = (
    "analytics.js",
    "analytics-next",
    "analytics-ios",
    "analytics-android",
    "analytics-kotlin",
    "analytics-swift",
    "analytics-react-native",
    "analytics-flutter",
)

_EPOCH = datetime(1970, 1, 1)


class InvalidMessage(Exception):
    """A message the collector will not accept; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Arrival:
    """What the server knows about the request that carried a message."""

    source: str
    received_at_us: int
    ip: str
    sent_at: Any = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None

    @property
    def received_at_ms(self) -> int:
        return self.received_at_us // 1000

    @cached_property
    def received_at(self) -> str:
        return format_time(self.received_at_us)

    @cached_property
    def sent_at_us(self) -> int | None:
        """The batch's `sentAt`, parsed once for all its messages."""
        return None if self.sent_at is None else parse_time(self.sent_at, "sentAt")


def now_us() -> int:
    """The server clock in epoch microseconds, at millisecond precision like Segment's."""
    return time.time_ns() // 1_000_000 * 1000


def parse_time(value: Any, field: str) -> int:
    """Epoch microseconds of an ISO-8601 timestamp; naive times are taken as UTC."""
    if not isinstance(value, str):
        raise InvalidMessage("invalid_timestamp", f"`{field}` must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidMessage(
            "invalid_timestamp", f"`{field}` is not an ISO-8601 timestamp: {value[:40]!r}"
        ) from None
    return epoch_micros(parsed)


def format_time(epoch_us: int) -> str:
    """`2026-11-29T01:43:09.123Z`, with microseconds only when they are not zero."""
    seconds, micros = divmod(epoch_us, 1_000_000)
    if micros % 1000:
        return f"{_second(seconds)}.{micros:06d}Z"
    return f"{_second(seconds)}.{micros // 1000:03d}Z"


@lru_cache(maxsize=4096)
def _second(epoch_seconds: int) -> str:
    """`2026-11-29T01:43:09`; the messages of a batch mostly share a handful of seconds."""
    return (_EPOCH + timedelta(seconds=epoch_seconds)).isoformat()


def _identifier(message: dict[str, Any], field: str) -> str | None:
    value = message.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise InvalidMessage("invalid_field", f"`{field}` must be a string or a number")


def enrich(message: Any, arrival: Arrival, type_from_path: str | None = None) -> EventRecord:
    """Check `message` and return the log record for it, or raise InvalidMessage.

    Every check runs before the first change, so a rejected message is kept as it came.
    """
    if not isinstance(message, dict):
        raise InvalidMessage("invalid_message", "each message must be a JSON object")
    kind = type_from_path or message.get("type")
    if kind not in MESSAGE_TYPES:
        raise InvalidMessage(
            "invalid_type",
            "`type` must be one of track, identify, page, screen, group, alias",
        )
    user_id, anonymous_id = _check_ids(message, kind)
    _check_shapes(message)
    message_id = _message_id(message)
    timestamp = _corrected_time(message, arrival)

    if type_from_path is not None:
        message["type"] = type_from_path
    for field, value in (("userId", user_id), ("anonymousId", anonymous_id)):
        if value is not None and not isinstance(message[field], str):
            message[field] = value
    message["messageId"] = message_id
    message.pop("writeKey", None)
    _merge_batch_fields(message, arrival)
    message["receivedAt"] = arrival.received_at
    client_time = message.get("timestamp") or message.get("originalTimestamp")
    if client_time is not None:
        message["originalTimestamp"] = client_time
        if message.get("sentAt") is None and arrival.sent_at is not None:
            message["sentAt"] = arrival.sent_at
    message["timestamp"] = timestamp
    _add_ip(message, arrival)
    return EventRecord(
        arrival.source,
        message_id,
        kind,
        user_id,
        anonymous_id,
        arrival.received_at_ms,
        orjson.dumps(message),
    )


def _check_ids(message: dict[str, Any], kind: str) -> tuple[str | None, str | None]:
    user_id = _identifier(message, "userId")
    anonymous_id = _identifier(message, "anonymousId")
    if kind == "alias":
        if _identifier(message, "previousId") is None or user_id is None:
            raise InvalidMessage("missing_id", "an alias needs both `previousId` and `userId`")
    elif user_id is None and anonymous_id is None:
        raise InvalidMessage("missing_id", "a message needs a `userId` or an `anonymousId`")
    if kind == "track":
        event = message.get("event")
        if not isinstance(event, str) or not event.strip():
            raise InvalidMessage("missing_event", "a track message needs an `event` name")
    elif kind == "group" and _identifier(message, "groupId") is None:
        raise InvalidMessage("missing_id", "a group message needs a `groupId`")
    return user_id, anonymous_id


def _check_shapes(message: dict[str, Any]) -> None:
    for field in OBJECT_FIELDS:
        value = message.get(field)
        if value is not None and not isinstance(value, dict):
            raise InvalidMessage("invalid_field", f"`{field}` must be a JSON object")
    for field in TEXT_FIELDS:
        value = message.get(field)
        if value is not None and not isinstance(value, str):
            raise InvalidMessage("invalid_field", f"`{field}` must be a string")


def _message_id(message: dict[str, Any]) -> str:
    message_id = message.get("messageId")
    if message_id is None or message_id == "":
        return str(uuid.uuid4())
    if isinstance(message_id, int) and not isinstance(message_id, bool):
        return str(message_id)
    if not isinstance(message_id, str):
        raise InvalidMessage("invalid_field", "`messageId` must be a string")
    if len(message_id) > MAX_MESSAGE_ID:
        raise InvalidMessage("invalid_field", f"`messageId` is over {MAX_MESSAGE_ID} characters")
    return message_id


def _merge_batch_fields(message: dict[str, Any], arrival: Arrival) -> None:
    if arrival.context:
        own = message.get("context")
        message["context"] = {**arrival.context, **own} if own else dict(arrival.context)
    if arrival.integrations:
        own = message.get("integrations")
        message["integrations"] = {**arrival.integrations, **own} if own else dict(arrival.integrations)


def _corrected_time(message: dict[str, Any], arrival: Arrival) -> str:
    """timestamp = receivedAt - (sentAt - originalTimestamp): the client's clock skew removed.

    No client timestamp means receivedAt; no sentAt means the client's time, uncorrected.
    """
    client_time = message.get("timestamp") or message.get("originalTimestamp")
    if client_time is None:
        return arrival.received_at
    original = parse_time(client_time, "timestamp")
    own_sent_at = message.get("sentAt")
    sent_at_us = arrival.sent_at_us if own_sent_at is None else parse_time(own_sent_at, "sentAt")
    if sent_at_us is None:
        return format_time(original)
    return format_time(arrival.received_at_us - (sent_at_us - original))


def _add_ip(message: dict[str, Any], arrival: Arrival) -> None:
    context = message.get("context")
    if context is None or "ip" in context:
        return
    library = context.get("library")
    name = library.get("name") if isinstance(library, dict) else None
    client_side = isinstance(name, str) and name.startswith(CLIENT_SIDE_LIBRARIES)
    if client_side or context.get("direct") is True:
        context["ip"] = arrival.ip


def quarantine_payload(message: Any) -> bytes:
    return orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)
