"""A node's registration, from ``node_register`` to ``node_register_ack`` (rule N1,
docs/protocol.md §2.3).

It runs in the background, so the connection goes on reading (pings, heartbeats) however long
node-manager takes: one confirmed within ``register_timeout_s`` is answered before the node's
next frame is read; a slower one is waited for as long as it takes (lingua's agent has no
timeout on its ack and reconnects only once). A node whose ASR or Semantic is not ready yet
is held, not refused: the first heartbeat whose capabilities pass N1 registers it. When Redis
lost the node, the gateway registers it again from the registration the connection holds.
A node that registers again on its connection with a region of another cell is registered in
the new cell first, then leaves the old one (a goodbye there, as if it had disconnected).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Protocol

from lingua_gateway.node_capabilities import NodeProfile, restated
from lingua_gateway.outbound import Outbound
from lingua_gateway.ports import NodeDeps
from lingua_shared.auth import Principal
from lingua_shared.errors import (
    InvalidCapabilitySchema,
    InvalidMessage,
    LinguaError,
    NodeIdConflict,
)
from lingua_shared.events import NodeDisconnected, NodeRegisterEvent
from lingua_shared.logs import get_logger
from lingua_shared.protocol import (
    MAX_TRACE_ID,
    CapabilityError,
    ErrorMessage,
    NodeCapabilities,
    NodeHeartbeat,
    NodeRegister,
    NodeRegisterAck,
)
from lingua_shared.protocol.capabilities import NODE_ID_RE
from lingua_shared.runtime import now_ms

log = get_logger(__name__)
# a registration holds the heartbeat watermark for one heartbeat interval after its answer,
# at most this long
REGISTRATION_HOLD_MAX_S = 15.0


def register_trace_id(reg: NodeRegister) -> str | None:
    """The ``trace_id`` a registration may carry (an undeclared field, so any JSON value):
    a string of at most ``MAX_TRACE_ID`` characters, else INVALID_MESSAGE, so that a number
    or a list is a typed refusal rather than a failure building the bus event."""
    trace_id = getattr(reg, "trace_id", None)
    if trace_id is None or (isinstance(trace_id, str) and len(trace_id) <= MAX_TRACE_ID):
        return trace_id
    raise InvalidMessage(
        f"trace_id must be a string of at most {MAX_TRACE_ID} characters",
        {"type": "node_register", "field": "trace_id"},
    )


class RegisteringNode(Protocol):
    """What the registration needs of its connection."""

    conn_id: str
    node_id: str | None  # the id bound to the connection, once registered
    principal: Principal | None  # the node token's holder; None when auth is off
    out: Outbound

    def bind(self, node_id: str) -> None: ...

    def check_identity(self, node_id: str) -> None: ...

    def send_error(self, err: LinguaError | ErrorMessage) -> None: ...


class NodeRegistrar:
    """The registration flow of one node connection."""

    def __init__(self, conn: RegisteringNode, profile: NodeProfile, deps: NodeDeps) -> None:
        self.conn = conn
        self.profile = profile
        self.settings = deps.settings
        self.metrics = deps.metrics
        self.register_call = deps.register
        self.beats = deps.beats
        self.publisher = deps.publisher
        self.cells = deps.cells
        self.waiting_node_id: str | None = None  # held until ASR and Semantic are ready
        self._task: asyncio.Task[None] | None = None
        self._rpc_seq = 0
        self._trace_id: str | None = None

    def default_node_id(self) -> str:
        principal = self.conn.principal
        return principal.subject if principal else f"node-{uuid.uuid4().hex[:12]}"

    async def on_register(self, reg: NodeRegister) -> None:
        conn = self.conn
        try:
            caps = self.profile.derive(reg)
        except CapabilityError as exc:
            if not exc.missing:
                raise InvalidCapabilitySchema(exc.message) from None
            self.hold_until_ready(reg, exc)
            return
        self._trace_id = register_trace_id(reg)
        node_id = reg.node_id or conn.node_id or self.waiting_node_id or self.default_node_id()
        conn.check_identity(node_id)
        if conn.node_id is not None and conn.node_id != node_id:
            raise NodeIdConflict(f"this connection is already registered as {conn.node_id}")
        self.waiting_node_id = None  # a held node that registers again, ready this time
        self.start(node_id, reg, caps, "register")
        await self.settle()

    def hold_until_ready(self, reg: NodeRegister, exc: CapabilityError) -> None:
        """A node whose ASR or Semantic is not ready yet (still starting) is not registered
        (rule N1: nothing is written) but held: it gets the typed error, then an ack with
        status ``registering`` so that lingua's agent starts heartbeating; the first
        heartbeat whose capabilities pass N1 registers it."""
        conn = self.conn
        register_trace_id(reg)
        if conn.node_id is not None:
            # already registered on this connection: its new registration is refused, the
            # one Redis holds stands
            raise InvalidCapabilitySchema(exc.message, {"missing": exc.missing})
        node_id = reg.node_id or self.waiting_node_id or self.default_node_id()
        if not NODE_ID_RE.fullmatch(node_id):
            raise InvalidCapabilitySchema(f"invalid node_id {node_id[:70]!r}")
        conn.check_identity(node_id)
        self.profile.registration, self.waiting_node_id = reg, node_id
        self.metrics.registrations_waiting.inc()
        log.info(
            "gateway.node_registration_waiting",
            node_id=node_id,
            conn_id=conn.conn_id,
            missing=exc.missing,
        )
        conn.send_error(
            InvalidCapabilitySchema(exc.message, {"missing": exc.missing, "waiting": True})
        )
        conn.out.send(
            NodeRegisterAck(
                node_id=node_id,
                message="not schedulable yet: "
                + "; ".join(exc.missing)
                + " (your heartbeats are checked; you are registered once they show it)",
                status="registering",
            ).to_wire()
        )

    def recheck_waiting(self, hb: NodeHeartbeat) -> None:
        """A heartbeat of a held node: register it once its capabilities pass N1."""
        present = restated(hb)
        held = self.profile.registration
        if not present or held is None or self.waiting_node_id is None:
            return
        merged = held.model_copy(update=present)
        self.profile.registration = merged
        try:
            caps = self.profile.derive(merged)
        except CapabilityError:
            return  # still not ready
        node_id, self.waiting_node_id = self.waiting_node_id, None
        self.start(node_id, merged, caps, "ready")  # its ack follows later

    def reregister(self) -> bool:
        """Redis lost this node's record: register it again from the registration this
        connection holds (lingua's agent ignores node_control). False when there is none."""
        p, node_id = self.profile, self.conn.node_id
        if p.registration is None or p.caps is None or node_id is None:
            return False
        if self._task is not None and not self._task.done():
            return True  # one is on its way
        self.metrics.reregistrations.inc()
        self.start(node_id, p.registration, p.caps, "redis_lost")
        return True

    def start(self, node_id: str, reg: NodeRegister, caps: NodeCapabilities, why: str) -> None:
        """Register in the background, so the connection goes on reading (pings, beats) for
        however long the registration queue takes; a newer registration replaces it."""
        self.cancel()
        self._task = asyncio.create_task(self.register(node_id, reg, caps, why))

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def settle(self) -> None:
        """Let a registration that completes promptly answer before the next frame is read:
        the ack then comes before anything the node sends after its register (clients and
        tests rely on a connection's replies coming in frame order). One that takes longer
        than ``register_timeout_s`` goes on in the background."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=self.settings.register_timeout_s)

    async def register(
        self, node_id: str, reg: NodeRegister, caps: NodeCapabilities, why: str
    ) -> None:
        # The node cannot beat before it is answered, and its first beat is due one interval
        # after: node-manager's sweeper must not judge its deadline (which runs from when the
        # record was written, maybe long before the answer reached a busy gateway) until
        # then. The heartbeat watermark waits for the registration that long.
        token = self.beats.begin_registration()
        interval = caps.heartbeat_interval_ms or self.settings.node_default_heartbeat_interval_ms
        try:
            await self._register(node_id, reg, caps, why, interval)
        finally:
            asyncio.get_running_loop().call_later(
                min(interval / 1000, REGISTRATION_HOLD_MAX_S), self.beats.end_registration, token
            )

    async def leave_old_cell(
        self, node_id: str, previous: NodeCapabilities, caps: NodeCapabilities
    ) -> None:
        """The node registered again on this connection, now in another region's cell: the
        old cell's record would otherwise stay schedulable until its TTL ran out (jobs sent
        there would reach the node, and its answers go to the new cell). Its goodbye there
        removes it and takes back what it ran there, fenced by this connection."""
        cells = self.cells
        old, new = cells.cell_of(previous.region), cells.cell_of(caps.region)
        if old == new:
            return
        log.info(
            "gateway.node_moved_cell",
            node_id=node_id,
            conn_id=self.conn.conn_id,
            from_cell=old,
            to_cell=new,
        )
        await self.goodbye(node_id, graceful=True, close_code=1000, cell=cells.tag(old))

    async def goodbye(
        self, node_id: str, *, graceful: bool, close_code: int, cell: str | None
    ) -> None:
        """Tell ``cell`` this connection no longer carries ``node_id`` (``node.disconnected``):
        its pending beat (tagged with that cell) is dropped, and a publish that fails is
        counted and logged, since the record's TTL still ends it there: nothing is lost but
        promptness."""
        conn_id = self.conn.conn_id
        self.beats.forget(node_id, conn_id)
        ev = NodeDisconnected(
            node_id=node_id,
            conn_id=conn_id,
            gateway_id=self.settings.instance_id,
            graceful=graceful,
            close_code=close_code,
            ts_ms=now_ms(),
            cell=cell,
        )
        try:
            await self.publisher.event("node.disconnected", ev)
        except Exception as exc:
            self.metrics.publish_failures.labels("node_disconnected").inc()
            log.warning("gateway.disconnect_event_lost", node_id=node_id, error=repr(exc))

    async def _register(
        self, node_id: str, reg: NodeRegister, caps: NodeCapabilities, why: str, interval: int
    ) -> None:
        s, conn = self.settings, self.conn
        self._rpc_seq += 1
        event = NodeRegisterEvent(
            node_id=node_id,
            conn_id=conn.conn_id,
            gateway_id=s.instance_id,
            sent_at_ms=now_ms(),
            ttl_ms=s.ttl_ms_for(interval),
            region=caps.region,
            gpu_tier=caps.gpu_tier,
            lang_sets=caps.lang_sets,
            capacity=caps.capacity,
            services=caps.services,
            meta={k: v for k, v in (("version", reg.version), ("platform", reg.platform)) if v},
            trace_id=self._trace_id,
            acks_jobs=caps.acks_jobs,
            accept_public_jobs=caps.accept_public_jobs,
            tenant=caps.tenant,
        )
        try:
            reply = await self.register_call(event, f"{conn.conn_id}:{self._rpc_seq}")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gateway.registration_failed", node_id=node_id, conn_id=conn.conn_id)
            conn.send_error(ErrorMessage(code="INTERNAL_ERROR", message="registration failed"))
            return
        if not reply.ok:
            conn.send_error(InvalidCapabilitySchema(reply.message or "registration refused"))
            return
        previous = self.profile.caps if conn.node_id == node_id else None
        conn.bind(node_id)
        self.profile.registered(reg, caps)
        if previous is not None:
            await self.leave_old_cell(node_id, previous, caps)
        log.info(
            "gateway.node_registered",
            node_id=node_id,
            conn_id=conn.conn_id,
            created=reply.created,
            why=why,
        )
        conn.out.send(
            NodeRegisterAck(
                node_id=node_id,
                message=reply.message,
                status="ready",
                heartbeat_interval_ms=interval,
            ).to_wire()
        )
