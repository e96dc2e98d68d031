"""The processing pipeline between the log and the destinations: pass, change, divert."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from headwater.deliver.routing import Routing
from headwater.process.pipeline import Diverted, Pipeline
from headwater.settings import DestinationConfig


class AddPlan:
    name = "add_plan"

    def process(self, source: str, message: Mapping[str, Any]) -> Mapping[str, Any] | Diverted:
        return {**message, "properties": {**message.get("properties", {}), "plan": f"{source}-pro"}}


class BlockTests:
    name = "block_tests"

    def process(self, source: str, message: Mapping[str, Any]) -> Mapping[str, Any] | Diverted:
        return Diverted("tracking_plan") if message.get("event") == "Test" else message


def config(**fields: Any) -> DestinationConfig:
    base = {"name": "hook", "type": "webhook", "settings": {"url": "https://example.com/hook"}}
    return msgspec.convert({**base, **fields}, DestinationConfig)


def test_stages_change_then_divert_in_order() -> None:
    pipeline = Pipeline([AddPlan(), BlockTests()])
    original = {"type": "track", "event": "Signed Up", "properties": {"a": 1}}
    changed = pipeline.run("web", original)
    assert changed == {"type": "track", "event": "Signed Up", "properties": {"a": 1, "plan": "web-pro"}}
    assert original == {"type": "track", "event": "Signed Up", "properties": {"a": 1}}
    assert pipeline.run("web", {"type": "track", "event": "Test"}) == Diverted("tracking_plan")
    assert Pipeline().run("web", original) is original


def test_routing_runs_the_pipeline_before_filters_and_mappings() -> None:
    mapping = {"trigger": 'properties.plan = "web-pro"', "mapping": {"plan": {"@path": "$.properties.plan"}}}
    routing = Routing(config(mappings=[mapping]), Pipeline([AddPlan(), BlockTests()]))
    assert routing.route("web", {"type": "track", "event": "Signed Up"}).payload == {"plan": "web-pro"}
    diverted = routing.route("web", {"type": "track", "event": "Test"})
    assert diverted.payload is None
    assert diverted.reason == "tracking_plan"
    assert routing.route("app", {"type": "track", "event": "Signed Up"}).reason == "mapping"
