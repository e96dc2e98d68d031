"""Read a request body within a size limit, gzip included, and parse it as JSON."""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from headwater.collect.errors import ApiError
from headwater.types import Receive


async def read_body(receive: Receive, limit: int, encoding: bytes | None, subject: str) -> bytes:
    """The (decompressed) body; a 400 `{subject}_too_large` once it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise ApiError(400, "client_disconnected", "the client went away mid-request")
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit and encoding is None:
            raise _too_large(subject, limit)
        chunks.append(chunk)
        more = event.get("more_body", False)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if encoding is None or encoding in (b"identity", b""):
        return body
    if encoding in (b"gzip", b"x-gzip", b"deflate"):
        return _decompress(body, limit, encoding, subject)
    raise ApiError(
        415,
        "unsupported_encoding",
        f"Content-Encoding {encoding.decode(errors='replace')!r} is not supported; send gzip or none",
    )


def _decompress(body: bytes, limit: int, encoding: bytes, subject: str) -> bytes:
    window = 16 + zlib.MAX_WBITS if encoding != b"deflate" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(window)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise ApiError(
            400, "invalid_encoding", f"the body is not valid {encoding.decode()}: {error}"
        ) from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise _too_large(subject, limit)
    if not inflater.eof:
        raise ApiError(400, "invalid_encoding", f"the {encoding.decode()} body is truncated")
    return data


def _too_large(subject: str, limit: int) -> ApiError:
    return ApiError(400, f"{subject}_too_large", f"the {subject} is over the {limit // 1024} KB limit")


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
