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


class Beat(BusModel):
    node_id: str
    conn_id: str
    ts_ms: int
    running_jobs: int | None = None
    cpu_percent: float | None = None
    gpu_percent: float | None = None
    mem_percent: float | None = None


class HeartbeatBatch(BusModel):
    """gateway -> node-manager: the heartbeats of one coalescing window of one gateway."""

    kind: Literal["node.heartbeat.batch"] = "node.heartbeat.batch"
    gateway_id: str
    sent_at_ms: int
    beats: list[Beat]


class NodeDisconnected(BusModel):
    """gateway -> node-manager: a node connection ended (graceful decides N6's branch)."""

    kind: Literal["node.disconnected"] = "node.disconnected"
    node_id: str
    conn_id: str
    gateway_id: str
    graceful: bool
    close_code: int | None = None
    ts_ms: int


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
    ``close_code`` closes that connection after sending (e.g. 4001 replaced).
    """

    kind: Literal["to.node"] = "to.node"
    node_id: str
    conn_id: str = ""
    payload: dict[str, Any] | None = None
    close_code: int | None = None
    close_reason: str = ""


GatewayInbound = Annotated[RegisterReply | ToNode, Field(discriminator="kind")]
GATEWAY_INBOUND: TypeAdapter[GatewayInbound] = TypeAdapter(GatewayInbound)
