"""``/ws/node``: one node connection, from handshake to close (PROTOCOL.md, MISSION N1/N6).

The gateway decides nothing about scheduling: it validates frames, turns them into bus
events and sends back what is addressed to the connection. A recoverable error is answered
with a typed ``error`` and the connection stays open.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection

from lingua_gateway.access import ByteRate
from lingua_gateway.decode import decode_frame
from lingua_gateway.outbound import Outbound
from lingua_gateway.read_loop import EndpointConnection, read_frames
from lingua_shared.auth import Principal
from lingua_shared.errors import (
    InvalidCapabilitySchema,
    InvalidMessage,
    NodeIdConflict,
    NodeNotRegistered,
    Unauthorized,
)
from lingua_shared.events import Beat, NodeDisconnected, NodeJobEvent, NodeRegisterEvent
from lingua_shared.logs import get_logger
from lingua_shared.protocol import (
    NODE_INBOUND,
    CapabilityError,
    ErrorMessage,
    JobAck,
    JobResult,
    JobStarted,
    NodeAsrPartial,
    NodeCapabilities,
    NodeError,
    NodeHeartbeat,
    NodeRegister,
    NodeRegisterAck,
    derive_capabilities,
    result_is_refusal,
)
from lingua_shared.protocol.node import NODE_ID_RE
from lingua_shared.runtime import now_ms

if TYPE_CHECKING:
    from lingua_gateway.app import Gateway

log = get_logger(__name__)
ENDPOINT = "node"
NODE_TYPES = frozenset(
    {
        "node_register",
        "node_heartbeat",
        "job_ack",
        "job_started",
        "job_result",
        "asr_partial",
        "node_error",
        "error",
    }
)
# the node's own clean close: 1000/1001, or a close frame with no status (1005), which is
# how lingua's agent says goodbye
GRACEFUL_CLOSE_CODES = (1000, 1001, 1005)
MAX_TRACE_ID = 128
# a heartbeat's optional status: "draining" keeps the node's pools but offers it no new jobs
BEAT_STATUSES = frozenset({"ready", "draining"})
DEGRADED = "degraded"
# heartbeat fields that restate the node's capabilities (lingua's agent sends them in every beat)
CAPABILITY_FIELDS = ("installed_services", "capability_by_type", "language_capabilities")
MAX_SENT_JOBS = 1024  # unanswered job_assigns remembered per connection
JobMessage = JobAck | JobStarted | JobResult | NodeAsrPartial | NodeError
JOB_MESSAGES = (JobAck, JobStarted, JobResult, NodeAsrPartial, NodeError)


def register_trace_id(reg: NodeRegister) -> str | None:
    """The ``trace_id`` a registration may carry (an undeclared field, so any JSON value):
    a string of at most ``MAX_TRACE_ID`` characters, else INVALID_MESSAGE. Unchecked, a
    number or a list here failed building the bus event: INTERNAL_ERROR instead of a typed
    refusal (found by the hostile-input suite)."""
    trace_id = getattr(reg, "trace_id", None)
    if trace_id is None or (isinstance(trace_id, str) and len(trace_id) <= MAX_TRACE_ID):
        return trace_id
    raise InvalidMessage(
        f"trace_id must be a string of at most {MAX_TRACE_ID} characters",
        {"type": "node_register", "field": "trace_id"},
    )


class NodeConnection(EndpointConnection):
    ENDPOINT = ENDPOINT

    def __init__(self, gw: Gateway, ws: ServerConnection, principal: Principal | None) -> None:
        self.gw = gw
        self.ws = ws
        self.principal = principal  # the node token's holder; None when auth is off
        self.conn_id = uuid.uuid4().hex
        self.node_id: str | None = None
        # the registration this connection made (or waits to make): what the gateway
        # registers again from when Redis loses the node, and what heartbeats update
        self.registration: NodeRegister | None = None
        self.caps: NodeCapabilities | None = None  # as stored in Redis
        self.waiting_node_id: str | None = None  # held until ASR and Semantic are ready
        self.degraded = False  # ASR or Semantic no longer ready (a heartbeat said so)
        self.service_types: dict[str, str] = {}  # installed service id -> its type
        self._seen_caps: tuple[Any, ...] | None = None
        # the jobs sent on this socket and not answered yet, in the order they were sent:
        # (job_id, attempt, session_id). A node answers a session's jobs in that order, so
        # an answer tells which earlier ones it finished without a result.
        self.sent_jobs: list[tuple[str, int, str]] = []
        self._registering: asyncio.Task[None] | None = None
        self.out = Outbound(
            ws,
            gw.settings.ws_outbound_queue,
            gw.settings.ws_send_timeout_s,
            on_slow=lambda: gw.metrics.outbound_dropped.labels(ENDPOINT).inc(),
        )
        self._rpc_seq = 0
        self._trace_id: str | None = None

    def use_node_keepalive(self) -> None:
        """Ping this socket every ``ws_node_ping_interval_s`` instead of the server's interval.

        A node proves it is alive with heartbeats: the TTL of its record (three intervals) ends
        its schedulability whether or not the socket is noticed dead. Pings are then only for
        half-open sockets (peer gone without a FIN): with 20 s + the ping timeout such a socket
        is closed (a *drop*) within ~25 s instead of ~10 s, long after its TTL took it out of
        scheduling. At 10,000 nodes the server's 5 s was 2,000 ping/pong exchanges a second.
        """
        interval = self.gw.settings.ws_node_ping_interval_s
        ws = self.ws
        if ws.ping_interval is None or ws.ping_interval == interval:
            return  # keepalive disabled for the server, or already this interval
        if ws.keepalive_task is not None:
            ws.keepalive_task.cancel()
        ws.ping_interval = interval
        ws.start_keepalive()

    async def run(self) -> None:
        self.use_node_keepalive()
        try:
            await read_frames(
                self.ws,
                ENDPOINT,
                self.gw.metrics,
                self.on_frame,
                self.send_error,
                lambda: {"conn_id": self.conn_id, "node_id": self.node_id},
                self.close,
                ByteRate(self.gw.settings.ws_node_bytes_per_s, self.gw.settings.ws_rate_burst_s),
            )
        finally:
            if self._registering is not None:
                self._registering.cancel()
            await self.closed()

    async def on_frame(self, raw: str | bytes) -> None:
        msg = decode_frame(raw, NODE_INBOUND, NODE_TYPES)
        self.gw.metrics.message_in(ENDPOINT, msg.type).inc()
        await self.on_message(msg)

    async def on_message(self, msg: object) -> None:
        if isinstance(msg, NodeHeartbeat):
            self.on_heartbeat(msg)
        elif isinstance(msg, NodeRegister):
            await self.on_register(msg)
        elif isinstance(msg, ErrorMessage):
            log.warning(
                "gateway.node_reported_error",
                node_id=self.node_id,
                code=msg.code,
                error=msg.message[:200],
            )
        elif isinstance(msg, JOB_MESSAGES):
            await self.on_job_message(msg)

    async def on_job_message(self, msg: JobMessage) -> None:
        """Forward a job message to the dispatcher, stamped with the connection's node id.

        The dispatcher fences every message by (job, attempt, node); the node id it checks
        is the one bound to this connection at registration, never the one the message
        claims. Published inline, so a node's ack always precedes its result on the bus.
        """
        if self.node_id is None:
            raise NodeNotRegistered(
                f"{msg.type} from an unregistered connection: send node_register first"
            )
        if msg.node_id is not None and msg.node_id != self.node_id:
            raise InvalidMessage(
                f"node_id {msg.node_id[:70]!r} does not match this connection ({self.node_id})",
                {"type": msg.type},
            )
        message = msg.to_wire()
        self.name_service_type(message)
        ev = NodeJobEvent(
            node_id=self.node_id,
            conn_id=self.conn_id,
            gateway_id=self.gw.settings.instance_id,
            received_at_ms=now_ms(),
            message=message,
            # a refusal of a repeated job is sent at once, not in turn: it says nothing of
            # the jobs before it
            earlier=(
                self.answered(msg.job_id)
                if isinstance(msg, JobResult) and not result_is_refusal(msg)
                else []
            ),
        )
        job_id = getattr(msg, "job_id", None)
        try:
            await self.gw.infra.publisher.event("job.node_event", ev, batch=True)
        except Exception as exc:
            # the dispatcher's ack / deadline timers take the job back and redispatch it
            self.gw.metrics.publish_failures.labels("node_job_event").inc()
            log.warning(
                "gateway.node_job_event_lost",
                node_id=self.node_id,
                job_id=job_id,
                type=msg.type,
                error=repr(exc),
            )
            return
        self.gw.metrics.node_job_events.labels(msg.type).inc()
        log.debug("gateway.node_job_event", node_id=self.node_id, job_id=job_id, type=msg.type)

    def send_to_node(self, payload: dict[str, Any]) -> None:
        """Send a message the dispatcher addressed to this node, noting job_assigns (their
        order on the socket) and forgetting cancelled jobs."""
        kind = payload.get("type")
        if kind == "job_assign":
            self.sent_jobs.append(
                (str(payload.get("job_id")), int(payload.get("attempt_id") or 1),
                 str(payload.get("session_id")))
            )  # fmt: skip
            if len(self.sent_jobs) > MAX_SENT_JOBS:
                del self.sent_jobs[0]
        elif kind == "job_cancel":
            job_id = payload.get("job_id")
            self.sent_jobs = [j for j in self.sent_jobs if j[0] != job_id]
        self.out.send(payload)

    def answered(self, job_id: str) -> list[tuple[str, int]]:
        """The node answered ``job_id``: forget it, and return (and forget) the jobs of the
        same session sent before it, which the node has therefore finished."""
        for i, (sent_id, _, session_id) in enumerate(self.sent_jobs):
            if sent_id == job_id:
                earlier = [(j, a) for j, a, s in self.sent_jobs[:i] if s == session_id]
                self.sent_jobs = [
                    j for k, j in enumerate(self.sent_jobs) if k > i or j[2] != session_id
                ]
                return earlier
        return []

    def name_service_type(self, message: dict[str, Any]) -> None:
        """``MODEL_NOT_AVAILABLE`` names the service by its id (lingua: ``details.service_id``,
        e.g. ``piper-tts``); add its type from the node's ``installed_services``, which is what
        the dispatcher cools down."""
        err = message.get("error") if message.get("type") == "job_result" else message
        if not isinstance(err, dict) or err.get("code") != "MODEL_NOT_AVAILABLE":
            return
        details = err.get("details")
        if isinstance(details, dict) and "service_type" not in details:
            stype = self.service_types.get(str(details.get("service_id")))
            if stype:
                details["service_type"] = stype

    def on_heartbeat(self, hb: NodeHeartbeat) -> None:
        if hb.status is not None and hb.status not in BEAT_STATUSES:
            raise InvalidMessage(
                f"status must be one of {sorted(BEAT_STATUSES)}, got {hb.status[:40]!r}"
            )
        if self.waiting_node_id is not None:
            if hb.node_id != self.waiting_node_id:
                raise InvalidMessage(
                    f"node_id {hb.node_id[:70]!r} does not match this connection "
                    f"({self.waiting_node_id})"
                )
            self.recheck_waiting(hb)  # not registered yet: nothing to refresh in Redis
            return
        if self.node_id is None:
            # A node reconnecting within its TTL may resume with a heartbeat (N6); bind it.
            if not NODE_ID_RE.fullmatch(hb.node_id):
                raise InvalidMessage(f"invalid node_id {hb.node_id[:70]!r}")
            self.bind(hb.node_id)
        elif hb.node_id != self.node_id:
            raise InvalidMessage(
                f"node_id {hb.node_id[:70]!r} does not match this connection ({self.node_id})"
            )
        status = hb.status
        lang_sets: list[list[str]] | None = None
        services: dict[str, list[str]] | None = None
        changed = self.capabilities_from(hb)
        if changed is not None:
            lang_sets, services = changed.lang_sets, changed.services
        if self.degraded and status != "draining":
            status = DEGRADED
        elif status is None and changed is not None:
            status = "ready"  # capabilities are back (or changed): schedulable again
        ru = hb.resource_usage
        self.gw.coalescer.add(
            Beat(
                node_id=hb.node_id,
                conn_id=self.conn_id,
                ts_ms=now_ms(),
                running_jobs=ru.running_jobs if ru else None,
                cpu_percent=ru.cpu_percent if ru else None,
                gpu_percent=ru.gpu_percent if ru else None,
                mem_percent=ru.mem_percent if ru else None,
                status=status,
                lang_sets=lang_sets,
                services=services,
            )
        )

    def capabilities_from(self, hb: NodeHeartbeat) -> NodeCapabilities | None:
        """Apply the capabilities a heartbeat restates (lingua's agent sends its services and
        languages in every beat): the new ones when they changed what Redis holds or the
        node's readiness, else None. A node whose ASR or Semantic is no longer ready becomes
        degraded (unschedulable) until a later beat shows them ready again."""
        present = {f: getattr(hb, f) for f in CAPABILITY_FIELDS if getattr(hb, f) is not None}
        if not present or self.registration is None or self.caps is None:
            return None
        seen = tuple(present.get(f) for f in CAPABILITY_FIELDS)
        if seen == self._seen_caps:
            return None  # the same as the last beat: the common case, nothing to derive
        self._seen_caps = seen
        merged = self.registration.model_copy(update=present)
        try:
            caps = self.derive(merged)
        except CapabilityError as exc:
            if not self.degraded:
                self.degraded = True
                self.gw.metrics.capability_changes.labels("degraded").inc()
                log.warning(
                    "gateway.node_degraded",
                    node_id=self.node_id,
                    conn_id=self.conn_id,
                    missing=exc.missing,
                    error=exc.message,
                )
            return None
        self.registration = merged
        self.service_types = service_types(merged)
        recovered, self.degraded = self.degraded, False
        if recovered:
            self.gw.metrics.capability_changes.labels("ready").inc()
            log.info("gateway.node_ready_again", node_id=self.node_id, conn_id=self.conn_id)
        if (caps.lang_sets, caps.services) == (self.caps.lang_sets, self.caps.services):
            return caps if recovered else None
        self.gw.metrics.capability_changes.labels("languages").inc()
        log.info(
            "gateway.node_capabilities_changed",
            node_id=self.node_id,
            lang_sets=caps.lang_sets,
            previous=self.caps.lang_sets,
        )
        self.caps = caps
        return caps

    def derive(self, reg: NodeRegister) -> NodeCapabilities:
        s = self.gw.settings
        return derive_capabilities(
            reg,
            default_region=s.node_default_region,
            default_gpu_tier=s.node_default_gpu_tier,
            default_capacity=s.node_default_capacity,
        )

    async def on_register(self, reg: NodeRegister) -> None:
        try:
            caps = self.derive(reg)
        except CapabilityError as exc:
            if not exc.missing:
                raise InvalidCapabilitySchema(exc.message) from None
            self.hold_until_ready(reg, exc)
            return
        self._trace_id = register_trace_id(reg)
        default_id = self.principal.subject if self.principal else f"node-{uuid.uuid4().hex[:12]}"
        node_id = reg.node_id or self.node_id or self.waiting_node_id or default_id
        self.check_identity(node_id)
        if self.node_id is not None and self.node_id != node_id:
            raise NodeIdConflict(f"this connection is already registered as {self.node_id}")
        self.start_registration(node_id, reg, caps, "register")
        await self.settle_registration()

    def hold_until_ready(self, reg: NodeRegister, exc: CapabilityError) -> None:
        """A node whose ASR or Semantic is not ready yet (still starting) is not registered
        (MISSION N1: nothing is written) but held: it gets the typed error, then an ack with
        status ``registering`` so that lingua's agent starts heartbeating; the first
        heartbeat whose capabilities pass N1 registers it."""
        register_trace_id(reg)
        if self.node_id is not None:
            # already registered on this connection: its new registration is refused, the
            # one Redis holds stands
            raise InvalidCapabilitySchema(exc.message, {"missing": exc.missing})
        default_id = self.principal.subject if self.principal else f"node-{uuid.uuid4().hex[:12]}"
        node_id = reg.node_id or self.waiting_node_id or default_id
        if not NODE_ID_RE.fullmatch(node_id):
            raise InvalidCapabilitySchema(f"invalid node_id {node_id[:70]!r}")
        self.check_identity(node_id)
        self.registration, self.waiting_node_id = reg, node_id
        self.gw.metrics.registrations_waiting.inc()
        log.info(
            "gateway.node_registration_waiting",
            node_id=node_id,
            conn_id=self.conn_id,
            missing=exc.missing,
        )
        self.send_error(
            InvalidCapabilitySchema(exc.message, {"missing": exc.missing, "waiting": True})
        )
        self.out.send(
            NodeRegisterAck(
                node_id=node_id,
                message="not schedulable yet: "
                + "; ".join(exc.missing)
                + " (your heartbeats are checked; you are registered once they show it)",
                status="registering",
            ).to_wire()
        )

    def recheck_waiting(self, hb: NodeHeartbeat) -> None:
        present = {f: getattr(hb, f) for f in CAPABILITY_FIELDS if getattr(hb, f) is not None}
        if not present or self.registration is None or self.waiting_node_id is None:
            return
        merged = self.registration.model_copy(update=present)
        self.registration = merged
        try:
            caps = self.derive(merged)
        except CapabilityError:
            return  # still not ready
        node_id, self.waiting_node_id = self.waiting_node_id, None
        self.start_registration(node_id, merged, caps, "ready")  # its ack follows later

    def reregister(self) -> bool:
        """Redis lost this node's record: register it again from the registration this
        connection holds (lingua's agent ignores node_control). False when there is none."""
        if self.registration is None or self.caps is None or self.node_id is None:
            return False
        if self._registering is not None and not self._registering.done():
            return True  # one is on its way
        self.gw.metrics.reregistrations.inc()
        self.start_registration(self.node_id, self.registration, self.caps, "redis_lost")
        return True

    def start_registration(
        self, node_id: str, reg: NodeRegister, caps: NodeCapabilities, why: str
    ) -> None:
        """Register in the background, so the connection goes on reading (pings, beats) for
        however long the registration queue takes; a newer registration replaces it."""
        if self._registering is not None and not self._registering.done():
            self._registering.cancel()
        self._registering = asyncio.create_task(self.register(node_id, reg, caps, why))

    async def settle_registration(self) -> None:
        """Let a registration that completes promptly answer before the next frame is read:
        the ack then comes before anything the node sends after its register (clients and
        tests rely on a connection's replies coming in frame order). One that takes longer
        than ``register_timeout_s`` goes on in the background."""
        task = self._registering
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=self.gw.settings.register_timeout_s)

    async def register(
        self, node_id: str, reg: NodeRegister, caps: NodeCapabilities, why: str
    ) -> None:
        s = self.gw.settings
        interval = caps.heartbeat_interval_ms or s.node_default_heartbeat_interval_ms
        self._rpc_seq += 1
        event = NodeRegisterEvent(
            node_id=node_id,
            conn_id=self.conn_id,
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
            reply = await self.gw.register_rpc(event, f"{self.conn_id}:{self._rpc_seq}")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gateway.registration_failed", node_id=node_id, conn_id=self.conn_id)
            self.send_error(ErrorMessage(code="INTERNAL_ERROR", message="registration failed"))
            return
        if not reply.ok:
            self.send_error(InvalidCapabilitySchema(reply.message or "registration refused"))
            return
        self.bind(node_id)
        self.registration, self.caps = reg, caps
        self.service_types = service_types(reg)
        self.degraded = False
        log.info(
            "gateway.node_registered",
            node_id=node_id,
            conn_id=self.conn_id,
            created=reply.created,
            why=why,
        )
        self.out.send(
            NodeRegisterAck(
                node_id=node_id,
                message=reply.message,
                status="ready",
                heartbeat_interval_ms=interval,
            ).to_wire()
        )

    def check_identity(self, node_id: str) -> None:
        """A node token speaks for one node: any other id closes the connection (1008)."""
        if self.principal is not None and node_id != self.principal.subject:
            self.gw.metrics.access_refused.labels(ENDPOINT, "identity_mismatch").inc()
            raise Unauthorized(
                f"this connection's token is for node {self.principal.subject!r}, "
                f"not {node_id[:64]!r}"
            )

    def bind(self, node_id: str) -> None:
        self.check_identity(node_id)
        self.node_id = node_id
        previous = self.gw.nodes.get(node_id)
        self.gw.nodes[node_id] = self
        if previous is not None and previous is not self:
            self.gw.spawn(previous.ws.close(4001, "replaced by a newer connection"))

    async def closed(self) -> None:
        await self.out.flush_and_stop(0.2)
        proto = self.ws.protocol
        rcvd, sent = proto.close_rcvd, proto.close_sent
        # Graceful (N6) = the node itself closed cleanly; our own 1012/4001/4008 are not.
        peer_first = rcvd is not None and bool(proto.close_rcvd_then_sent)
        graceful = peer_first and rcvd is not None and rcvd.code in GRACEFUL_CLOSE_CODES
        code = rcvd.code if rcvd is not None else (sent.code if sent is not None else 1006)
        self.gw.metrics.closes.labels(ENDPOINT, str(code), str(graceful).lower()).inc()
        if self.node_id is None:
            return
        if self.gw.nodes.get(self.node_id) is self:
            del self.gw.nodes[self.node_id]
        ev = NodeDisconnected(
            node_id=self.node_id,
            conn_id=self.conn_id,
            gateway_id=self.gw.settings.instance_id,
            graceful=graceful,
            close_code=code,
            ts_ms=now_ms(),
        )
        log.info(
            "gateway.node_closed",
            node_id=self.node_id,
            conn_id=self.conn_id,
            close_code=code,
            graceful=graceful,
        )
        try:
            await self.gw.infra.publisher.event("node.disconnected", ev)
        except Exception as exc:
            # The node's TTL still ends its schedulability: nothing is lost but promptness.
            self.gw.metrics.publish_failures.labels("node_disconnected").inc()
            log.warning("gateway.disconnect_event_lost", node_id=self.node_id, error=repr(exc))


def service_types(reg: NodeRegister) -> dict[str, str]:
    """Installed service id -> its type (``piper-tts`` -> ``tts``)."""
    return {
        svc.service_id: svc.type.lower()
        for svc in reg.installed_services or []
        if svc.service_id and svc.type
    }
