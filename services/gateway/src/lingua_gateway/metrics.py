"""Prometheus metrics of the gateway (one registry per gateway instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "lingua_gateway_connections", "Open WebSocket connections", ["endpoint"], registry=r
        )
        self.messages_in = Counter(
            "lingua_gateway_messages_in_total",
            "Frames received by message type",
            ["endpoint", "type"],
            registry=r,
        )
        self.errors_sent = Counter(
            "lingua_gateway_errors_sent_total",
            "error messages sent, by code",
            ["endpoint", "code"],
            registry=r,
        )
        self.closes = Counter(
            "lingua_gateway_closes_total",
            "Connections closed, by close code and who closed",
            ["endpoint", "code", "graceful"],
            registry=r,
        )
        self.heartbeat_batches = Histogram(
            "lingua_gateway_heartbeat_batch_size",
            "Heartbeats per published batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
            registry=r,
        )
        self.publish_failures = Counter(
            "lingua_gateway_publish_failures_total", "Publishes that failed", ["kind"], registry=r
        )
        self.outbound_dropped = Counter(
            "lingua_gateway_slow_consumer_closes_total",
            "Connections closed because their outbound queue overflowed or a send timed out",
            ["endpoint"],
            registry=r,
        )
