"""Prometheus metrics of the stats service (one registry per app, so tests can build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reads = Counter(
            "lingua_stats_reads_total",
            "Live views read from Redis",
            ["view", "outcome"],
            registry=r,
        )
        self.read_seconds = Histogram(
            "lingua_stats_read_seconds",
            "Time to read one live view from Redis",
            ["view"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.snapshot_builds = Counter(
            "lingua_stats_snapshot_builds_total",
            "Background snapshot builds by outcome (an error keeps the last good one)",
            ["outcome"],
            registry=r,
        )
        self.snapshot_build_seconds = Histogram(
            "lingua_stats_snapshot_build_seconds",
            "Time to build one dashboard snapshot from Redis",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.invalid_records = Gauge(
            "lingua_stats_invalid_records",
            "Records the last snapshot build skipped as malformed (kind: nodes, pool_shards, "
            "counters)",
            ["kind"],
            registry=r,
        )
