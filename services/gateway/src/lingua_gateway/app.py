"""The gateway app: ``create_app(settings)`` with a lifespan that owns every resource.

One port serves both WebSocket endpoints (``/ws/node``, ``/ws/session``) and the HTTP probes
(``/healthz``, ``/readyz``, ``/metrics``, answered by ``process_request`` during the
handshake). :meth:`GatewayApp.lifespan` opens Redis and RabbitMQ (``Infra.open``), declares
this replica's delivery queue, starts its consumer, the heartbeat coalescer, the liveness
key and the GC policy, and serves; on the way out it drains. Each connection is given only
the collaborators it uses (``ports.NodeDeps`` / ``ports.SessionDeps``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import weakref
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from lingua_gateway.access import Access
from lingua_gateway.coalescer import HeartbeatCoalescer
from lingua_gateway.gcpolicy import GcPolicy
from lingua_gateway.metrics import Metrics
from lingua_gateway.node_endpoint import NodeConnection
from lingua_gateway.placement import Placement
from lingua_gateway.ports import Connections, NodeDeps, SessionDeps
from lingua_gateway.register_rpc import RegisterRpc
from lingua_gateway.router import DeliveryRouter
from lingua_gateway.session_endpoint import SessionConnection
from lingua_gateway.session_store import SessionStore
from lingua_shared.auth import Principal
from lingua_shared.bus import Publisher, consume, declare_queue
from lingua_shared.errors import Unauthorized
from lingua_shared.events import GATEWAY_INBOUND
from lingua_shared.keys import Keys
from lingua_shared.logs import get_logger
from lingua_shared.protocol import CloseCode
from lingua_shared.runtime import Infra, bounded, pause, render_metrics
from lingua_shared.scripts import Scripts
from lingua_shared.settings import Settings

log = get_logger(__name__)
DEFAULT_PORT = 5010
RESTART_REASON = "gateway restarting; reconnect"


class GatewayApp:
    """One gateway replica. Resources (Redis, RabbitMQ, the server) exist inside
    :meth:`lifespan`; connection and handshake state lives here."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.access = Access(settings)
        self.connections = Connections()  # by node id and session id
        self.sockets: dict[ServerConnection, NodeConnection | SessionConnection] = {}
        # handshake outcome per connection, set by process_request, taken by handler
        self.handshakes: weakref.WeakKeyDictionary[
            ServerConnection, Principal | Unauthorized | None
        ] = weakref.WeakKeyDictionary()
        self.draining = False
        self.infra: Infra | None = None
        self.server: Server | None = None
        self.coalescer: HeartbeatCoalescer | None = None
        self.node_deps: NodeDeps | None = None
        self.session_deps: SessionDeps | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[GatewayApp]:
        s = self.settings
        async with Infra.open(s) as infra:
            self.infra = infra
            rpc = RegisterRpc(infra.publisher, s, self.metrics)
            router = DeliveryRouter(self.connections, rpc, self.metrics)
            channel = await infra.consume_channel()
            queue = await declare_queue(channel, infra.topo.gateway_queue_spec(s.instance_id))
            infra.consumers["deliver"] = await consume(
                queue,
                GATEWAY_INBOUND,
                router.on_delivery,
                name="deliver",
                publisher=infra.publisher,
            )
            # Heartbeat batches get a channel of their own: publishes on one channel take
            # turns (aiormq holds its lock until each frame is written), so behind a burst of
            # registrations a batch would wait past a 1 Hz node's 3 s TTL.
            beats = await Publisher.open(infra.amqp, infra.topo, s.amqp_confirm_timeout_s)
            mark_key = infra.keys.heartbeats_applied(s.instance_id)

            async def applied_mark() -> int | None:
                raw = await infra.redis.get(mark_key)
                return int(raw) if raw else None

            self.coalescer = HeartbeatCoalescer(
                beats,
                s.instance_id,
                s.heartbeat_batch_ms,
                s.heartbeat_batch_max,
                self.metrics,
                applied=applied_mark,
                in_flight=s.heartbeat_batches_in_flight,
            )
            self.coalescer.start()
            self.node_deps = NodeDeps(
                settings=s,
                metrics=self.metrics,
                publisher=infra.publisher,
                beats=self.coalescer,
                register=rpc,
                connections=self.connections,
                cells=infra.cell_map,
            )

            def in_cell(cell: str) -> tuple[Keys, Scripts]:
                view = infra.in_cell(cell)
                return view.keys, view.scripts

            store = SessionStore(
                infra.redis, infra.keys, s.session_ttl_s, infra.scripts, s.instance_id, in_cell
            )
            self.session_deps = SessionDeps(
                settings=s,
                metrics=self.metrics,
                publisher=infra.publisher,
                store=store,
                scripts=infra.scripts,
                connections=self.connections,
                cells=infra.cell_map,
                placement=Placement(infra.redis, infra.cell_map, s.gateway_region, self.metrics),
                scripts_in=lambda cell: infra.in_cell(cell).scripts,
            )
            gc_policy = GcPolicy(
                s.gateway_gc_freeze_interval_s, s.gateway_gc_full_interval_s, self.metrics.gc_pause
            )
            gc_policy.start()
            liveness_stop = asyncio.Event()
            liveness = asyncio.create_task(self.liveness_loop(infra, liveness_stop))
            port = s.port or DEFAULT_PORT
            self.server = await serve(
                self.handler,
                s.host,
                port,
                process_request=self.process_request,
                max_size=s.ws_max_frame_bytes,
                compression=None,
                ping_interval=s.ws_ping_interval_s,
                ping_timeout=s.ws_ping_timeout_s,
                open_timeout=s.ws_open_timeout_s,
                close_timeout=2,
                # a restart starts the new process on the same port before the old one stops
                # listening, so connections are never refused in between (docs/operations.md)
                reuse_port=True,
            )
            log.info("gateway.started", instance_id=s.instance_id, port=port)
            try:
                yield self
            finally:
                if not self.draining:
                    await self.drain()
                await bounded(store.close(), "outbox.acks")  # what was written is acked
                # stopped by a flag, never by awaiting a cancellation: one landing inside
                # redis-py can be swallowed, and the await then never ends (the gateway was
                # SIGKILLed after 'gateway.drained' in a clean-clone CI run)
                liveness_stop.set()
                await bounded(liveness, "liveness")
                await gc_policy.stop()
                await bounded(
                    asyncio.gather(  # one key per cell: never one command across cells' slots
                        *(
                            infra.redis.delete(c.keys.gateway(s.instance_id))
                            for c in infra.every_cell()
                        )
                    ),
                    "liveness.key",
                )
                log.info("gateway.stopped", instance_id=s.instance_id)

    # -- WebSocket and HTTP ----------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path).path if ws.request else ""
        is_node = path == "/ws/node"
        endpoint_name = "node" if is_node else "session"
        auth = self.handshakes.pop(ws, None)
        if isinstance(auth, Unauthorized):
            await self.refuse(ws, endpoint_name, "unauthorized", auth.message)
            return
        if auth is not None and not self.access.claim(auth):
            await self.refuse(
                ws, endpoint_name, "identity_limit", "too many connections for this identity"
            )
            return
        assert self.node_deps is not None and self.session_deps is not None  # serving
        # "/ws/node" or "/ws/session": process_request refuses every other path
        endpoint: NodeConnection | SessionConnection = (
            NodeConnection(ws, auth, self.node_deps)
            if is_node
            else SessionConnection(ws, auth, self.session_deps)
        )
        self.sockets[ws] = endpoint
        try:
            if self.draining:
                # accepted just before the drain began: send it elsewhere at once
                await ws.close(CloseCode.SERVICE_RESTART, RESTART_REASON)
                return
            await endpoint.run()
        finally:
            self.sockets.pop(ws, None)
            if auth is not None:
                self.access.release(auth)

    async def refuse(self, ws: ServerConnection, endpoint: str, reason: str, text: str) -> None:
        """Close a connection before reading anything from it (1008, with the reason)."""
        self.metrics.access_refused.labels(endpoint, reason).inc()
        log.info("gateway.access_refused", endpoint=endpoint, reason=reason, detail=text)
        await ws.close(CloseCode.POLICY, text[:120])

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in ("/ws/node", "/ws/session"):
            if self.draining:
                return conn.respond(503, "draining\n")
            if path == "/ws/session" and not self.access.origin_allowed(request):
                self.metrics.access_refused.labels("session", "origin").inc()
                log.info("gateway.origin_refused", origin=request.headers.get("Origin", "")[:200])
                return conn.respond(403, "origin not allowed\n")
            kind = "node" if path == "/ws/node" else "client"
            self.handshakes[conn] = self.access.authenticate(request, kind)
            return None
        if path == "/healthz":
            return conn.respond(200, "ok\n")
        if path == "/readyz":
            assert self.infra is not None  # the server runs inside the lifespan
            ok, checks = await self.infra.readiness()
            ok = ok and not self.draining
            checks["draining"] = self.draining
            resp = conn.respond(
                200 if ok else 503, orjson.dumps({"ready": ok, "checks": checks}).decode()
            )
            resp.headers["Content-Type"] = "application/json"
            return resp
        if path == "/metrics":
            resp = conn.respond(200, render_metrics(self.metrics.registry).decode())
            resp.headers["Content-Type"] = "text/plain; version=0.0.4"
            return resp
        return conn.respond(404, "not found\n")

    async def liveness_loop(self, infra: Infra, stop: asyncio.Event) -> None:
        """Redis knows which gateway replicas are alive (node-manager reconciles against it):
        a key in every cell, since each cell's scripts and sweeps read their own."""
        keys = [c.keys.gateway(self.settings.instance_id) for c in infra.every_cell()]
        ttl = self.settings.gateway_liveness_ttl_ms
        while not stop.is_set():
            for key in keys:
                with contextlib.suppress(Exception):
                    await infra.redis.set(key, "1", px=ttl)
            await pause(stop, ttl / 3000)

    async def drain(self) -> None:
        """Stop accepting, send every peer elsewhere (1012) once what it is owed is out.

        Nodes are closed at once: they reconnect to another replica, their pools are kept
        (a 1012 is a drop, not a goodbye) and their running jobs report on the new
        connection. A session cannot move (its audio and order state live here), so it
        takes no new utterance from now on and is closed once every utterance it had
        published is answered, or at ``drain_timeout_s``; its client opens a new session
        elsewhere and sends again what got no answer. Deliveries keep being consumed until
        the last session is closed.
        """
        server = self.server
        assert server is not None  # the server runs inside the lifespan
        # Stop listening before anything else: with SO_REUSEPORT a replacement process on the
        # same port then takes every new connection, instead of this one answering 503.
        server.server.close()
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        sessions = [e for e in self.sockets.values() if isinstance(e, SessionConnection)]
        log.info(
            "gateway.draining",
            instance_id=self.settings.instance_id,
            connections=len(self.sockets),
            sessions=len(sessions),
        )
        server.close(close_connections=False)
        await asyncio.gather(
            *(
                e.ws.close(CloseCode.SERVICE_RESTART, RESTART_REASON)
                for e in list(self.sockets.values())
                if isinstance(e, NodeConnection)
            ),
            *(s.drain(deadline, CloseCode.SERVICE_RESTART) for s in sessions),
            return_exceptions=True,
        )
        while self.sockets and loop.time() < deadline + 1.0:
            await asyncio.sleep(0.05)
        if self.coalescer is not None:
            await self.coalescer.stop()
        await server.wait_closed()
        log.info(
            "gateway.drained",
            instance_id=self.settings.instance_id,
            left_open=len(self.sockets),
        )


def create_app(settings: Settings) -> GatewayApp:
    return GatewayApp(settings)


async def run(app: GatewayApp) -> None:
    """Serve until SIGTERM or SIGINT, then drain and close."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with app.lifespan():
        await stop.wait()
        await app.drain()
