"""The bus connection's frames leave one write per loop tick, against the real RabbitMQ: what
one tick publishes goes out in fewer writes than frames, every message arrives, in order,
each confirmed to its own caller; and the connection still closes and reconnects cleanly."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest

from lingua_shared.bus import Publisher, Topology, connect, declare_topology, delete_topology
from lingua_shared.bus.connection import TickConnection, TickTransport, TickWriter
from lingua_shared.events import NodeDisconnected


def gone(node_id: str) -> NodeDisconnected:
    return NodeDisconnected(node_id=node_id, conn_id="c", gateway_id="g", graceful=True, ts_ms=1)


def tick_writer(conn: aio_pika.abc.AbstractRobustConnection) -> TickWriter:
    assert isinstance(conn, TickConnection)
    factory = conn.kwargs["transport_factory"]
    assert isinstance(factory, TickTransport) and factory.writer is not None
    return factory.writer


@pytest.fixture
async def bus(amqp_url: str):
    topo = Topology(f"lingua-tick-{uuid.uuid4().hex[:8]}", delivery_limit=2)
    conn = await connect(amqp_url, timeout=5)
    await declare_topology(await conn.channel(), topo)
    publisher = await Publisher.open(conn, topo)
    yield topo, conn, publisher
    await delete_topology(conn, topo)
    await conn.close()


async def test_one_ticks_publishes_leave_in_fewer_writes_and_arrive_in_order(bus) -> None:
    topo, conn, publisher = bus
    writer = tick_writer(conn)
    ch = await conn.channel()
    queue = await ch.declare_queue(exclusive=True)
    await queue.bind(topo.events, routing_key="tick.test")
    frames, writes = writer.frames, writer.writes
    ids = [f"n-{i}" for i in range(20)]
    await asyncio.gather(*(publisher.event("tick.test", gone(i)) for i in ids))
    assert writer.frames - frames >= 20  # a publish each (and nothing lost on the way)
    assert writer.writes - writes < writer.frames - frames
    got: list[str] = []
    while len(got) < len(ids):
        msg = await queue.get(timeout=5)
        got.append(NodeDisconnected.model_validate_json(msg.body).node_id)
        await msg.ack()
    assert got == ids
    await ch.close()


async def test_one_ticks_acks_leave_in_fewer_writes_and_are_all_taken(bus) -> None:
    topo, conn, publisher = bus
    writer = tick_writer(conn)
    ch = await conn.channel()
    queue = await ch.declare_queue(exclusive=True)
    await queue.bind(topo.events, routing_key="tick.acks")
    await asyncio.gather(*(publisher.event("tick.acks", gone(f"n-{i}")) for i in range(10)))
    msgs = [await queue.get(timeout=5) for _ in range(10)]
    frames, writes = writer.frames, writer.writes
    await asyncio.gather(*(m.ack() for m in msgs))
    await asyncio.sleep(0.05)
    assert writer.frames - frames == 10
    assert writer.writes - writes < 10
    await ch.close()  # an unacked message would be back in the queue: none is
    ch = await conn.channel()
    again = await ch.get_queue(queue.name, ensure=False)
    assert await again.get(fail=False) is None
    await ch.close()


async def test_a_frame_alone_in_its_tick_still_leaves(bus) -> None:
    topo, conn, publisher = bus
    ch = await conn.channel()
    queue = await ch.declare_queue(exclusive=True)
    await queue.bind(topo.events, routing_key="tick.alone")
    await publisher.event("tick.alone", gone("n-alone"))  # confirmed: it reached the broker
    msg = await queue.get(timeout=5)
    assert NodeDisconnected.model_validate_json(msg.body).node_id == "n-alone"
    await msg.ack()
    await ch.close()


async def test_a_closed_connection_reopens_with_a_tick_writer(amqp_url: str) -> None:
    conn = await connect(amqp_url, timeout=5)
    first = tick_writer(conn)
    ch = await conn.channel()
    await ch.close()
    await conn.close()
    assert first.is_closing()
    again = await connect(amqp_url, timeout=5)
    try:
        second = tick_writer(again)
        assert second is not first and not second.is_closing()
        ch = await again.channel()
        q = await ch.declare_queue(exclusive=True)
        await ch.default_exchange.publish(aio_pika.Message(b"x"), routing_key=q.name)
        msg = await q.get(timeout=5)
        assert msg.body == b"x"
    finally:
        await again.close()
