"""The gateway process: WebSocket endpoints, HTTP health/metrics, delivery consumer, drain."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import weakref
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from urllib.parse import urlsplit

import orjson
from aio_pika.abc import AbstractIncomingMessage
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from lingua_gateway.access import POLICY_CLOSE, Access
from lingua_gateway.coalescer import HeartbeatCoalescer
from lingua_gateway.gcpolicy import GcPolicy
from lingua_gateway.metrics import Metrics
from lingua_gateway.node_endpoint import NodeConnection
from lingua_gateway.session_endpoint import SessionConnection
from lingua_shared.auth import Principal
from lingua_shared.bus import Publisher, consume, declare_queue
from lingua_shared.errors import Unauthorized
from lingua_shared.events import (
    GATEWAY_INBOUND,
    GatewayInbound,
    NodeRegisterEvent,
    RegisterReply,
    ToSession,
)
from lingua_shared.logs import get_logger
from lingua_shared.runtime import Infra, render_metrics
from lingua_shared.settings import Settings

log = get_logger(__name__)
DEFAULT_PORT = 5010
RESTART_CLOSE_CODE = 1012


class Gateway:
    def __init__(self, settings: Settings, infra: Infra, metrics: Metrics) -> None:
        self.settings = settings
        self.infra = infra
        self.metrics = metrics
        self.nodes: dict[str, NodeConnection] = {}
        self.sessions: dict[str, SessionConnection] = {}
        self.pending: dict[str, asyncio.Future[RegisterReply]] = {}
        self.coalescer = HeartbeatCoalescer(
            infra.publisher,  # replaced by a channel of its own in running_gateway
            settings.instance_id,
            settings.heartbeat_batch_ms,
            settings.heartbeat_batch_max,
            metrics,
        )
        self.draining = False
        self.access = Access(settings)
        # handshake outcome per connection, set by process_request, taken by handler
        self.handshakes: weakref.WeakKeyDictionary[
            ServerConnection, Principal | Unauthorized | None
        ] = weakref.WeakKeyDictionary()
        self.connections: dict[ServerConnection, NodeConnection | SessionConnection] = {}
        self._background: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, holding a reference until it ends."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- register RPC over the bus ---------------------------------------------------------
    async def register_rpc(self, event: NodeRegisterEvent, correlation_id: str) -> RegisterReply:
        """Publish a registration and wait for node-manager's reply, however long it takes.

        A registering node is held, never refused for slowness: lingua's agent has no timeout
        on its ack and retries a closed socket only once, so a registration storm must queue.
        The request is published again every ``register_republish_s`` (the reply to any copy
        answers; node-manager's script makes a copy a refresh) and again after a failed
        publish (broker down), with a growing pause. The caller cancels it (the socket
        closed)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[RegisterReply] = loop.create_future()
        self.pending[correlation_id] = fut
        started = loop.time()
        next_publish, retry, slow = started, 0.5, False
        try:
            while True:
                if loop.time() >= next_publish:
                    try:
                        await self.infra.publisher.event(
                            "node.register",
                            event,
                            reply_to=s.instance_id,
                            correlation_id=correlation_id,
                        )
                        next_publish, retry = loop.time() + s.register_republish_s, 0.5
                    except Exception as exc:
                        self.metrics.publish_failures.labels("node_register").inc()
                        log.warning(
                            "gateway.register_publish_failed",
                            node_id=event.node_id,
                            error=repr(exc),
                        )
                        next_publish, retry = loop.time() + retry, min(retry * 2, 10.0)
                wait = next_publish - loop.time()
                if not slow:
                    wait = min(wait, started + s.register_timeout_s - loop.time())
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(fut), max(0.0, wait))
                if not slow and loop.time() >= started + s.register_timeout_s:
                    slow = True
                    self.metrics.registrations_slow.inc()
                    log.warning(
                        "gateway.registration_slow",
                        node_id=event.node_id,
                        conn_id=event.conn_id,
                        waited_s=s.register_timeout_s,
                    )
        finally:
            self.pending.pop(correlation_id, None)

    async def on_delivery(self, msg: GatewayInbound, message: AbstractIncomingMessage) -> None:
        if isinstance(msg, RegisterReply):
            fut = self.pending.get(message.correlation_id or "")
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        if isinstance(msg, ToSession):
            self.deliver_to_session(msg)
            return
        conn = self.nodes.get(msg.node_id)
        if conn is None or (msg.conn_id and conn.conn_id != msg.conn_id):
            log.info("gateway.to_node_not_held", node_id=msg.node_id, conn_id=msg.conn_id)
            return
        if msg.reregister and conn.reregister():
            return  # registered again from what this connection holds; the node sees an ack
        if msg.payload is not None:
            conn.send_to_node(msg.payload)
        if msg.close_code is not None:
            await conn.out.flush_and_stop(0.5)
            await conn.ws.close(msg.close_code, msg.close_reason[:120])

    def deliver_to_session(self, msg: ToSession) -> None:
        """Hand a dispatcher message to the session's connection, if this replica holds it.

        A session that closed (or moved to another replica) no longer matches: the message
        is dropped and counted; the dispatcher's record of the session says where it went.
        """
        session = self.sessions.get(msg.session_id)
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
        # "/ws/node" or "/ws/session": process_request refuses every other path
        endpoint: NodeConnection | SessionConnection = (
            NodeConnection(self, ws, auth) if is_node else SessionConnection(self, ws, auth)
        )
        self.connections[ws] = endpoint
        try:
            if self.draining:
                # accepted just before the drain began: send it elsewhere at once
                await ws.close(RESTART_CLOSE_CODE, "gateway restarting; reconnect")
                return
            await endpoint.run()
        finally:
            self.connections.pop(ws, None)
            if auth is not None:
                self.access.release(auth)

    async def refuse(self, ws: ServerConnection, endpoint: str, reason: str, text: str) -> None:
        """Close a connection before reading anything from it (1008, with the reason)."""
        self.metrics.access_refused.labels(endpoint, reason).inc()
        log.info("gateway.access_refused", endpoint=endpoint, reason=reason, detail=text)
        await ws.close(POLICY_CLOSE, text[:120])

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

    async def liveness_loop(self) -> None:
        """Redis knows which gateway replicas are alive (node-manager reconciles against it)."""
        key = self.infra.keys.gateway(self.settings.instance_id)
        ttl = self.settings.gateway_liveness_ttl_ms
        while True:
            with contextlib.suppress(Exception):
                await self.infra.redis.set(key, "1", px=ttl)
            await asyncio.sleep(ttl / 3000)

    async def drain(self, server: Server) -> None:
        """Stop accepting, send every peer elsewhere (1012) once what it is owed is out.

        Nodes are closed at once: they reconnect to another replica, their pools are kept
        (a 1012 is a drop, not a goodbye) and their running jobs report on the new
        connection. A session cannot move (its audio and order state live here), so it
        takes no new utterance from now on and is closed once every utterance it had
        published is answered, or at ``drain_timeout_s``; its client opens a new session
        elsewhere and sends again what got no answer. Deliveries keep being consumed until
        the last session is closed.
        """
        # Stop listening before anything else: with SO_REUSEPORT a replacement process on the
        # same port then takes every new connection, instead of this one answering 503.
        server.server.close()
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        sessions = [e for e in self.connections.values() if isinstance(e, SessionConnection)]
        log.info(
            "gateway.draining",
            instance_id=self.settings.instance_id,
            connections=len(self.connections),
            sessions=len(sessions),
        )
        server.close(close_connections=False)
        await asyncio.gather(
            *(
                e.ws.close(RESTART_CLOSE_CODE, "gateway restarting; reconnect")
                for e in list(self.connections.values())
                if isinstance(e, NodeConnection)
            ),
            *(s.drain(deadline, RESTART_CLOSE_CODE) for s in sessions),
            return_exceptions=True,
        )
        while self.connections and loop.time() < deadline + 1.0:
            await asyncio.sleep(0.05)
        await self.coalescer.stop()
        await server.wait_closed()
        log.info(
            "gateway.drained",
            instance_id=self.settings.instance_id,
            left_open=len(self.connections),
        )


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[tuple[Gateway, Server]]:
    metrics = Metrics()
    async with Infra.open(settings) as infra:
        gw = Gateway(settings, infra, metrics)
        channel = await infra.consume_channel()
        queue = await declare_queue(channel, infra.topo.gateway_queue_spec(settings.instance_id))
        infra.consumers["deliver"] = await consume(
            queue, GATEWAY_INBOUND, gw.on_delivery, name="deliver", publisher=infra.publisher
        )
        # Heartbeat batches get a channel of their own: publishes on one channel take turns
        # (aiormq holds its lock until each frame is written), so behind a burst of
        # registration RPCs a batch waited seconds, past a 1 Hz node's 3 s TTL.
        gw.coalescer.publisher = await Publisher.open(
            infra.amqp, infra.topo, settings.amqp_confirm_timeout_s
        )
        gw.coalescer.start()
        gc_policy = GcPolicy(
            settings.gateway_gc_freeze_interval_s,
            settings.gateway_gc_full_interval_s,
            metrics.gc_pause,
        )
        gc_policy.start()
        liveness = asyncio.create_task(gw.liveness_loop())
        server = await serve(
            gw.handler,
            settings.host,
            settings.port or DEFAULT_PORT,
            process_request=gw.process_request,
            max_size=settings.ws_max_frame_bytes,
            compression=None,
            ping_interval=settings.ws_ping_interval_s,
            ping_timeout=settings.ws_ping_timeout_s,
            close_timeout=2,
            # a restart starts the new process on the same port before the old one stops
            # listening, so connections are never refused in between (docs/operations.md)
            reuse_port=True,
        )
        log.info(
            "gateway.started", instance_id=settings.instance_id, port=settings.port or DEFAULT_PORT
        )
        try:
            yield gw, server
        finally:
            if not gw.draining:
                await gw.drain(server)
            liveness.cancel()
            with contextlib.suppress(BaseException):
                await liveness
            await gc_policy.stop()
            with contextlib.suppress(Exception):
                await infra.redis.delete(infra.keys.gateway(settings.instance_id))
            log.info("gateway.stopped", instance_id=settings.instance_id)


async def serve_forever(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_gateway(settings) as (gw, server):
        await stop.wait()
        await gw.drain(server)
