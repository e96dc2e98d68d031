"""The processing pipeline: stages that pass, change or divert each event, in order.

Privacy (suppression, consent, PII), tracking plans and profiles plug in here as stages.
A stage returns the message (the same one, or a changed copy) or `Diverted(reason)`;
the first diversion ends the pipeline for that event, and the router counts it under
the stage's reason. Stages never mutate the message they are given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Diverted:
    reason: str


class Stage(Protocol):
    name: str

    def process(self, source: str, message: Mapping[str, Any]) -> Mapping[str, Any] | Diverted: ...


class Pipeline:
    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.stages = tuple(stages)

    def run(self, source: str, message: Mapping[str, Any]) -> Mapping[str, Any] | Diverted:
        for stage in self.stages:
            result = stage.process(source, message)
            if isinstance(result, Diverted):
                return result
            message = result
        return message


def default_stages() -> list[Stage]:
    """The stages a workspace runs; later issues add privacy, tracking plans and profiles."""
    return []
