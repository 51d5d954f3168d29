"""``/ws/node``: one node connection, from handshake to close (docs/protocol.md §2).

The gateway decides nothing about scheduling: it validates frames, turns them into bus
events and sends back what is addressed to the connection. A recoverable error is answered
with a typed ``error`` and the connection stays open. The registration flow is in
:mod:`~lingua_gateway.node_registration`, the capabilities heartbeats restate in
:mod:`~lingua_gateway.node_capabilities`.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection

from lingua_gateway.access import ByteRate
from lingua_gateway.decode import decode_frame
from lingua_gateway.node_capabilities import NodeProfile, raw_capabilities, without_capabilities
from lingua_gateway.node_registration import NodeRegistrar
from lingua_gateway.outbound import Outbound
from lingua_gateway.ports import NodeDeps
from lingua_gateway.read_loop import EndpointConnection, read_frames
from lingua_shared.auth import Principal
from lingua_shared.errors import InvalidMessage, NodeNotRegistered, Unauthorized
from lingua_shared.events import Beat, NodeJobEvent
from lingua_shared.logs import get_logger
from lingua_shared.protocol import (
    GRACEFUL_NODE_CLOSES,
    NODE_INBOUND,
    NODE_INBOUND_TYPES,
    CloseCode,
    ErrorMessage,
    JobAck,
    JobResult,
    JobStarted,
    NodeAsrPartial,
    NodeError,
    NodeHeartbeat,
    NodeRegister,
    result_is_refusal,
)
from lingua_shared.protocol.capabilities import NODE_ID_RE
from lingua_shared.runtime import now_ms

log = get_logger(__name__)
ENDPOINT = "node"
NODE_TYPES = NODE_INBOUND_TYPES  # what a node may send
# a heartbeat's optional status: "draining" keeps the node's pools but offers it no new jobs
BEAT_STATUSES = frozenset({"ready", "draining"})
DEGRADED = "degraded"
MAX_SENT_JOBS = 1024  # unanswered job_assigns remembered per connection
JobMessage = JobAck | JobStarted | JobResult | NodeAsrPartial | NodeError
JOB_MESSAGES = (JobAck, JobStarted, JobResult, NodeAsrPartial, NodeError)


class NodeConnection(EndpointConnection):
    ENDPOINT = ENDPOINT

    def __init__(self, ws: ServerConnection, principal: Principal | None, deps: NodeDeps) -> None:
        s = deps.settings
        self.ws = ws
        self.principal = principal  # the node token's holder; None when auth is off
        self.settings = s
        self.metrics = deps.metrics
        self.publisher = deps.publisher
        self.beats = deps.beats
        self.connections = deps.connections
        self.cells = deps.cells
        self.conn_id = uuid.uuid4().hex
        self.node_id: str | None = None
        self.profile = NodeProfile(s, deps.metrics)
        self.registrar = NodeRegistrar(self, self.profile, deps)
        # the jobs sent on this socket and not answered yet, in the order they were sent:
        # (job_id, attempt, session_id). A node answers a session's jobs in that order, so
        # an answer tells which earlier ones it finished without a result.
        self.sent_jobs: list[tuple[str, int, str]] = []
        self.out = Outbound(
            ws,
            s.ws_outbound_queue,
            s.ws_send_timeout_s,
            on_slow=lambda: deps.metrics.outbound_dropped.labels(ENDPOINT).inc(),
        )

    def log_context(self) -> dict[str, Any]:
        return {"conn_id": self.conn_id, "node_id": self.node_id}

    def use_node_keepalive(self) -> None:
        """Ping this socket every ``ws_node_ping_interval_s`` instead of the server's interval,
        and wait ``ws_node_ping_timeout_s`` for the pong.

        A node proves it is alive with heartbeats: the TTL of its record (three intervals) ends
        its schedulability whether or not the socket is noticed dead. Pings are then only for
        half-open sockets (peer gone without a FIN): with 20 s + the ping timeout such a socket
        is closed (a *drop*) within ~35 s instead of ~10 s, long after its TTL took it out of
        scheduling. At 10,000 nodes the server's 5 s was 2,000 ping/pong exchanges a second,
        and on a busy host a 5 s pong timeout closed healthy nodes whose answers were late.
        """
        interval = self.settings.ws_node_ping_interval_s
        ws = self.ws
        if ws.ping_interval is None or ws.ping_interval == interval:
            return  # keepalive disabled for the server, or already this interval
        ws.ping_timeout = self.settings.ws_node_ping_timeout_s
        if ws.keepalive_task is not None:
            ws.keepalive_task.cancel()
        ws.ping_interval = interval
        ws.start_keepalive()

    async def run(self) -> None:
        self.use_node_keepalive()
        s = self.settings
        try:
            await read_frames(
                self, self.metrics, ByteRate(s.ws_node_bytes_per_s, s.ws_rate_burst_s)
            )
        finally:
            self.registrar.cancel()
            await self.closed()

    async def on_frame(self, raw: str | bytes) -> None:
        beat = self.routine_heartbeat(raw) if isinstance(raw, str) else None
        if beat is not None:
            obj, caps = beat
            if caps == self.profile.raw_seen:
                self.on_routine_heartbeat(obj, raw)
                return
        msg = decode_frame(raw, NODE_INBOUND, NODE_TYPES)
        self.metrics.message_in(ENDPOINT, msg.type).inc()
        await self.on_message(msg)
        if beat is not None and self.profile.caps is not None and self.node_id is not None:
            self.profile.raw_seen = beat[1]  # decoded in full and taken: the next may be quick

    @property
    def cell(self) -> str | None:
        """The cell of the node's registered region, as its bus messages name it (None: the
        default cell); every message about this node goes to that cell's keys."""
        caps = self.profile.caps
        return self.cells.tag(self.cells.cell_of(caps.region)) if caps is not None else None

    def routine_heartbeat(self, raw: str) -> tuple[dict[str, Any], tuple[Any, ...]] | None:
        """A registered node's heartbeat, parsed, with its capability fields as sent; None
        for any other frame (those go through :func:`decode_frame`).

        lingua's agent restates its capabilities in every beat, ~1-2 KB the gateway would
        validate and compare at every beat of every node. A beat whose capability fields are
        exactly (as JSON) those of the last beat decoded in full changes nothing they say, so
        only its other fields are validated. Anything unusual takes the full path, which
        gives the typed error."""
        if (
            '"node_heartbeat"' not in raw[:48]
            or self.profile.caps is None
            or self.registrar.waiting_node_id is not None
        ):
            return None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or obj.get("type") != "node_heartbeat":
            return None
        return obj, raw_capabilities(obj)

    def on_routine_heartbeat(self, obj: dict[str, Any], raw: str) -> None:
        try:
            hb = NodeHeartbeat.model_validate(without_capabilities(obj))
        except ValidationError:
            self.profile.raw_seen = None
            hb = decode_frame(raw, NODE_INBOUND, NODE_TYPES)  # raises what is wrong
        self.metrics.message_in(ENDPOINT, "node_heartbeat").inc()
        self.on_heartbeat(hb)  # type: ignore[arg-type]

    async def on_message(self, msg: object) -> None:
        if isinstance(msg, NodeHeartbeat):
            self.on_heartbeat(msg)
        elif isinstance(msg, NodeRegister):
            await self.registrar.on_register(msg)
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
        self.profile.name_service_type(message)
        ev = NodeJobEvent(
            node_id=self.node_id,
            conn_id=self.conn_id,
            gateway_id=self.settings.instance_id,
            received_at_ms=now_ms(),
            message=message,
            # a refusal of a repeated job is sent at once, not in turn: it says nothing of
            # the jobs before it
            earlier=(
                self.answered(msg.job_id)
                if isinstance(msg, JobResult) and not result_is_refusal(msg)
                else []
            ),
            cell=self.cell,
        )
        job_id = getattr(msg, "job_id", None)
        try:
            await self.publisher.event("job.node_event", ev, batch=True)
        except Exception as exc:
            # the dispatcher's ack / deadline timers take the job back and redispatch it
            self.metrics.publish_failures.labels("node_job_event").inc()
            log.warning(
                "gateway.node_job_event_lost",
                node_id=self.node_id,
                job_id=job_id,
                type=msg.type,
                error=repr(exc),
            )
            return
        self.metrics.node_job_events.labels(msg.type).inc()
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

    def on_heartbeat(self, hb: NodeHeartbeat) -> None:
        if hb.status is not None and hb.status not in BEAT_STATUSES:
            raise InvalidMessage(
                f"status must be one of {sorted(BEAT_STATUSES)}, got {hb.status[:40]!r}"
            )
        waiting = self.registrar.waiting_node_id
        if waiting is not None:
            if hb.node_id != waiting:
                raise InvalidMessage(
                    f"node_id {hb.node_id[:70]!r} does not match this connection ({waiting})"
                )
            self.registrar.recheck_waiting(hb)  # not registered yet: nothing to refresh
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
        changed = self.profile.from_heartbeat(hb, self.node_id, self.conn_id)
        if changed is not None:
            lang_sets, services = changed.lang_sets, changed.services
        if self.profile.degraded and status != "draining":
            status = DEGRADED
        elif status is None and changed is not None:
            status = "ready"  # capabilities are back (or changed): schedulable again
        ru = hb.resource_usage
        self.beats.add(
            Beat.model_construct(  # every value below is validated already
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
                cell=self.cell,
            )
        )

    def reregister(self) -> bool:
        """Redis lost this node's record: register it again (see
        :meth:`NodeRegistrar.reregister`). False when the connection holds no registration."""
        return self.registrar.reregister()

    def check_identity(self, node_id: str) -> None:
        """A node token speaks for one node: any other id closes the connection (1008)."""
        if self.principal is not None and node_id != self.principal.subject:
            self.metrics.access_refused.labels(ENDPOINT, "identity_mismatch").inc()
            raise Unauthorized(
                f"this connection's token is for node {self.principal.subject!r}, "
                f"not {node_id[:64]!r}"
            )

    def bind(self, node_id: str) -> None:
        """Bind ``node_id`` to this connection; an older connection holding it is closed."""
        self.check_identity(node_id)
        self.node_id = node_id
        nodes = self.connections.nodes
        previous = nodes.get(node_id)
        nodes[node_id] = self
        if previous is not None and previous is not self:
            self.connections.spawn(
                previous.ws.close(CloseCode.REPLACED, "replaced by a newer connection")
            )

    async def closed(self) -> None:
        await self.out.flush_and_stop(0.2)
        proto = self.ws.protocol
        rcvd, sent = proto.close_rcvd, proto.close_sent
        # Graceful (N6) = the node itself closed cleanly; our own 1012/4001/4008 are not.
        peer_first = rcvd is not None and bool(proto.close_rcvd_then_sent)
        graceful = peer_first and rcvd is not None and rcvd.code in GRACEFUL_NODE_CLOSES
        code = int(
            rcvd.code
            if rcvd is not None
            else (sent.code if sent is not None else CloseCode.ABNORMAL)
        )
        self.metrics.closes.labels(ENDPOINT, str(code), str(graceful).lower()).inc()
        if self.node_id is None:
            return
        if self.connections.nodes.get(self.node_id) is self:
            del self.connections.nodes[self.node_id]
        log.info(
            "gateway.node_closed",
            node_id=self.node_id,
            conn_id=self.conn_id,
            close_code=code,
            graceful=graceful,
        )
        await self.registrar.goodbye(
            self.node_id, graceful=graceful, close_code=code, cell=self.cell
        )
