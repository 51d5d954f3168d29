"""Connection fencing through the real services (gateway, node-manager, dispatcher as
processes; real Redis and RabbitMQ).

Node X registers on connection A and runs a job; X registers again on connection B; then a
heartbeat batch of A that was still on its way arrives, and A's drop is reported (both go on
the bus exactly as gateway ``gw-a`` publishes them). Before fencing, the late beat made A the
node's connection again, node-manager marked X disconnected on A's drop, and the dispatcher
took X's running job back, all while X was alive on B.
"""

from __future__ import annotations

import asyncio
import json

import aio_pika
import pytest
from websockets.asyncio.client import connect

from lingua_shared.bus import Topology, encode
from lingua_shared.events import Beat, HeartbeatBatch, NodeDisconnected
from lingua_shared.runtime import now_ms
from lingua_shared.scripts import ScriptCode, Scripts
from tests.support.helpers import eventually, metric, node_state, register_frame
from tests.support.stack import start_all

pytestmark = pytest.mark.integration

NODE = "node-fence"


async def test_late_beat_and_drop_of_a_replaced_connection_leave_the_node_alive(
    stack, redis, amqp_url: str, bus_prefix: str
) -> None:
    keys = stack.keys
    start_all(stack, ("disp-1", "dispatcher"))
    scripts = await Scripts.load(redis, keys)
    a = await connect(stack.gateway_url())
    await a.send(register_frame(NODE))
    assert json.loads(await asyncio.wait_for(a.recv(), 10))["node_id"] == NODE
    conn_a = (await node_state(redis, keys, NODE))["conn_id"]

    # a job runs on X (reserved as the dispatcher reserves it; nothing is sent to the node)
    created = await scripts.job_create(
        request_key="s-fence:0", job_id="j-fence", now_ms=now_ms(), ttl_ms=600_000,
        fields={"session_id": "s-fence", "utterance_index": 0}, audio="QUJD",
    )  # fmt: skip
    assert created.code == ScriptCode.JOB_CREATED
    sel = await scripts.select_node(
        job_id="j-fence", attempt=1, now_ms=now_ms(), lease_ms=60_000, pair_src="zh",
        pair_tgt="en", services=["asr", "semantic"], policy="pack", candidates=8,
        wait_until_ms=0, retry_ms=100, deadline_ms=60_000,
    )  # fmt: skip
    assert sel.node_id == NODE
    job_before = await redis.hmget(keys.job("j-fence"), "state", "attempt", "node_id")
    slots_before = await redis.hmget(keys.node(NODE), "reserved", "running")

    async with connect(stack.gateway_url()) as b:
        await b.send(register_frame(NODE))
        assert json.loads(await asyncio.wait_for(b.recv(), 10))["node_id"] == NODE
        state = await node_state(redis, keys, NODE)
        assert state["conn_id"] != conn_a and state["connected"] == "1"
        conn_b = state["conn_id"]

        # A's late heartbeat batch, then A's drop, as gw-a publishes them
        topo = Topology(bus_prefix)
        conn = await aio_pika.connect(amqp_url, timeout=5)
        try:
            channel = await conn.channel()
            events = await channel.get_exchange(topo.events)
            late = HeartbeatBatch(
                gateway_id="gw-a",
                sent_at_ms=now_ms(),
                beats=[Beat(node_id=NODE, conn_id=conn_a, ts_ms=now_ms(), running_jobs=1)],
            )
            await events.publish(aio_pika.Message(encode(late)), routing_key=late.kind)
            await eventually(
                lambda: _stale_beats(stack), what="node-manager to apply the late beat"
            )
            drop = NodeDisconnected(
                node_id=NODE,
                conn_id=conn_a,
                gateway_id="gw-a",
                graceful=False,
                close_code=1006,
                ts_ms=now_ms(),
            )
            await events.publish(aio_pika.Message(encode(drop)), routing_key=drop.kind)
        finally:
            await conn.close()
        await eventually(lambda: _logged(stack, "disp-1", "node.lost_stale_conn"), what="lost")
        await eventually(lambda: _stale_drops(stack), what="node-manager to apply the drop")

        # X is alive on B, schedulable, and its job still runs there
        state = await node_state(redis, keys, NODE)
        assert (state["connected"], state["conn_id"]) == ("1", conn_b)
        assert await redis.hmget(keys.job("j-fence"), "state", "attempt", "node_id") == job_before
        assert await redis.hmget(keys.node(NODE), "reserved", "running") == slots_before
        assert await redis.smembers(keys.node_jobs(NODE)) == {b"j-fence"}
    await a.close()


async def _stale_beats(stack) -> bool:
    return metric(stack, "nm-1", "lingua_heartbeats_applied_total", outcome="stale") >= 1


async def _stale_drops(stack) -> bool:
    return (
        metric(
            stack,
            "nm-1",
            "lingua_node_events_total",
            kind="node.disconnected",
            outcome="dropped_stale_conn",
        )
        >= 1
    )


async def _logged(stack, proc: str, event: str) -> bool:
    return f'"{event}"' in stack.procs[proc].log_path.read_text()
