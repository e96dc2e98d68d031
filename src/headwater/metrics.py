"""Prometheus metrics, served at /metrics. Each process registers its own collectors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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

    def watch_delivery(self, overview: Callable[[], list[dict[str, Any]]]) -> None:
        self.registry.register(_DeliveryCollector(overview))


class _DeliveryCollector(Collector):
    """Per destination: events by outcome (filtered by reason), queue sizes, latency, lag."""

    def __init__(self, overview: Callable[[], list[dict[str, Any]]]) -> None:
        self.overview = overview

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "headwater_delivery_events",
            "Events per destination by outcome: delivered, dead_lettered, retried, filtered_<reason>",
            labels=["destination", "outcome"],
        )
        retrying = GaugeMetricFamily(
            "headwater_delivery_retrying", "Events waiting in the retry queue", labels=["destination"]
        )
        dead = GaugeMetricFamily("headwater_delivery_dead_letters", "Dead letters", labels=["destination"])
        latency = GaugeMetricFamily(
            "headwater_delivery_latency_ms",
            "End-to-end latency (receivedAt to delivered) over recent events",
            labels=["destination", "quantile"],
        )
        lag = GaugeMetricFamily(
            "headwater_delivery_lag",
            "Events in the log not yet read by the destination",
            labels=["destination"],
        )
        for document in self.overview():
            name = document["name"]
            for outcome in ("delivered", "retried_attempts"):
                events.add_metric([name, outcome.removesuffix("_attempts")], document[outcome])
            events.add_metric([name, "dead_lettered"], document["dead_lettered"])
            for reason, count in document["filtered"].items():
                events.add_metric([name, f"filtered_{reason}"], count)
            retrying.add_metric([name], document["retrying"])
            dead.add_metric([name], document["dead_letters"])
            for quantile in ("p50", "p95"):
                if document[f"{quantile}_ms"] is not None:
                    latency.add_metric([name, quantile], document[f"{quantile}_ms"])
            if document["lag"] is not None:
                lag.add_metric([name], document["lag"])
        yield from (events, retrying, dead, latency, lag)


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
