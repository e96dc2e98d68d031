"""The destination interface: declare settings, deliver a batch, say what happened to each event.

A destination never retries by itself and never decides about ordering: it reports an
outcome per event and the router (`headwater.deliver`) does the rest — backoff, per-user
order, dead letters, statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


class SettingsError(ValueError):
    """A destination's settings cannot be used; the message says which one and why."""


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Retry:
    """Try again later: after `after` seconds if the destination said so (Retry-After)."""

    reason: str
    after: float | None = None


@dataclass(frozen=True)
class Failed:
    """The destination refused the event for good (a 4xx, say): it goes to dead letters."""

    reason: str


Outcome = Delivered | Retry | Failed
DELIVERED = Delivered()


class Destination(Protocol):
    """One configured destination. `deliver` gets at most `max_batch` events."""

    kind: ClassVar[str]
    max_batch: int
    # How long events may gather in the log before a delivery (0: at once). A warehouse
    # loads in micro-batches: every `linger_seconds` or `max_batch` events, whichever first.
    linger_seconds: float
    # At most this many deliveries at once; None leaves it to the `max_in_flight` setting.
    max_lanes: int | None
    # Whether `deliver` takes events as their JSON (bytes) too: the router then hands over
    # the stored JSON of events that routing passes on unchanged, without parsing it.
    takes_json: bool

    async def deliver(self, events: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> list[Outcome]:
        """One outcome per event, in the same order; `sources[i]` is the slug of the source
        that sent `events[i]`."""
        ...

    async def open(self) -> None:
        """Get ready while nothing is waiting yet (a warehouse starts its loader process);
        must not wait for it."""
        ...

    async def prefetch(self, events: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> None:
        """A hint, while a delivery is under way: these are likely the next to deliver (a
        warehouse computes their rows meanwhile). Deliveries never depend on it."""
        ...

    async def close(self) -> None: ...
