"""Background loops: the expiry sweeper (N6), the slot recount and the connected-view
reconciliation (N7).

Every replica runs them; the scripts are idempotent, so concurrent sweeps are harmless.
The sweeper reads ``nodes:expiry`` (a zset of logical deadlines), so its cost is the number
of expired nodes, never the number of nodes. It judges expiries behind the gateways'
heartbeat watermark (:func:`expiry_horizon`): a node is expired only once every beat its
gateway read before the node's deadline is applied, so a busy host, where beats wait at the
gateway or on the bus, delays expiries instead of expiring live nodes. The slot recount walks
``nodes:all`` a bounded batch per tick (``SLOT_BATCH`` nodes), so a whole pass over N nodes
takes N / SLOT_BATCH sweep intervals.
"""

from __future__ import annotations

import asyncio
import time

from lingua_node_manager.metrics import Metrics
from lingua_shared.errors import ScriptRejected
from lingua_shared.logs import get_logger
from lingua_shared.runtime import Infra, now_ms, pause
from lingua_shared.scripts import ScriptCode, node_offline

log = get_logger(__name__)
SWEEP_BATCH = 500
SLOT_BATCH = 200  # nodes recounted per tick
# a beat the gateway's loop had received but not yet stamped when it cut a batch is stamped
# after the cut: expiries are judged this far behind the watermark to cover that
WATERMARK_SLACK_MS = 500
HELD_LOG_EVERY_S = 10.0
_last_held_log = [0.0]


async def expiry_horizon(infra: Infra, metrics: Metrics, now: int) -> int:
    """The time up to which nodes' deadlines are judged: the oldest heartbeat watermark of
    the live gateway replicas (``heartbeats:covered``, moved by node-manager as it applies
    their batches; each gateway sends an empty batch when it has no beats, so an idle one
    keeps up) less :data:`WATERMARK_SLACK_MS`, never later than ``now`` and never more than
    ``LINGUA_NODE_EXPIRY_HOLD_MAX_MS`` behind it (a heartbeat pipeline stuck that long no
    longer holds expiries). A replica without a liveness key holds nothing: its nodes'
    sockets are gone with it; its watermark is dropped once it is older than the hold."""
    hold_max = infra.settings.node_expiry_hold_max_ms
    if hold_max <= 0:
        return now
    r, k = infra.redis, infra.keys
    marks = await r.hgetall(k.heartbeats_covered)
    horizon = now
    lagging = ""
    if marks:
        gateways = [g.decode() for g in marks]
        async with r.pipeline(transaction=False) as pipe:
            for gw in gateways:
                pipe.exists(k.gateway(gw))
            alive = await pipe.execute()
        gone: list[str] = []
        for gw, raw, live in zip(gateways, marks.values(), alive, strict=True):
            covered = int(raw)
            if live:
                if covered - WATERMARK_SLACK_MS < horizon:
                    horizon, lagging = covered - WATERMARK_SLACK_MS, gw
            elif now - covered > hold_max:
                gone.append(gw)
        if gone:
            await r.hdel(k.heartbeats_covered, *gone)
    capped = horizon < now - hold_max
    horizon = max(horizon, now - hold_max)
    held = await r.zcount(k.nodes_expiry, horizon + 1, now) if horizon < now else 0
    metrics.expiry_hold.set((now - horizon) / 1000)
    metrics.expiries_held.set(held)
    if held and (capped or now - horizon > 2 * WATERMARK_SLACK_MS):
        mono = time.monotonic()
        if mono - _last_held_log[0] >= HELD_LOG_EVERY_S:
            _last_held_log[0] = mono
            log.warning(
                "node.expiries_held" if not capped else "node.expiry_hold_capped",
                held=held,
                behind_s=round((now - horizon) / 1000, 2),
                gateway_id=lagging,
            )
    return horizon


async def sweep_once(infra: Infra, metrics: Metrics, now: int | None = None) -> int:
    """Clean every node whose logical expiry has passed behind the heartbeat watermark
    (:func:`expiry_horizon`); returns how many were removed."""
    now = await expiry_horizon(infra, metrics, now if now is not None else now_ms())
    removed = 0
    while True:
        due = await infra.redis.zrangebyscore(
            infra.keys.nodes_expiry, "-inf", now, start=0, num=SWEEP_BATCH
        )
        if not due:
            return removed
        results = await infra.scripts.run_all(
            node_offline,
            ({"node_id": raw.decode(), "mode": "expired", "now_ms": now} for raw in due),
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, ScriptRejected):
                raise result
        batch_removed = 0
        for raw, result in zip(due, results, strict=True):
            # an id the script refuses (ScriptRejected) is left alone: nothing was written
            if not isinstance(result, ScriptRejected) and result.code == ScriptCode.OFFLINE:
                batch_removed += 1
                log.info("node.expired", node_id=raw.decode(), pools_removed=result.pools_removed)
        removed += batch_removed
        metrics.swept.inc(batch_removed)
        if len(due) < SWEEP_BATCH or batch_removed == 0:
            return removed


