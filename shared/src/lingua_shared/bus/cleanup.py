"""Deleting a bus's shared queues and exchanges: what tests and benchmarks clean up with."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from lingua_shared.bus.topology import Topology


async def delete_topology(conn: AbstractRobustConnection, topo: Topology) -> None:
    """Delete ``topo``'s shared queues and exchanges (tests and benchmarks clean up with it).
    Best effort, each on its own channel: a failed delete closes its channel."""
    names = [(True, q.name) for q in topo.shared_queues()] + [
        (False, e.name) for e in topo.exchanges()
    ]
    for is_queue, name in names:
        try:
            ch = await conn.channel()
            await (ch.queue_delete(name) if is_queue else ch.exchange_delete(name))
        except Exception:
            continue


async def delete_bus(amqp_url: str, prefix: str) -> None:
    """Delete the shared queues and exchanges of bus ``prefix`` (best effort)."""
    conn = await aio_pika.connect_robust(amqp_url, timeout=5)
    try:
        await delete_topology(conn, Topology(prefix))
    finally:
        await conn.close()
