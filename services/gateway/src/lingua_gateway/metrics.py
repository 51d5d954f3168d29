"""Prometheus metrics of the gateway (one registry per gateway instance)."""

from __future__ import annotations

from typing import Any

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
        self._messages_in: dict[tuple[str, str], Any] = {}
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
        self.heartbeat_flow_wait = Histogram(
            "lingua_gateway_heartbeat_flow_wait_seconds",
            "How long a heartbeat batch waited for node-manager to apply earlier ones",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
            registry=r,
        )
        self.heartbeat_flow_timeouts = Counter(
            "lingua_gateway_heartbeat_flow_timeouts_total",
            "Heartbeat batches sent without node-manager's applied mark after the wait",
            registry=r,
        )
        self.session_fallbacks = Counter(
            "lingua_gateway_session_fallbacks_total",
            "Sessions placed in another cell than their region's (the cell fallback ladder)",
            ["home", "cell"],
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
        # -- client sessions and the job path ------------------------------------------------
        self.sessions = Gauge(
            "lingua_gateway_sessions", "Client sessions open on this replica", registry=r
        )
        self.utterances = Counter(
            "lingua_gateway_utterances_total",
            "Utterances published as job requests, by why they ended "
            "(final, max_duration, max_bytes, buffer_full, whole = an `utterance` message)",
            ["cut"],
            registry=r,
        )
        self.audio_refused_draining = Counter(
            "lingua_gateway_audio_refused_draining_total",
            "Audio frames and utterances not taken because this replica is draining",
            registry=r,
        )
        self.utterances_empty = Counter(
            "lingua_gateway_empty_utterances_total",
            "is_final with no audio buffered: not a job, no index consumed",
            registry=r,
        )
        self.utterances_silent = Counter(
            "lingua_gateway_silent_utterances_total",
            "Utterances of digital silence: answered missing_result (silence), no job",
            registry=r,
        )
        self.registrations_waiting = Counter(
            "lingua_gateway_registrations_waiting_total",
            "Registrations held until the node's ASR and Semantic are ready",
            registry=r,
        )
        self.registrations_slow = Counter(
            "lingua_gateway_registrations_slow_total",
            "Registrations not confirmed within LINGUA_REGISTER_TIMEOUT_S (the node keeps waiting)",
            registry=r,
        )
        self.registrations_queued = Gauge(
            "lingua_gateway_registrations_queued",
            "Registrations waiting for a slot (LINGUA_REGISTER_MAX_INFLIGHT on the bus at once)",
            registry=r,
        )
        self.reregistrations = Counter(
            "lingua_gateway_reregistrations_total",
            "Nodes registered again by the gateway after Redis lost their record",
            registry=r,
        )
        self.capability_changes = Counter(
            "lingua_gateway_capability_changes_total",
            "Heartbeats whose capabilities changed the node's language sets, services or readiness",
            ["change"],
            registry=r,
        )
        self.utterance_seconds = Histogram(
            "lingua_gateway_utterance_audio_seconds",
            "Audio duration of published utterances (`utterance` messages excluded)",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60),
            registry=r,
        )
        self.session_delivered = Counter(
            "lingua_gateway_session_messages_delivered_total",
            "Messages from the dispatcher sent to a client, ordered or not",
            ["ordered"],
            registry=r,
        )
        self.session_dropped = Counter(
            "lingua_gateway_session_messages_dropped_total",
            "Messages for a client not sent: not_held (no such session/connection here), "
            "duplicate (index already sent), late (index skipped by a reorder release)",
            ["reason"],
            registry=r,
        )
        self.reorder_releases = Counter(
            "lingua_gateway_reorder_releases_total",
            "Times a session's waiting answers were released past a missing index",
            registry=r,
        )
        self.reorder_skipped = Counter(
            "lingua_gateway_reorder_skipped_indices_total",
            "Utterance indices skipped by reorder releases (never answered to the client)",
            registry=r,
        )
        self.node_job_events = Counter(
            "lingua_gateway_node_job_events_total",
            "Job messages from nodes published to the dispatcher, by type",
            ["type"],
            registry=r,
        )
        self.session_store_errors = Counter(
            "lingua_gateway_session_store_errors_total",
            "Redis failures on the session record, by operation",
            ["op"],
            registry=r,
        )
        self.access_refused = Counter(
            "lingua_gateway_access_refused_total",
            "Connections refused at the handshake, by endpoint and reason "
            "(origin, unauthorized, identity_limit, identity_mismatch)",
            ["endpoint", "reason"],
            registry=r,
        )
        self.gc_pause = Histogram(
            "lingua_gateway_gc_pause_seconds",
            "Full (generation 2) garbage-collector passes: the event loop stands still",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.throttled_seconds = Counter(
            "lingua_gateway_throttled_seconds_total",
            "Time reads were paused because a connection exceeded its byte rate",
            ["endpoint"],
            registry=r,
        )

    def message_in(self, endpoint: str, mtype: str) -> Any:
        """The ``messages_in`` child of one (endpoint, type), looked up once and then kept.

        ``labels()`` checks and joins the labels under a lock on every call: at 10,000
        heartbeats a second that was several per cent of the gateway's CPU. Types are those
        of validated messages (plus ``invalid``), so the cache stays small."""
        child = self._messages_in.get((endpoint, mtype))
        if child is None:
            child = self._messages_in[(endpoint, mtype)] = self.messages_in.labels(endpoint, mtype)
        return child