class SlotRecount:
    """Recount nodes' ``reserved`` / ``running`` from their live jobs (``slots_reconcile``),
    ``SLOT_BATCH`` nodes per tick, walking ``nodes:all`` with SSCAN: a slot whose job record
    expired while it held it (a dispatcher outage longer than the job TTL, say) comes back
    within one pass instead of shrinking the node's capacity for good."""

    def __init__(self, infra: Infra, metrics: Metrics, batch: int = SLOT_BATCH) -> None:
        self.infra = infra
        self.metrics = metrics
        self.batch = batch
        self.cursor = 0

    async def tick(self) -> int:
        """One bounded step of the walk; returns how many nodes had their counts fixed."""
        r, k = self.infra.redis, self.infra.keys
        self.cursor, raw = await r.sscan(k.nodes_all, self.cursor, count=self.batch)
        ids = sorted({m.decode() for m in raw})
        fixed = dropped = 0
        for i in range(0, len(ids), 500):
            result = await self.infra.scripts.slots_reconcile(node_ids=ids[i : i + 500])
            fixed += result.fixed
            dropped += result.dropped
        if fixed:
            self.metrics.reconciled.labels("slots").inc(fixed)
            log.info("node.slots_recounted", nodes=fixed, jobs_dropped=dropped)
        if dropped:
            self.metrics.reconciled.labels("slot_jobs_dropped").inc(dropped)
        return fixed

    async def full_pass(self) -> int:
        """Every node once (tests, tools): ticks until the walk is back at its start."""
        fixed = await self.tick()
        while self.cursor != 0:
            fixed += await self.tick()
        return fixed


async def reconcile_once(infra: Infra, metrics: Metrics) -> dict[str, int]:
    """Align the display view ``nodes:connected`` with the node records, one way (N7).

    Redis node records win: a view entry whose node is gone, not connected, or held by a
    gateway replica that is no longer alive is removed (the last also marks the node dropped,
    since no gateway holds it); a connected node missing from the view is added. A gateway
    counts as gone only when its liveness key is missing *and* the node's heartbeats have
    stopped for a liveness TTL: a live gateway whose key was briefly lost (a Redis flush or
    restart) keeps its nodes.
    """
    r, k, s = infra.redis, infra.keys, infra.scripts
    fixes = {"removed": 0, "added": 0, "gateway_lost": 0}
    live_gateways: dict[str, bool] = {}

    async def gateway_alive(gw: str) -> bool:
        if gw not in live_gateways:
            live_gateways[gw] = bool(await r.exists(k.gateway(gw)))
        return live_gateways[gw]

    view = {m.decode() for m in await r.zrange(k.nodes_connected, 0, -1)}
    all_nodes = {m.decode() for m in await r.smembers(k.nodes_all)}
    ids = sorted(view | all_nodes)
    now = now_ms()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        async with r.pipeline(transaction=False) as pipe:
            for node_id in chunk:
                pipe.hmget(
                    k.node(node_id), "connected", "gateway_id", "conn_id", "last_heartbeat_ts"
                )
            records = await pipe.execute()
        for node_id, (connected, gw, conn, last_hb) in zip(chunk, records, strict=True):
            is_connected = connected == b"1"
            silent = now - int(last_hb or 0) > infra.settings.gateway_liveness_ttl_ms
            if is_connected and gw and silent and not await gateway_alive(gw.decode()):
                await s.node_offline(
                    node_id=node_id, mode="dropped", conn_id=conn.decode(), now_ms=now
                )
                fixes["gateway_lost"] += 1
                log.info("node.gateway_lost", node_id=node_id, gateway_id=gw.decode())
                continue
            if node_id in view and not is_connected:
                await r.zrem(k.nodes_connected, node_id)
                fixes["removed"] += 1
            elif is_connected and node_id not in view:
                await r.zadd(k.nodes_connected, {node_id: now})
                fixes["added"] += 1
    for fix, n in fixes.items():
        if n:
            metrics.reconciled.labels(fix).inc(n)
    return fixes


async def run_every(interval_s: float, name: str, stop: asyncio.Event, fn, *args) -> None:  # type: ignore[no-untyped-def]
    """Run ``fn(*args)`` every ``interval_s`` until ``stop`` (checked between rounds)."""
    while not stop.is_set():
        try:
            await fn(*args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("node_manager.loop_failed", loop=name, error=repr(exc))
        await pause(stop, interval_s)
