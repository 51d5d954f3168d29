"""Handlers of node events: registration (RPC), heartbeat batches, disconnections."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from lingua_node_manager.metrics import Metrics
from lingua_node_manager.reregister import ReregisterGate
from lingua_shared.bus import Unroutable
from lingua_shared.errors import DependencyDown, ScriptRejected
from lingua_shared.events import (
    HeartbeatBatch,
    NodeDisconnected,
    NodeEvent,
    NodeRegisterEvent,
    RegisterReply,
    ToNode,
)
from lingua_shared.logs import get_logger
from lingua_shared.protocol import CloseCode, NodeControl
from lingua_shared.runtime import Infra, now_ms
from lingua_shared.scripts import ScriptCode, heartbeat_batch
from lingua_shared.scripts.heartbeat_batch import beat_args

log = get_logger(__name__)
REPLACED_CLOSE_CODE = CloseCode.REPLACED
BEATS_PER_CALL = 200  # ~2 ms of Redis per call at most
APPLIED_MARK_TTL_MS = 600_000  # a gateway's applied mark outlives its last batch by this
# node_offline's outcomes as the disconnect metric and log name them
OFFLINE_OUTCOMES = {
    ScriptCode.OFFLINE: "done",
    ScriptCode.ALREADY_GONE: "already_gone",
    ScriptCode.STALE_CONN: "stale_conn",
}


class NodeEventHandler:
    def __init__(self, infra: Infra, metrics: Metrics) -> None:
        self.infra = infra
        self.metrics = metrics
        self.reregister_gate = ReregisterGate(infra.settings.reregister_interval_ms / 1000)
        # per gateway replica: its batches are applied one after another, in the order they
        # arrived, so that its watermark (covers_ms) never runs ahead of a batch still being
        # applied here; [lock, users], dropped when no batch of that gateway is in hand
        self._batch_order: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def __call__(self, event: NodeEvent, message: AbstractIncomingMessage) -> None:
        if isinstance(event, HeartbeatBatch):
            await self.heartbeats(event)
        elif isinstance(event, NodeRegisterEvent):
            await self.register(event, message)
        else:
            await self.disconnected(event)

    async def register(self, ev: NodeRegisterEvent, message: AbstractIncomingMessage) -> None:
        s = self.infra.scripts
        now = now_ms()
        try:
            result = await s.register_node_v2(
                node_id=ev.node_id,
                now_ms=now,
                ttl_ms=ev.ttl_ms,
                region=ev.region,
                gpu_tier=ev.gpu_tier,
                lang_sets=ev.lang_sets,
                capacity=ev.capacity,
                services=ev.services,
                gateway_id=ev.gateway_id,
                conn_id=ev.conn_id,
                meta=ev.meta,
                acks=ev.acks_jobs,
                public=ev.accept_public_jobs,
                tenant=ev.tenant,
            )
            if result.code == ScriptCode.CONN_REPLACED:
                await self.replaced_registration(ev, message)
                return
            # Pools right away, so the ack means "you are in your pools" (heartbeat script).
            hb = await s.heartbeat_with_pool_assign(
                node_id=ev.node_id,
                conn_id=ev.conn_id,
                gateway_id=ev.gateway_id,
                now_ms=now,
                ttl_ms=ev.ttl_ms,
                max_shard_size=self.infra.settings.pool_shard_size,
            )
        except ScriptRejected as exc:
            self.metrics.events.labels("node.register", "rejected").inc()
            log.warning("node.register_rejected", node_id=ev.node_id, reason=exc.message)
            await self._reply(
                ev,
                message,
                RegisterReply(
                    node_id=ev.node_id,
                    conn_id=ev.conn_id,
                    ok=False,
                    error_code="INVALID_CAPABILITY_SCHEMA",
                    message=exc.message,
                ),
            )
            return
        self.reregister_gate.forget(ev.node_id, ev.conn_id)
        # A gateway replica that registered nodes but had no heartbeat batch applied yet (one
        # just started, in a registration storm) has no watermark, and its nodes' expiries
        # would be judged by the clock: its first one is just before this registration was
        # sent (never moved back: set only when there is none).
        await self.infra.redis.hsetnx(
            self.infra.keys.heartbeats_covered, ev.gateway_id, max(0, ev.sent_at_ms - 1)
        )
        log.info(
            "node.registered",
            node_id=ev.node_id,
            conn_id=ev.conn_id,
            gateway_id=ev.gateway_id,
            created=result.created,
            pools_changed=hb.pools_changed,
            region=ev.region,
            gpu_tier=ev.gpu_tier,
            lang_sets=ev.lang_sets,
            trace_id=ev.trace_id,
        )
        self.metrics.events.labels(
            "node.register", "created" if result.created else "refreshed"
        ).inc()
        delivered = await self._reply(
            ev,
            message,
            RegisterReply(
                node_id=ev.node_id,
                conn_id=ev.conn_id,
                ok=True,
                created=result.created,
                message="registered" if result.created else "re-registered",
            ),
        )
        if not delivered:
            # The gateway that asked is gone, and with it the connection: not schedulable.
            await s.node_offline(
                node_id=ev.node_id, mode="dropped", conn_id=ev.conn_id, now_ms=now_ms()
            )
        if result.replaced_conn_id and result.replaced_gateway_id:
            await self._send(
                result.replaced_gateway_id,
                ToNode(
                    node_id=ev.node_id,
                    conn_id=result.replaced_conn_id,
                    close_code=REPLACED_CLOSE_CODE,
                    close_reason="replaced by a newer connection",
                ),
            )

    async def replaced_registration(
        self, ev: NodeRegisterEvent, message: AbstractIncomingMessage
    ) -> None:
        """A registration from a connection a newer one already replaced (a late or
        republished request): nothing was written; that connection, if still open, is
        refused and closed as replaced, so it never takes the node from the live one."""
        self.metrics.events.labels("node.register", "replaced_conn").inc()
        log.info(
            "node.register_stale_conn",
            node_id=ev.node_id,
            conn_id=ev.conn_id,
            gateway_id=ev.gateway_id,
        )
        await self._reply(
            ev,
            message,
            RegisterReply(
                node_id=ev.node_id,
                conn_id=ev.conn_id,
                ok=False,
                error_code="NODE_REPLACED",
                message="this connection was replaced by a newer one",
            ),
        )
        await self._send(
            ev.gateway_id,
            ToNode(
                node_id=ev.node_id,
                conn_id=ev.conn_id,
                close_code=REPLACED_CLOSE_CODE,
                close_reason="replaced by a newer connection",
            ),
        )

    async def _reply(
        self, ev: NodeRegisterEvent, message: AbstractIncomingMessage, reply: RegisterReply
    ) -> bool:
        target = message.reply_to or ev.gateway_id
        return await self._send(target, reply, correlation_id=message.correlation_id)

    async def _send(
        self, gateway_id: str, model: RegisterReply | ToNode, correlation_id: str | None = None
    ) -> bool:
        try:
            await self.infra.publisher.to_gateway(gateway_id, model, correlation_id=correlation_id)
            return True
        except Unroutable:
            log.warning("node.gateway_gone", gateway_id=gateway_id, node_id=model.node_id)
            return False

    async def heartbeats(self, batch: HeartbeatBatch) -> None:
        """Apply a gateway's batch after any earlier one of the same gateway in hand here."""
        gw = batch.gateway_id
        entry = self._batch_order.get(gw)
        if entry is None:
            entry = self._batch_order[gw] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                await self._apply_batch(batch)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._batch_order[gw]

    async def _apply_batch(self, batch: HeartbeatBatch) -> None:
        """Apply a whole batch in one pipelined round trip: ``heartbeat_batch`` calls of at
        most ``BEATS_PER_CALL`` beats each (one command per call instead of one per beat,
        each call short enough not to hold Redis up for selection)."""
        now = now_ms()
        shard_size = self.infra.settings.pool_shard_size
        beats = batch.beats
        calls = [
            {
                "gateway_id": batch.gateway_id,
                "now_ms": now,
                "max_shard_size": shard_size,
                "beats": [
                    beat_args(
                        node_id=b.node_id,
                        conn_id=b.conn_id,
                        running_jobs=b.running_jobs,
                        cpu_percent=b.cpu_percent,
                        gpu_percent=b.gpu_percent,
                        mem_percent=b.mem_percent,
                        status=b.status,
                        lang_sets=b.lang_sets,
                        services=b.services,
                    )
                    for b in beats[i : i + BEATS_PER_CALL]
                ],
            }
            for i in range(0, len(beats), BEATS_PER_CALL)
        ]
        results: list[Any] = []
        for call, outcome in zip(
            calls, await self.infra.scripts.run_all(heartbeat_batch, calls), strict=True
        ):
            # a call that failed as a whole (a Redis error) fails each of its beats
            n = len(call["beats"])
            results.extend(outcome if isinstance(outcome, list) else [outcome] * n)
        if batch.beats:  # an empty batch only moves the gateway's watermark
            self.metrics.batch_size.observe(len(batch.beats))
        reregister: list[tuple[str, str]] = []
        outcomes: Counter[str] = Counter()
        lag = self.metrics.apply_lag
        for beat, result in zip(batch.beats, results, strict=True):
            lag.observe(max(0.0, (now - beat.ts_ms) / 1000))
            if isinstance(result, ScriptRejected):
                outcomes["invalid"] += 1
                field = (result.details or {}).get("field")
                log.error("node.heartbeat_invalid", node_id=beat.node_id, field=field)
            elif isinstance(result, Exception):
                if isinstance(result, (ConnectionError, TimeoutError, OSError)):
                    raise DependencyDown(f"heartbeat batch failed: {result!r}")
                log.error("node.heartbeat_failed", node_id=beat.node_id, error=repr(result))
                outcomes["error"] += 1
            elif result.code == ScriptCode.ALIVE:
                outcomes["alive"] += 1
                if result.pools_changed:
                    log.info("node.pools_assigned", node_id=beat.node_id, conn_id=beat.conn_id)
            elif result.code == ScriptCode.NOT_REGISTERED:
                outcomes["not_registered"] += 1
                reregister.append((beat.node_id, beat.conn_id))
            elif result.code == ScriptCode.STALE:
                outcomes["stale"] += 1
        for outcome, n in outcomes.items():
            self.metrics.heartbeats.labels(outcome).inc(n)
        if batch.seq is not None:
            # the gateway's flow control (it sends its next batch once this one is applied)
            # and its watermark (the sweeper expires nodes only behind it)
            await self.infra.scripts.heartbeats_applied(
                gateway_id=batch.gateway_id,
                seq=batch.seq,
                ttl_ms=APPLIED_MARK_TTL_MS,
                covers_ms=batch.covers_ms,
            )
        for node_id, conn_id in reregister:
            if not self.reregister_gate.should_ask(node_id, conn_id):
                # asked within the window; its registration is on the way (or the next
                # beat after the window asks again)
                self.metrics.reregister_suppressed.inc()
                continue
            log.info("node.reregister_requested", node_id=node_id, conn_id=conn_id)
            self.metrics.reregister.inc()
            # the gateway registers the node again from the registration it holds; a node
            # it holds none for (one that resumed with a heartbeat) is sent node_control
            await self._send(
                batch.gateway_id,
                ToNode(
                    node_id=node_id,
                    conn_id=conn_id,
                    reregister=True,
                    payload=NodeControl(
                        command="reregister", reason="node not known to the scheduler"
                    ).to_wire(),
                ),
            )

    async def disconnected(self, ev: NodeDisconnected) -> None:
        mode = "graceful" if ev.graceful else "dropped"
        result = await self.infra.scripts.node_offline(
            node_id=ev.node_id, mode=mode, conn_id=ev.conn_id, now_ms=now_ms()
        )
        outcome = OFFLINE_OUTCOMES.get(result.code, "other")
        self.metrics.events.labels("node.disconnected", f"{mode}_{outcome}").inc()
        log.info(
            "node.offline" if ev.graceful else "node.dropped",
            node_id=ev.node_id,
            conn_id=ev.conn_id,
            close_code=ev.close_code,
            outcome=outcome,
            pools_removed=result.pools_removed,
        )
