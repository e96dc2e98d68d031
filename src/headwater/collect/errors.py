"""Errors the Tracking API answers with: a status code and a JSON `{code, message}` body."""

from __future__ import annotations

import orjson


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps({"code": self.code, "message": self.message})
