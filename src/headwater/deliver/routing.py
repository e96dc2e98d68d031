"""Which events a destination gets, and in what shape: sources, the processing pipeline,
the message's `integrations` object, destination filters, then mappings (the first whose
trigger matches)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from headwater.deliver.conditions import Condition, compile_condition
from headwater.deliver.filters import DestinationFilters, compile_filters
from headwater.deliver.mapping import Mapper, compile_mapping
from headwater.process.pipeline import Diverted, Pipeline, default_stages
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


def rules_for_source(rules: Sequence[Mapping[str, Any]], source: str | None) -> list[dict[str, Any]]:
    """The filter rules for events of `source` (every rule when None), without the `source:` key."""
    chosen = []
    for rule in rules:
        only = rule.get("source")
        if source is None or only is None or only == source:
            chosen.append({key: value for key, value in rule.items() if key != "source"})
    return chosen


class Routing:
    def __init__(self, config: DestinationConfig, pipeline: Pipeline | None = None) -> None:
        self.name = config.name
        self.pipeline = pipeline or Pipeline(default_stages())
        self.sources = frozenset(config.sources)
        self.rules = config.filters
        self.filters_by_source: dict[str, DestinationFilters] = {}
        self.actions = [
            _Action(
                compile_condition(action.trigger) if action.trigger.strip() else None,
                compile_mapping(action.mapping),
            )
            for action in config.mappings
        ]

    @property
    def passes_through(self) -> bool:
        """Whether every event goes on unchanged unless its `integrations` object says no."""
        return not (self.pipeline.stages or self.sources or self.rules or self.actions)

    def route(self, source: str, message: Mapping[str, Any]) -> Routed:
        if self.sources and source not in self.sources:
            return Routed(None, NOT_FOR_SOURCE)
        processed = self.pipeline.run(source, message)
        if isinstance(processed, Diverted):
            return Routed(None, processed.reason)
        message = processed
        if not self._enabled_by_integrations(message.get("integrations")):
            return Routed(None, INTEGRATIONS)
        outcome = self._filters_for(source).apply(message)
        if outcome.event is None:
            return Routed(None, outcome.reason)
        if not self.actions:
            return Routed(outcome.event)
        for action in self.actions:
            if action.trigger is None or action.trigger(outcome.event):
                return Routed(action.mapper(outcome.event))
        return Routed(None, NO_ACTION)

    def _filters_for(self, source: str) -> DestinationFilters:
        """Filters belong to a source → destination pair: rules without `source:` apply to all."""
        filters = self.filters_by_source.get(source)
        if filters is None:
            filters = self.filters_by_source[source] = compile_filters(rules_for_source(self.rules, source))
        return filters

    def _enabled_by_integrations(self, integrations: Any) -> bool:
        """Segment's rule: the destination's own key wins, else `All`, else enabled."""
        if not isinstance(integrations, Mapping):
            return True
        if self.name in integrations:
            return integrations[self.name] is not False
        return integrations.get("All", True) is not False
