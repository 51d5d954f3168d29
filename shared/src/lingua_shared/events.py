"""Messages on the internal bus (RabbitMQ), between our own services.

Unlike the wire protocol these are ours alone: strict (``extra="forbid"``) so that a
mismatch between two versions of our services is loud. Each carries ``kind`` as its
discriminator; one ``TypeAdapter`` per consumer is built once at import.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class BusModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeRegisterEvent(BusModel):
    """gateway -> node-manager (RPC: the reply goes to ``reply_to`` with ``correlation_id``)."""

    kind: Literal["node.register"] = "node.register"
    node_id: str
    conn_id: str
    gateway_id: str
    sent_at_ms: int
    ttl_ms: int
    region: str
    gpu_tier: str
    lang_sets: list[list[str]]
    capacity: int
    services: dict[str, list[str]]
    meta: dict[str, Any] = Field(default_factory=dict)
    trace_id: str | None = None
    acks_jobs: bool = True
    accept_public_jobs: bool = True
    tenant: str = ""


class Beat(BusModel):
    node_id: str
    conn_id: str
    ts_ms: int
    running_jobs: int | None = None
    cpu_percent: float | None = None
    gpu_percent: float | None = None
    mem_percent: float | None = None
    # "draining" (the node takes no new jobs), "degraded" (its ASR or Semantic is not ready)
    # or "ready"; None keeps the stored status
    status: str | None = None
    # the node's capabilities changed (its heartbeat said so): None keeps the stored ones
    lang_sets: list[list[str]] | None = None
    services: dict[str, list[str]] | None = None
    # the cell of the node (its region's: lingua_shared.cells); None = the default cell
    cell: str | None = None


class HeartbeatBatch(BusModel):
    """gateway -> node-manager: the heartbeats of one coalescing window of one gateway."""

    kind: Literal["node.heartbeat.batch"] = "node.heartbeat.batch"
    gateway_id: str
    sent_at_ms: int
    beats: list[Beat]
    # the gateway replica's batch counter: node-manager marks it applied (heartbeats_applied)
    # and the gateway keeps only a few unapplied batches in flight; None from older gateways
    seq: int | None = None
    # the gateway's heartbeat watermark: every beat it read before this time (ms) is in this
    # batch or an earlier one; node-manager records it once the batch is applied, and the
    # expiry sweeper waits for it (a batch may carry no beats: it then only moves the mark)
    covers_ms: int | None = None


class NodeDisconnected(BusModel):
    """gateway -> node-manager: a node connection ended (graceful decides N6's branch)."""

    kind: Literal["node.disconnected"] = "node.disconnected"
    node_id: str
    conn_id: str
    gateway_id: str
    graceful: bool
    close_code: int | None = None
    ts_ms: int
    # the cell of the node (its region's: lingua_shared.cells); None = the default cell
    cell: str | None = None


NodeEvent = Annotated[
    NodeRegisterEvent | HeartbeatBatch | NodeDisconnected, Field(discriminator="kind")
]
NODE_EVENT: TypeAdapter[NodeEvent] = TypeAdapter(NodeEvent)


class RegisterReply(BusModel):
    """node-manager -> the gateway that asked: the outcome of a registration."""

    kind: Literal["register.reply"] = "register.reply"
    node_id: str
    conn_id: str
    ok: bool
    created: bool = False
    error_code: str | None = None
    message: str = ""


class ToNode(BusModel):
    """any service -> the gateway holding a node connection: send ``payload`` to it.

    ``conn_id`` pins the connection ("" = whichever this gateway holds for the node);
    ``close_code`` closes that connection after sending (e.g. 4001 replaced); ``reregister``
    asks the gateway to register the node again from the registration it holds (Redis lost
    the node's record): the node itself is not asked, since lingua's agent ignores requests.
    """

    kind: Literal["to.node"] = "to.node"
    node_id: str
    conn_id: str = ""
    payload: dict[str, Any] | None = None
    close_code: int | None = None
    close_reason: str = ""
    reregister: bool = False


# -- job path ------------------------------------------------------------------------------


class JobRequest(BusModel):
    """gateway -> dispatcher: one utterance of a session to translate (requirement J1/J2).

    ``request_key`` is the idempotency key (J2): the client's ``request_id`` when it sent one,
    else ``<session_id>:<utterance_index>``. ``audio`` is base64, forwarded untouched (J9).
    """

    kind: Literal["job.request"] = "job.request"
    request_key: str
    session_id: str
    utterance_index: int
    gateway_id: str  # the replica holding the session's connection
    conn_id: str
    mode: str  # one_way | two_way_auto
    src_lang: str  # "auto" in two-way sessions
    tgt_lang: str
    lang_a: str | None = None
    lang_b: str | None = None
    audio: str
    audio_format: str
    sample_rate: int
    pipeline: dict[str, Any] = Field(default_factory=dict)
    trace_id: str
    received_at_ms: int  # utterance end seen at the gateway
    tenant_id: str | None = None  # the session's tenant (nodes taking no public jobs)
    # what the session asked nodes for (auto_langs, dialect, features, enable_streaming_asr,
    # partial_update_interval_ms): forwarded in job_assign
    options: dict[str, Any] = Field(default_factory=dict)
    # the cell the session lives in (its region's, or a fallback's); None = the default cell
    cell: str | None = None


class NodeJobEvent(BusModel):
    """gateway -> dispatcher: a job message from a node, with the connection it came on.

    ``message`` is the validated wire message (``job_ack``, ``job_started``, ``job_result``,
    ``asr_partial`` or ``node_error``) as a dict; ``node_id`` is the id bound to the
    connection, never the one the node claims in the message.
    """

    kind: Literal["node.job_event"] = "node.job_event"
    node_id: str
    conn_id: str
    gateway_id: str
    received_at_ms: int
    message: dict[str, Any]
    # with a job_result: the (job_id, attempt) of the same session's jobs that the gateway
    # sent this connection before that job and that got no answer yet (the node answers a
    # session's jobs in order, so they are finished)
    earlier: list[tuple[str, int]] = Field(default_factory=list)
    # the cell of the node (its region's: lingua_shared.cells); None = the default cell
    cell: str | None = None


class ToSession(BusModel):
    """dispatcher -> the gateway holding a session: messages for its client.

    Each carries the ``utterance_index`` it answers (results, ``missing_result``, typed
    errors); the gateway sends a session's messages in index order, exactly one per index.
    ``ordered = False`` messages (``asr_partial``) go out at once.
    """

    kind: Literal["to.session"] = "to.session"
    session_id: str
    conn_id: str = ""
    utterance_index: int | None = None
    ordered: bool = True
    payload: dict[str, Any]


GatewayInbound = Annotated[RegisterReply | ToNode | ToSession, Field(discriminator="kind")]
GATEWAY_INBOUND: TypeAdapter[GatewayInbound] = TypeAdapter(GatewayInbound)

DispatcherEvent = Annotated[
    JobRequest | NodeJobEvent | NodeDisconnected, Field(discriminator="kind")
]
DISPATCHER_EVENT: TypeAdapter[DispatcherEvent] = TypeAdapter(DispatcherEvent)
