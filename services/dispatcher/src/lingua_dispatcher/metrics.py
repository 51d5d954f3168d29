"""Prometheus metrics of the dispatcher (one registry per app, so tests can build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, instance_id: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.info = Info("lingua_dispatcher", "Dispatcher instance", registry=r)
        self.info.info({"instance_id": instance_id})
        self.jobs = Counter("lingua_jobs_total", "Jobs by outcome", ["outcome"], registry=r)
        self.duplicates = Counter(
            "lingua_job_duplicates_total", "Job requests that were duplicates (J2)", registry=r
        )
        self.dispatch_latency = Histogram(
            "lingua_dispatch_latency_seconds",
            "Utterance end at the gateway -> job_assign published",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.roundtrip = Histogram(
            "lingua_roundtrip_latency_seconds",
            "Utterance end at the gateway -> its result published to the session's gateway",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redispatch = Counter(
            "lingua_job_redispatch_total", "Attempts taken back, by reason", ["reason"], registry=r
        )
        self.assign_publish_failed = Counter(
            "lingua_assign_publish_failed_total",
            "job_assign publishes that failed (broker down, gateway queue gone); tried again "
            "while the reservation holds",
            registry=r,
        )
        self.redispatch_skipped = Counter(
            "lingua_job_redispatch_skipped_total",
            "Node disconnections whose jobs were kept: a draining gateway's 1012",
            registry=r,
        )
        self.no_node = Counter(
            "lingua_no_available_node_total",
            "Selections that found no node",
            ["reason"],
            registry=r,
        )
        self.stale = Counter(
            "lingua_stale_node_messages_total",
            "Node job messages dropped: stale attempt, wrong node, unknown job",
            ["type", "why"],
            registry=r,
        )
        self.errors = Counter(
            "lingua_job_errors_total",
            "Utterances that failed (missing_result + ui_event), by code",
            ["code"],
            registry=r,
        )
        self.cancels = Counter(
            "lingua_job_cancels_total",
            "job_cancel sent to a node whose job was taken back, by reason",
            ["reason"],
            registry=r,
        )
        self.no_result = Counter(
            "lingua_jobs_without_result_total",
            "Jobs a node finished without a result (it answered a later job of the session)",
            registry=r,
        )
        self.cooldowns = Counter(
            "lingua_service_cooldowns_total", "MODEL_NOT_AVAILABLE reports applied", registry=r
        )
        self.delivery_dropped = Counter(
            "lingua_deliveries_dropped_total",
            "Client answers whose publish failed (gateway gone, bus down); they stay in the "
            "session's outbox and are published again",
            registry=r,
        )
        self.outbox_republished = Counter(
            "lingua_outbox_republished_total",
            "Answers published again: unacknowledged by a gateway after LINGUA_OUTBOX_RETRY_MS, "
            "or released by a replayed job_finish",
            registry=r,
        )
