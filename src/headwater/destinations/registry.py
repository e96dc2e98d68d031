"""Destination kinds by the `type:` name used in headwater.yaml."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from headwater.destinations.base import Destination, SettingsError
from headwater.destinations.webhook import WebhookDestination

KINDS: dict[str, Callable[[str, Mapping[str, Any]], Destination]] = {
    WebhookDestination.kind: WebhookDestination,
}


def build(kind: str, name: str, settings: Mapping[str, Any]) -> Destination:
    try:
        factory = KINDS[kind]
    except KeyError:
        raise SettingsError(
            f"destination {name!r}: unknown type {kind!r}; available: {', '.join(sorted(KINDS))}"
        ) from None
    return factory(name, settings)
