"""What the other services address to this replica (its queue on ``<p>.deliver``), handed to
the connection it names: registration replies, messages for a node, answers for a session."""

from __future__ import annotations

from aio_pika.abc import AbstractIncomingMessage

from lingua_gateway.metrics import Metrics
from lingua_gateway.ports import Connections
from lingua_gateway.register_rpc import RegisterRpc
from lingua_shared.events import GatewayInbound, RegisterReply, ToSession
from lingua_shared.logs import get_logger

log = get_logger(__name__)


class DeliveryRouter:
    def __init__(self, connections: Connections, rpc: RegisterRpc, metrics: Metrics) -> None:
        self.connections = connections
        self.rpc = rpc
        self.metrics = metrics

    async def on_delivery(self, msg: GatewayInbound, message: AbstractIncomingMessage) -> None:
        if isinstance(msg, RegisterReply):
            self.rpc.resolve(message.correlation_id or "", msg)
            return
        if isinstance(msg, ToSession):
            self.deliver_to_session(msg)
            return
        conn = self.connections.nodes.get(msg.node_id)
        if conn is None or (msg.conn_id and conn.conn_id != msg.conn_id):
            log.info("gateway.to_node_not_held", node_id=msg.node_id, conn_id=msg.conn_id)
            return
        if msg.reregister and conn.reregister():
            return  # registered again from what this connection holds; the node sees an ack
        if msg.payload is not None:
            conn.send_to_node(msg.payload)
        if msg.close_code is not None:
            await conn.close(msg.close_code, msg.close_reason[:120])

    def deliver_to_session(self, msg: ToSession) -> None:
        """Hand a dispatcher message to the session's connection, if this replica holds it.

        A session that closed (or moved to another replica) no longer matches: the message
        is dropped and counted; the dispatcher's record of the session says where it went.
        """
        session = self.connections.sessions.get(msg.session_id)
        held = session is not None and (not msg.conn_id or session.conn_id == msg.conn_id)
        if session is None or not held or not session.deliver(msg):
            self.metrics.session_dropped.labels("not_held").inc()
            log.info(
                "gateway.to_session_not_held",
                session_id=msg.session_id,
                conn_id=msg.conn_id,
                utterance_index=msg.utterance_index,
                type=msg.payload.get("type"),
            )
