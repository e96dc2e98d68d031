"""Open an event log by URL; each backend lives in its own module."""

from __future__ import annotations

from collections.abc import Callable

from headwater.log.base import (
    AppendResult,
    EventLog,
    EventQuery,
    EventRecord,
    LogStats,
    LogUnavailable,
    QuarantineRecord,
    StoredEvent,
    StoredQuarantine,
)
from headwater.settings import Settings

__all__ = [
    "AppendResult",
    "EventLog",
    "EventQuery",
    "EventRecord",
    "LogStats",
    "LogUnavailable",
    "QuarantineRecord",
    "StoredEvent",
    "StoredQuarantine",
    "open_log",
]


def _open_sqlite(settings: Settings) -> EventLog:
    from headwater.log.sqlite import SqliteLog

    collect = settings.workspace.collect
    window = collect.dedupe_window_seconds if collect.dedupe else 0.0
    return SqliteLog.from_url(settings.log_url, settings.workspace.log, dedupe_window_seconds=window)


BACKENDS: dict[str, Callable[[Settings], EventLog]] = {"sqlite": _open_sqlite}


def open_log(settings: Settings) -> EventLog:
    """The backend named by the scheme of `settings.log_url`."""
    scheme = settings.log_url.split("://", 1)[0]
    try:
        backend = BACKENDS[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in BACKENDS)
        raise ValueError(f"log url {settings.log_url!r}: unknown scheme; use one of {known}") from None
    return backend(settings)
