"""Heartbeat batches have node-manager's queue of their own, so a batch never waits behind a
storm of registrations; a binding an earlier version made for them on the events queue is
removed when the topology is declared (against the real broker)."""

from __future__ import annotations

import uuid

import aio_pika

from lingua_shared.bus import Publisher, Topology, declare_topology, delete_topology
from lingua_shared.events import Beat, HeartbeatBatch, NodeDisconnected


async def count(conn: aio_pika.abc.AbstractConnection, name: str) -> int:
    ch = await conn.channel()
    q = await ch.declare_queue(name, passive=True)
    n = int(q.declaration_result.message_count or 0)
    await ch.close()
    return n


async def test_beats_and_registrations_go_to_separate_queues(amqp_url: str) -> None:
    topo = Topology(f"lingua-test-hbq-{uuid.uuid4().hex[:8]}")
    conn = await aio_pika.connect(amqp_url, timeout=10)
    try:
        ch = await conn.channel()
        # what an earlier version declared: the events queue also bound to heartbeat batches
        await ch.declare_exchange(topo.events, aio_pika.ExchangeType.TOPIC, durable=True)
        await ch.declare_exchange(topo.dlx, aio_pika.ExchangeType.FANOUT, durable=True)
        old = await ch.declare_queue(
            topo.node_manager_queue, durable=True, arguments=topo.work_queue_args()
        )
        await old.bind(topo.events, routing_key="node.heartbeat.batch")

        await declare_topology(ch, topo)
        publisher = await Publisher.open(conn, topo)
        beat = Beat(node_id="n-1", conn_id="c-1", ts_ms=1)
        await publisher.event(
            "node.heartbeat.batch",
            HeartbeatBatch(gateway_id="gw", sent_at_ms=1, beats=[beat], seq=1),
            persistent=False,
        )
        gone = NodeDisconnected(
            node_id="n-1", conn_id="c-1", gateway_id="gw", graceful=True, close_code=1000, ts_ms=1
        )
        await publisher.event("node.disconnected", gone)
        assert await count(conn, topo.node_manager_heartbeat_queue) == 1
        assert await count(conn, topo.node_manager_queue) == 1  # the disconnection only
    finally:
        await delete_topology(conn, topo)
        await conn.close()
