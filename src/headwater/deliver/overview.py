"""The delivery overview, one dict per destination: what the API, the CLI and /metrics show."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headwater.deliver.store import DeliveryStore
from headwater.settings import DestinationConfig


def overview(store: DeliveryStore, configs: Sequence[DestinationConfig], head: int) -> list[dict[str, Any]]:
    documents = []
    for config in configs:
        status = store.status(config.name)
        filtered = {
            key.removeprefix("filtered_"): value
            for key, value in status.counters.items()
            if key.startswith("filtered_")
        }
        documents.append(
            {
                "name": config.name,
                "type": config.type,
                "enabled": config.enabled,
                "delivered": status.counters.get("delivered", 0),
                "retrying": status.retrying,
                "dead_letters": status.dead_letters,
                "retried_attempts": status.counters.get("retried", 0),
                "dead_lettered": status.counters.get("dead_lettered", 0),
                "filtered": filtered,
                "p50_ms": status.p50_ms,
                "p95_ms": status.p95_ms,
                "lag": None if status.position is None else max(0, head - status.position),
                "recent_errors": [{"at": at, "reason": reason} for at, reason in status.recent_errors],
            }
        )
    return documents
