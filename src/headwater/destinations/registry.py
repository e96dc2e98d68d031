"""Destination kinds by the `type:` name used in headwater.yaml."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from headwater.destinations.base import Destination, SettingsError
from headwater.destinations.webhook import WebhookDestination
from headwater.warehouse.destination import WAREHOUSES
from headwater.warehouse.dlt import DltDestination

Factory = Callable[[str, Mapping[str, Any], Path | None], Destination]
KINDS: dict[str, Factory] = {
    WebhookDestination.kind: WebhookDestination,
    **{warehouse.kind: warehouse for warehouse in WAREHOUSES},
    DltDestination.kind: DltDestination,
}


def build(kind: str, name: str, settings: Mapping[str, Any], data_dir: Path | None = None) -> Destination:
    """A destination from its configuration; relative paths in its settings are in `data_dir`."""
    try:
        factory = KINDS[kind]
    except KeyError:
        raise SettingsError(
            f"destination {name!r}: unknown type {kind!r}; available: {', '.join(sorted(KINDS))}"
        ) from None
    return factory(name, settings, data_dir)
