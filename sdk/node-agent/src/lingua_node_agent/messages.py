"""What the agent does with each message from the gateway (the ``/ws/node`` inbound side).

Split from :mod:`lingua_node_agent.agent`, which owns the connection lifecycle, so that the
per-message rules of docs/protocol.md read in one place: the ack binds the node id and starts
heartbeats; ``INVALID_CAPABILITY_SCHEMA`` is final while other registration errors are
retried; ``reregister`` re-sends the registration on the same socket; jobs are refused
before the ack.

Under the lingua profile the rules are those of lingua's own agent: only
``node_register_ack``, ``job_assign`` and ``job_cancel`` are acted on (``error`` and
``node_control`` are logged at debug and otherwise ignored), there is no register timeout, the
ack's ``heartbeat_interval_ms`` is ignored (lingua beats every 15 s whatever it says), the
registration carries ``node_id: null`` until one is known, and a job is taken as soon as the
node knows its id, even before this connection's ack.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from websockets.asyncio.client import ClientConnection

from lingua_node_agent.backoff import Backoff
from lingua_node_agent.config import AgentConfig
from lingua_node_agent.errors import RegistrationRejected
from lingua_node_agent.heartbeat import HeartbeatPacer
from lingua_node_agent.inbound import Skipped, decode
from lingua_node_agent.job_runner import JobRunner
from lingua_node_agent.state import NodeIdStore
from lingua_shared.protocol import (
    CloseCode,
    ErrorCode,
    ErrorMessage,
    JobAssign,
    JobCancel,
    NodeControl,
    NodeRegister,
    NodeRegisterAck,
    WireModel,
)


class GatewayMessages:
    """Mixin of :class:`NodeAgent`: one handler per gateway message type."""

    # Provided by NodeAgent.
    config: AgentConfig
    node_id: str | None
    status: str
    draining: bool
    registrations: int
    heartbeat_interval_s: float
    lingua: bool
    registered: asyncio.Event
    log: logging.LoggerAdapter[Any]
    jobs: JobRunner
    heartbeats: HeartbeatPacer
    _register: NodeRegister
    _store: NodeIdStore | None
    _saved_id: str | None
    _backoff: Backoff
    _ack_deadline: float | None

    async def _send(self, msg: WireModel | dict[str, Any]) -> bool:
        raise NotImplementedError

    def stop(self, drain: bool = True, reason: str = "stop requested") -> None:
        raise NotImplementedError

    async def _dispatch(self, ws: ClientConnection, raw: str | bytes) -> None:
        msg = decode(raw)
        if isinstance(msg, Skipped):
            level = logging.DEBUG if msg.reason == "binary frame" else logging.WARNING
            self.log.log(
                level,
                f"ignoring a frame: {msg.reason}",
                extra={"msg_type": msg.msg_type, "detail": msg.detail},
            )
            return
        if self.lingua and isinstance(msg, ErrorMessage | NodeControl):
            self.log.debug(
                "lingua profile: ignoring a message lingua's agent does not handle",
                extra={"msg_type": msg.type, "detail": msg.to_wire()},
            )
            return
        if isinstance(msg, NodeRegisterAck):
            await self._on_ack(msg)
        elif isinstance(msg, ErrorMessage):
            await self._on_error(ws, msg)
        elif isinstance(msg, NodeControl):
            await self._on_control(msg)
        elif isinstance(msg, JobAssign):
            node_id = self.node_id
            if node_id is None or not (self.lingua or self.registered.is_set()):
                self.log.warning("ignoring a job before the ack", extra={"job_id": msg.job_id})
                return
            await self.jobs.submit(msg, node_id)
        elif isinstance(msg, JobCancel):
            cancelled = self.jobs.cancel(msg.job_id)
            self.log.info(
                "job_cancel",
                extra={
                    "job_id": msg.job_id,
                    "trace_id": msg.trace_id,
                    "reason": msg.reason,
                    "cancelled": cancelled,
                },
            )

    # ----------------------------------------------------------------- registration

    async def _send_register(self) -> None:
        self.status = "registering"
        if self.lingua:  # no timeout, and "node_id": null the first time
            await self._send({**self._register.to_wire(), "node_id": self.node_id})
            return
        self._ack_deadline = asyncio.get_running_loop().time() + self.config.register_timeout_s
        await self._send(self._register.model_copy(update={"node_id": self.node_id}))

    async def _on_ack(self, ack: NodeRegisterAck) -> None:
        if ack.node_id != self.node_id:
            self.log.info("node id assigned", extra={"previous": self.node_id, "new": ack.node_id})
            self.node_id = ack.node_id
        if self._store is not None and self._saved_id != ack.node_id:
            self._store.save(ack.node_id)
            self._saved_id = ack.node_id
        if ack.heartbeat_interval_ms and not self.lingua:
            self.heartbeat_interval_s = max(0.1, ack.heartbeat_interval_ms / 1000.0)
        self._ack_deadline = None
        held = ack.status == "registering" and not self.lingua
        if held:
            # held until our services are ready: heartbeats (with our capabilities) go on; the
            # gateway registers us, and acks again, once they show ASR and Semantic ready
            self.status = "registering"
            self.log.warning("registration held", extra={"reason": ack.message})
        else:
            self.registrations += 1
            self._backoff.reset()
            self.status = "draining" if self.draining else "ready"
            self.registered.set()
            self.log.info(
                "registered",
                extra={
                    "ack_status": ack.status,
                    "heartbeat_interval_s": self.heartbeat_interval_s,
                },
            )
        if self.lingua and self.heartbeats.running and self.heartbeats.node_id == ack.node_id:
            await self.heartbeats.send_now()  # one beat now; the 15 s rhythm runs on
        else:
            await self.heartbeats.start(ack.node_id, self.heartbeat_interval_s)
        await self.jobs.flush_unsent()  # results finished while we had no connection

    async def _on_error(self, ws: ClientConnection, err: ErrorMessage) -> None:
        extra = {"code": err.code, "error": err.message}
        if err.code == ErrorCode.INVALID_CAPABILITY_SCHEMA and (err.details or {}).get("waiting"):
            # not refused: held until a heartbeat shows our services ready (an ack follows)
            self.log.warning("registration waits for our services to be ready", extra=extra)
            self._ack_deadline = None
            return
        if err.code == ErrorCode.INVALID_CAPABILITY_SCHEMA:
            self.log.error("registration rejected", extra=extra)
            await ws.close(CloseCode.NORMAL, "registration rejected")
            raise RegistrationRejected(err.code, err.message)
        if self._ack_deadline is not None:
            self.log.warning("registration failed; will retry", extra=extra)
            await ws.close(CloseCode.RETRY, "registration failed")
        elif err.code == ErrorCode.NODE_NOT_REGISTERED:
            self.log.warning("gateway lost our registration; registering again", extra=extra)
            await self._send_register()
        else:
            self.log.warning("error from gateway", extra=extra)

    async def _on_control(self, ctrl: NodeControl) -> None:
        self.log.info("node_control", extra={"command": ctrl.command, "reason": ctrl.reason})
        if ctrl.command == "reregister":
            await self._send_register()  # heartbeats go on meanwhile
        elif ctrl.command == "drain":
            self.stop(drain=True, reason=ctrl.reason or "drain requested by the gateway")
        else:
            self.log.warning("ignoring unknown node_control command")
