"""Settings of every service (pydantic-settings, ``LINGUA_`` prefix).

One class with the settings all services share; each service reads the part it needs. Built
once in ``main()`` and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lingua_shared.cells import CellMap
from lingua_shared.protocol.codes import MAX_UTTERANCE_MS, SESSION_MAX_FRAME_BYTES

# how long a node's record outlives its logical expiry (lua/lib/common.lua, same name and
# value: services/node-manager/tests/test_expiry_hold.py checks they agree)
NODE_RECORD_GRACE_MS = 60_000


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINGUA_", extra="ignore")

    profile: str = Field("development", description="development | production")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = Field(
        False,
        description="LINGUA_REDIS_URL names a node of a Redis Cluster (database 0): use the "
        "cluster client",
    )
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    cell: str = Field(
        "main", description="the cell (Redis hash tag of its keys) when LINGUA_CELLS is unset"
    )
    cells: str = Field(
        "",
        description="region=cell entries (`*` for every other region): several scheduling "
        "cells, e.g. eu=eu,us=us,*=main (lingua_shared.cells)",
    )
    cell_fallback: str = Field(
        "",
        description="each cell's fallback ladder, cell>next>next entries (default: every "
        "other cell in LINGUA_CELLS order)",
    )
    gateway_region: str = Field(
        "", description="this gateway's region: the cell of sessions that name none"
    )
    bus_prefix: str = Field("lingua", description="prefix of every exchange and queue name")
    instance_id: str = Field(default_factory=_default_instance_id)
    log_level: str = "INFO"
    lua_dir: str | None = Field(None, description="directory of the .lua scripts")

    # HTTP (health, metrics) / WebSocket
    host: str = "127.0.0.1"
    port: int | None = Field(None, description="listen port; each service has its own default")

    # node lifecycle
    node_default_heartbeat_interval_ms: int = Field(
        15_000, description="assumed interval of nodes that do not announce one (lingua agents)"
    )
    node_ttl_intervals: float = Field(3.0, description="TTL = this many heartbeat intervals")
    node_min_ttl_ms: int = 3_000
    node_default_capacity: int = 4
    node_default_region: str = "default"
    node_default_gpu_tier: str = "default"
    pool_shard_size: int = Field(256, description="maximum members of one pool shard")
    sweep_interval_s: float = 1.0
    node_expiry_hold_max_ms: int = Field(
        30_000,
        ge=0,
        le=NODE_RECORD_GRACE_MS,
        description="the sweeper holds back expiries while gateways' heartbeats are applied "
        "late (a node whose beat may still be on its way is not expired), at most this long "
        "(0: never hold); a node's record outlives its expiry by NODE_RECORD_GRACE_MS",
    )
    reconcile_interval_s: float = Field(30.0, description="N7: display view vs Redis")
    gateway_liveness_ttl_ms: int = 10_000
    reregister_interval_ms: int = Field(
        5_000,
        description="node-manager asks one connection to re-register at most once this often",
        gt=0,
    )

    # gateway
    ws_max_frame_bytes: int = 1_048_576
    ws_ping_interval_s: float = 5.0
    ws_ping_timeout_s: float = 5.0
    ws_node_ping_interval_s: float = Field(
        20.0,
        description="keepalive pings on /ws/node: nodes prove liveness by heartbeats (their TTL "
        "ends a silent node's schedulability); pings only find half-open sockets",
        gt=0,
    )
    ws_node_ping_timeout_s: float = Field(
        15.0,
        description="how long a node's pong may take on /ws/node before the socket is closed "
        "(1011): a node on a busy host answers late, and its heartbeats, not its pongs, decide "
        "its liveness",
        gt=0,
    )
    ws_open_timeout_s: float = Field(
        30.0,
        description="how long a WebSocket opening handshake may take: a busy gateway must delay "
        "a connecting node, not drop it (lingua's agent retries a closed socket only once)",
        gt=0,
    )
    ws_send_timeout_s: float = 5.0
    ws_outbound_queue: int = 256
    heartbeat_batch_ms: int = Field(100, description="coalescing window for node heartbeats")
    heartbeat_batch_max: int = 2_000
    heartbeat_batches_in_flight: int = Field(
        2,
        ge=1,
        description="heartbeat batches a gateway keeps unapplied on the bus; beyond, beats "
        "coalesce at the gateway until node-manager catches up",
    )
    register_timeout_s: float = Field(
        5.0,
        description="a registration not confirmed in this time is logged as slow; the node keeps "
        "waiting (lingua's agent has no timeout and retries a closed socket only once)",
    )
    register_republish_s: float = Field(
        30.0, gt=0, description="a registration still unconfirmed is published again this often"
    )
    register_max_inflight: int = Field(
        200,
        gt=0,
        description="registrations a gateway has on the bus at once; the rest wait their turn "
        "(held, never refused), so a storm never buries heartbeat batches in node-manager's queue",
    )
    gateway_gc_freeze_interval_s: float = Field(
        1.0,
        description="gc.freeze() this often, so automatic collections skip long-lived "
        "connections (0 = the interpreter's defaults)",
        ge=0,
    )
    gateway_gc_full_interval_s: float = Field(
        600.0, description="one full collection (frozen objects included) this often", gt=0
    )
    drain_timeout_s: float = 10.0

    # sessions (gateway, client side)
    session_ttl_s: float = Field(600.0, description="session record TTL, refreshed on activity")
    session_touch_interval_s: float = Field(
        30.0,
        ge=0,
        description="activity refreshes a session record's TTL (600 s) at most this often (0: on "
        "every utterance and heartbeat); a round trip to Redis ahead of the utterance's publish",
    )
    max_utterance_ms: int = Field(
        MAX_UTTERANCE_MS, description="the gateway cuts an utterance this long"
    )
    max_utterance_bytes: int = Field(2_000_000, description="and one this large")
    session_buffer_bytes: int = Field(4_000_000, description="audio buffered per connection")
    ws_session_max_frame_bytes: int = SESSION_MAX_FRAME_BYTES
    result_delivery: str = Field(
        "arrival",
        description="how a session's answers reach its client unless its session_init says: "
        "arrival (each as soon as it is ready: lingua's first come, first served, what its web "
        "client expects) | ordered (strictly by utterance index)",
    )
    result_reorder_timeout_s: float = Field(
        1.0,
        description="gateway, ordered delivery: how long an answer waits for an earlier index "
        "that two dispatchers published in the other order",
    )
    skip_silence: bool = Field(
        True,
        description="an utterance of digital silence gets missing_result reason silence and "
        "costs no job",
    )
    silence_opus_max_packet_bytes: int = Field(
        12,
        ge=0,
        description="an Opus utterance is silence when no packet is longer than this",
    )

    # jobs (dispatcher)
    select_policy: str = Field("pack", description="pack (default) | spread (sessions over nodes)")
    ack_timeout_ms: int = Field(
        3_000, description="nodes that ack: job_assign -> job_ack, else taken back"
    )
    job_deadline_ms: int = Field(
        30_000,
        description="-> job_result, else taken back (job_cancel) and given to another node; from "
        "the ack for nodes that ack, from the assignment for the others (lingua's agent)",
    )
    max_attempts: int = Field(
        3, description="dispatch attempts before the utterance fails (missing_result + ui_event)"
    )
    no_node_wait_ms: int = Field(
        2_000, description="how long a job may wait for a free slot before NO_AVAILABLE_NODE"
    )
    gap_timeout_ms: int = Field(
        35_000, description="a missing result blocks later ones at most this long"
    )
    outbox_retry_ms: int = Field(
        5_000,
        description="an answer its gateway has not acknowledged (written to the client) this "
        "long after its publish is published again",
        gt=0,
    )
    model_cooldown_ms: int = Field(30_000, description="MODEL_NOT_AVAILABLE: skip the service")
    job_ttl_s: int = Field(
        600,
        description="job records and audio live this long; at least a job's whole life "
        "(max_attempts x (no_node_wait + ack_timeout + job_deadline + 1 s)), so no record "
        "expires while a lease or timer on it runs",
    )
    timer_interval_s: float = 0.05

    # stats (display only: nothing here is read by scheduling)
    stats_interval_s: float = Field(5.0, description="S1: snapshot rebuilt this often")
    stats_window_s: int = Field(60, description="rates and percentiles cover this recent past")
    stats_flush_s: float = Field(1.0, description="dispatcher: stats counters flushed this often")
    stats_node_list_max: int = Field(
        500, description="nodes listed in the snapshot (least healthy first; counts cover all)"
    )
    catalog_url: str | None = Field(None, description="S2: the model hub's service catalog")
    catalog_interval_s: float = 30.0
    catalog_timeout_s: float = 3.0

    # authentication and limits (docs/reliability.md)
    auth: str = Field(
        "auto",
        description="on | off | auto (on except in the development profile); off lets lingua "
        "nodes and web clients that send no credentials connect: only in a trusted network",
    )
    auth_algorithm: str = Field(
        "HS256", description="the only JWT algorithm accepted (never taken from the token)"
    )
    auth_secret: SecretStr | None = Field(None, description="HS* key (at least 32 bytes)")
    auth_public_key_file: str | None = Field(None, description="RS*/ES*/EdDSA: PEM public key")
    auth_client_max_ttl_s: int = Field(
        3_600, description="client tokens living longer than this (exp - iat) are refused"
    )
    auth_leeway_s: int = Field(5, description="clock skew allowed on exp / iat")
    ws_allowed_origins: str = Field(
        "",
        description="/ws/session Origin allowlist, comma-separated ('*' = any); empty: any in "
        "the development profile, none (only clients sending no Origin) otherwise",
    )
    ws_max_connections_per_identity: int = Field(
        8, description="connections one token subject may hold on one gateway replica"
    )
    ws_node_bytes_per_s: int = Field(
        8_000_000, description="per node connection; beyond it reads are throttled"
    )
    ws_session_bytes_per_s: int = Field(
        256_000, description="per client connection (16 kHz PCM16 is 32 kB/s of speech)"
    )
    ws_rate_burst_s: float = Field(2.0, description="a connection may burst this many seconds")
    redis_max_connections: int = Field(
        64, description="connections per process; beyond it commands wait for a free one"
    )
    redis_pool_timeout_s: float = Field(
        5.0, description="how long a command waits for a free connection before failing"
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        description="script calls are answered only once this many replicas hold their writes "
        "(Redis WAIT after each round trip): a failover then loses none of them; 0 = off",
    )
    redis_wait_timeout_ms: int = Field(
        500, gt=0, description="how long a round trip waits for them before it fails (retried)"
    )
    redis_allow_eviction: bool = Field(
        False, description="production starts only on a noeviction Redis unless this is set"
    )
    amqp_work_queue_max_length: int = Field(
        100_000, description="work queues refuse publishes beyond this (x-overflow reject-publish)"
    )

    # bus
    amqp_connect_timeout_s: float = 5.0
    amqp_heartbeat_s: int = Field(
        5, description="AMQP heartbeat: a half-open link is given up after (this + 1) x 3 s"
    )
    amqp_prefetch: int = 256
    amqp_delivery_limit: int = 5
    amqp_queue_type: Literal["quorum", "classic"] = Field(
        "quorum",
        description="the durable queues' type: quorum (replicated, delivery limit) | classic "
        "(for measuring what quorum costs: no delivery limit, no replication)",
    )
    amqp_confirm_timeout_s: float = 5.0
    amqp_batch_max_items: int = Field(
        64,
        ge=1,
        description="job-path messages published in one loop tick leave as one AMQP message of "
        "at most this many (1 turns coalescing off)",
    )
    amqp_batch_max_bytes: int = Field(
        1 << 20, ge=1024, description="and at most this many bytes (one message may exceed it)"
    )

    @model_validator(mode="after")
    def _job_ttl_outlives_every_lease(self) -> Settings:
        """A job record must outlive every lease and timer on it: an expired record leaves
        its timer nothing to take back (its slot only comes back at the sweeper's recount)."""
        life_ms = self.max_attempts * (
            self.no_node_wait_ms + self.ack_timeout_ms + self.job_deadline_ms + 1_000
        )
        if self.job_ttl_s * 1000 < life_ms:
            raise ValueError(
                f"LINGUA_JOB_TTL_S={self.job_ttl_s} is shorter than a job's whole life: "
                f"LINGUA_MAX_ATTEMPTS x (LINGUA_NO_NODE_WAIT_MS + LINGUA_ACK_TIMEOUT_MS + "
                f"LINGUA_JOB_DEADLINE_MS + 1000) = {life_ms} ms; raise it to at least "
                f"{-(-life_ms // 1000)}"
            )
        return self

    @model_validator(mode="after")
    def _cells_readable(self) -> Settings:
        self.cell_map()  # InvalidCells (a ValueError) names the entry
        return self

    def cell_map(self) -> CellMap:
        """The cells and their ladders (one cell, ``LINGUA_CELL``, when LINGUA_CELLS is unset)."""
        return CellMap.parse(self.cells, self.cell_fallback, self.cell)

    @property
    def auth_enabled(self) -> bool:
        mode = self.auth.strip().lower()
        if mode not in ("on", "off", "auto"):
            raise ValueError(f"LINGUA_AUTH must be on, off or auto, not {self.auth!r}")
        return mode == "on" or (mode == "auto" and self.profile != "development")

    def allowed_origins(self) -> set[str] | None:
        """The Origin allowlist; ``None`` means any origin."""
        raw = {o.strip().rstrip("/") for o in self.ws_allowed_origins.split(",") if o.strip()}
        if "*" in raw or (not raw and self.profile == "development"):
            return None
        return raw

    def ttl_ms_for(self, heartbeat_interval_ms: int | None) -> int:
        """Liveness TTL of a node that beats every ``heartbeat_interval_ms`` (N6)."""
        interval = heartbeat_interval_ms or self.node_default_heartbeat_interval_ms
        return max(self.node_min_ttl_ms, int(interval * self.node_ttl_intervals))
