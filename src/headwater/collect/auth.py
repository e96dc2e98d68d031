"""Find a request's write key in any of the forms Segment's clients send."""

from __future__ import annotations

import binascii
from base64 import b64decode
from typing import Any


def write_key_from_header(authorization: bytes | None) -> str | None:
    """`Basic base64("<writeKey>:")`, with or without the colon. Bearer tokens carry no key."""
    if not authorization or authorization[:6].lower() != b"basic ":
        return None
    try:
        decoded = b64decode(authorization[6:].strip(), validate=False).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    key = decoded.split(":", 1)[0]
    return key or None


def write_key_from_body(body: Any) -> str | None:
    """`writeKey` at the top of a message or batch, else on the batch's first message."""
    if not isinstance(body, dict):
        return None
    key = body.get("writeKey")
    if isinstance(key, str) and key:
        return key
    batch = body.get("batch")
    if isinstance(batch, list) and batch and isinstance(batch[0], dict):
        first = batch[0].get("writeKey")
        if isinstance(first, str) and first:
            return first
    return None
