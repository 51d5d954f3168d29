"""Prometheus metrics of the node-manager (one registry per app, so tests can build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "lingua_node_events_total", "Node events consumed", ["kind", "outcome"], registry=r
        )
        self.heartbeats = Counter(
            "lingua_heartbeats_applied_total",
            "Heartbeats applied by outcome",
            ["outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "lingua_heartbeat_batch_size",
            "Heartbeats per applied batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.apply_lag = Histogram(
            "lingua_heartbeat_apply_lag_seconds",
            "Heartbeat received at gateway -> applied",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.swept = Counter("lingua_nodes_swept_total", "Expired nodes cleaned", registry=r)
        self.expiry_hold = Gauge(
            "lingua_node_expiry_hold_seconds",
            "How far behind the clock the last sweep judged expiries: the gateways' heartbeat "
            "watermark (beats applied up to then) plus a margin; grows while beats lag",
            registry=r,
        )
        self.expiries_held = Gauge(
            "lingua_node_expiries_held",
            "Nodes past their expiry by the clock that the last sweep held, since beats read "
            "by their gateway before the expiry may not be applied yet",
            registry=r,
        )
        self.reconciled = Counter(
            "lingua_reconcile_fixes_total",
            "Display-view entries fixed by reconciliation",
            ["fix"],
            registry=r,
        )
        self.reregister = Counter(
            "lingua_reregister_requests_total", "node_control reregister sent", registry=r
        )
        self.reregister_suppressed = Counter(
            "lingua_reregister_suppressed_total",
            "reregister not sent: the same connection was asked within the window",
            registry=r,
        )
