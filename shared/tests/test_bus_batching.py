"""Coalesced publishing and batch consumption against the real RabbitMQ: one tick's messages
leave as one AMQP message, each is confirmed to its own caller, each is handled once, and a
bad or failing message in a batch never takes its neighbours with it."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import orjson
import pytest

from lingua_shared.bus import (
    BATCH_TYPE,
    Publisher,
    Topology,
    Unroutable,
    consume,
    declare_topology,
    delete_topology,
)
from lingua_shared.events import NODE_EVENT, NodeDisconnected, RegisterReply


@pytest.fixture
async def bus(amqp_url: str):
    topo = Topology(f"lingua-batch-{uuid.uuid4().hex[:8]}", delivery_limit=2)
    conn = await aio_pika.connect_robust(amqp_url, timeout=5)
    await declare_topology(await conn.channel(), topo)
    publisher = await Publisher.open(conn, topo)
    yield topo, conn, publisher
    await delete_topology(conn, topo)
    await conn.close()


def gone(node_id: str) -> NodeDisconnected:
    return NodeDisconnected(node_id=node_id, conn_id="c", gateway_id="g", graceful=True, ts_ms=1)


async def drain(conn, name: str, timeout: float = 0.5) -> list[aio_pika.IncomingMessage]:
    """Take (and ack) what sits in queue ``name`` now."""
    ch = await conn.channel()
    q = await ch.get_queue(name, ensure=False)
    got = []
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        msg = await q.get(fail=False)
        if msg is None:
            await asyncio.sleep(0.05)
            continue
        got.append(msg)
        await msg.ack()
    await ch.close()
    return got


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_one_ticks_messages_leave_as_one_batch_and_each_is_handled_once(bus):
    topo, conn, publisher = bus
    await asyncio.gather(
        *(publisher.event("node.disconnected", gone(f"n{i}"), batch=True) for i in range(10))
    )
    assert (publisher.batches_sent, publisher.batched_messages) == (1, 10)
    (raw,) = await drain(conn, topo.node_manager_queue)
    assert raw.type == BATCH_TYPE and raw.headers["x-lingua-items"] == 10
    assert [m["node_id"] for m in orjson.loads(raw.body)] == [f"n{i}" for i in range(10)]

    # and a consumer sees them one by one, in order, and acks the batch
    await asyncio.gather(
        *(publisher.event("node.disconnected", gone(f"m{i}"), batch=True) for i in range(10))
    )
    ch = await conn.channel()
    queue = await ch.get_queue(topo.node_manager_queue, ensure=False)
    seen: list[str] = []

    async def handler(ev, message) -> None:
        seen.append(ev.node_id)

    outcomes: list[str] = []
    tag = await consume(queue, NODE_EVENT, handler, name="t", on_outcome=outcomes.append)
    await until(lambda: len(outcomes) == 10)
    await queue.cancel(tag)
    await ch.close()
    assert seen == [f"m{i}" for i in range(10)] and outcomes == ["ok"] * 10
    assert await drain(conn, topo.node_manager_queue) == []  # acked: nothing comes back


async def test_a_lone_message_leaves_as_itself(bus):
    topo, conn, publisher = bus
    await publisher.event("node.disconnected", gone("alone"), batch=True)
    await publisher.event("node.disconnected", gone("next-tick"), batch=True)
    got = await drain(conn, topo.node_manager_queue)
    assert [m.type for m in got] == ["node.disconnected", "node.disconnected"]
    assert [orjson.loads(m.body)["node_id"] for m in got] == ["alone", "next-tick"]


async def test_the_bounds_split_batches_and_nothing_is_lost(amqp_url: str):
    topo = Topology(f"lingua-batch-{uuid.uuid4().hex[:8]}")
    conn = await aio_pika.connect_robust(amqp_url, timeout=5)
    try:
        await declare_topology(await conn.channel(), topo)
        by_items = await Publisher.open(conn, topo, batch_max_items=4)
        await asyncio.gather(
            *(by_items.event("node.disconnected", gone(f"i{i}"), batch=True) for i in range(10))
        )
        assert by_items.batches_sent == 3  # 4 + 4 + 2
        size = len(gone("b0").model_dump_json())
        by_bytes = await Publisher.open(conn, topo, batch_max_bytes=3 * size)
        await asyncio.gather(
            *(by_bytes.event("node.disconnected", gone(f"b{i}"), batch=True) for i in range(10))
        )
        assert by_bytes.batches_sent >= 4
        ids = []
        for m in await drain(conn, topo.node_manager_queue):
            body = orjson.loads(m.body)
            ids += [x["node_id"] for x in body] if isinstance(body, list) else [body["node_id"]]
        assert ids == [f"i{i}" for i in range(10)] + [f"b{i}" for i in range(10)]
    finally:
        await delete_topology(conn, topo)
        await conn.close()


async def test_a_batch_to_a_gateway_that_is_gone_fails_every_caller(bus):
    _, _, publisher = bus
    reply = RegisterReply(node_id="n", conn_id="c", ok=True)
    results = await asyncio.gather(
        *(publisher.to_gateway("no-such-gateway", reply, batch=True) for _ in range(5)),
        return_exceptions=True,
    )
    assert publisher.batches_sent == 1
    assert all(isinstance(r, Unroutable) for r in results), results


async def publish_batch(conn, topo: Topology, items: list[object]) -> None:
    ch = await conn.channel()
    ex = await ch.get_exchange(topo.events, ensure=False)
    await ex.publish(
        aio_pika.Message(orjson.dumps(items), type=BATCH_TYPE), routing_key="node.disconnected"
    )
    await ch.close()


async def test_a_bad_or_failing_message_in_a_batch_leaves_its_neighbours_alone(bus):
    """An invalid item is dead-lettered alone; a poison item is published back alone and then
    meets the delivery limit (2) like any message; the good items run exactly once."""
    topo, conn, publisher = bus
    good = [gone("good-1").model_dump(), gone("good-2").model_dump()]
    poison = gone("poison").model_dump()
    await publish_batch(conn, topo, [good[0], {"kind": "node.teleport"}, poison, good[1]])
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=10)
    queue = await ch.get_queue(topo.node_manager_queue, ensure=False)
    seen: dict[str, int] = {}

    async def handler(ev, message) -> None:
        seen[ev.node_id] = seen.get(ev.node_id, 0) + 1
        if ev.node_id == "poison":
            raise RuntimeError("handler bug")

    outcomes: list[str] = []
    tag = await consume(
        queue, NODE_EVENT, handler, name="t", on_outcome=outcomes.append, publisher=publisher
    )
    dead: list[aio_pika.IncomingMessage] = []

    async def collect() -> None:
        dead.extend(await drain(conn, topo.dead, timeout=0.2))

    deadline = asyncio.get_running_loop().time() + 10
    while len(dead) < 2 and asyncio.get_running_loop().time() < deadline:
        await collect()
    await queue.cancel(tag)
    await ch.close()
    assert seen == {"good-1": 1, "good-2": 1, "poison": 1 + 3}  # in the batch, then alone
    bodies = sorted(
        orjson.loads(m.body).get("kind", "") + orjson.loads(m.body).get("node_id", "") for m in dead
    )
    assert bodies == ["node.disconnectedpoison", "node.teleport"]
    assert outcomes.count("invalid") == 1 and outcomes.count("ok") == 2
    assert outcomes.count("requeued") == 4


async def test_without_a_publisher_a_failure_requeues_the_whole_batch(bus):
    topo, conn, _ = bus
    await publish_batch(conn, topo, [gone("steady").model_dump(), gone("flaky").model_dump()])
    ch = await conn.channel()
    queue = await ch.get_queue(topo.node_manager_queue, ensure=False)
    seen: list[str] = []

    async def handler(ev, message) -> None:
        seen.append(ev.node_id)
        if ev.node_id == "flaky" and not message.redelivered:
            raise RuntimeError("once")

    outcomes: list[str] = []
    tag = await consume(queue, NODE_EVENT, handler, name="t", on_outcome=outcomes.append)
    await until(lambda: outcomes.count("ok") == 3)
    await queue.cancel(tag)
    await ch.close()
    assert sorted(seen) == ["flaky", "flaky", "steady", "steady"]  # idempotent handlers rerun
    assert await drain(conn, topo.dead, timeout=0.3) == []


async def test_a_batch_that_is_not_a_list_is_dead_lettered(bus):
    topo, conn, publisher = bus
    ch = await conn.channel()
    ex = await ch.get_exchange(topo.events, ensure=False)
    await ex.publish(
        aio_pika.Message(b'{"kind": "node.disconnected"}', type=BATCH_TYPE),
        routing_key="node.disconnected",
    )
    queue = await ch.get_queue(topo.node_manager_queue, ensure=False)
    outcomes: list[str] = []

    async def handler(ev, message) -> None:
        raise AssertionError("never called")

    tag = await consume(
        queue, NODE_EVENT, handler, name="t", on_outcome=outcomes.append, publisher=publisher
    )
    await until(lambda: outcomes == ["invalid"])
    await queue.cancel(tag)
    await ch.close()
    assert len(await drain(conn, topo.dead, timeout=2)) == 1
