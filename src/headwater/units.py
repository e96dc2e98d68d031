"""Human-friendly durations ("24h") and sizes ("256MB") used in the workspace file, and
moments as the epoch microseconds the log and the warehouses compare."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive time is taken as UTC."""
    return (moment - (_EPOCH if moment.tzinfo is None else _EPOCH_UTC)) // _MICROSECOND


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`: a number of seconds, or text such as "90s", "15m", "24h", "30d"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m, 24h or 30d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration; write it as 30s, 15m, 24h or 30d")
    return float(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def parse_size(value: str | int) -> int:
    """Bytes in `value`: a number of bytes, or text such as "512KB", "1GB", "2GiB"."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MB or 2GB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size; write it as 512KB, 256MB or 2GB")
    unit = (match.group(2) or "").lower()
    binary = "i" in unit
    prefix = unit[:1] if unit not in ("b", "") else ""
    factor = 1024 ** " kmgt".index(prefix) if binary else _SIZE_FACTORS[prefix]
    return int(float(match.group(1)) * factor)
