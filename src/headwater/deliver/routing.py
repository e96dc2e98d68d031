"""Which events a destination gets, and in what shape: sources, the message's
`integrations` object, destination filters, then mappings (the first whose trigger matches)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from headwater.deliver.conditions import Condition, compile_condition
from headwater.deliver.filters import DestinationFilters, compile_filters
from headwater.deliver.mapping import Mapper, compile_mapping
from headwater.settings import DestinationConfig

# Why an event did not go to a destination; these name the "filtered" counters.
NOT_FOR_SOURCE = "source"
INTEGRATIONS = "integrations"
NO_ACTION = "mapping"


@dataclass(frozen=True)
class Routed:
    """The payload to deliver, or None with the reason it was filtered."""

    payload: Mapping[str, Any] | None
    reason: str | None = None


@dataclass(frozen=True)
class _Action:
    trigger: Condition | None
    mapper: Mapper


class Routing:
    def __init__(self, config: DestinationConfig) -> None:
        self.name = config.name
        self.sources = frozenset(config.sources)
        self.filters: DestinationFilters = compile_filters(config.filters)
        self.actions = [
            _Action(
                compile_condition(action.trigger) if action.trigger.strip() else None,
                compile_mapping(action.mapping),
            )
            for action in config.mappings
        ]

    def route(self, source: str, message: Mapping[str, Any]) -> Routed:
        if self.sources and source not in self.sources:
            return Routed(None, NOT_FOR_SOURCE)
        if not self._enabled_by_integrations(message.get("integrations")):
            return Routed(None, INTEGRATIONS)
        outcome = self.filters.apply(message)
        if outcome.event is None:
            return Routed(None, outcome.reason)
        if not self.actions:
            return Routed(outcome.event)
        for action in self.actions:
            if action.trigger is None or action.trigger(outcome.event):
                return Routed(action.mapper(outcome.event))
        return Routed(None, NO_ACTION)

    def _enabled_by_integrations(self, integrations: Any) -> bool:
        """Segment's rule: the destination's own key wins, else `All`, else enabled."""
        if not isinstance(integrations, Mapping):
            return True
        if self.name in integrations:
            return integrations[self.name] is not False
        return integrations.get("All", True) is not False
