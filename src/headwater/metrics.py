"""Prometheus metrics, served at /metrics. Each process registers its own collectors."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from headwater.log import EventLog

disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "headwater_http_requests",
            "Tracking API requests by route kind and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.messages = Counter(
            "headwater_messages",
            "Messages by outcome: accepted (stored), duplicate (dropped by messageId),"
            " quarantined (kept with a reason)",
            ["outcome"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "headwater_rejected",
            "Rejected requests and quarantined messages, by reason code",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "headwater_request_seconds",
            "Time from request start to response, durable commit included",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )

    def watch_log(self, log: EventLog) -> None:
        self.registry.register(_LogCollector(log))


class _LogCollector(Collector):
    def __init__(self, log: EventLog) -> None:
        self.log = log

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.log.stats()
        yield GaugeMetricFamily("headwater_log_events", "Events held in the log", stats.events)
        yield GaugeMetricFamily("headwater_log_bytes", "Size of the log on disk", stats.bytes_on_disk)
        yield GaugeMetricFamily(
            "headwater_log_pending_messages",
            "Messages waiting for the next durable commit",
            self.log.pending_messages(),
        )
        lag = GaugeMetricFamily(
            "headwater_log_consumer_lag", "Events behind the head of the log", labels=["consumer"]
        )
        for consumer, position in stats.consumer_positions.items():
            lag.add_metric([consumer], stats.last_position - position)
        yield lag
