"""The bus helpers against the real RabbitMQ: confirms, unroutable detection, dead letters
and the delivery limit (docs/reliability.md: 3.10 has no default limit; R3, R4)."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest
from pydantic import TypeAdapter, ValidationError

from lingua_shared.bus import (
    BusOverloaded,
    Publisher,
    Topology,
    Unroutable,
    consume,
    declare_topology,
    delete_topology,
)
from lingua_shared.errors import DependencyDown
from lingua_shared.events import NODE_EVENT, NodeDisconnected, RegisterReply


@pytest.fixture
async def bus(amqp_url: str):
    topo = Topology(f"lingua-bus-{uuid.uuid4().hex[:8]}", delivery_limit=2)
    conn = await aio_pika.connect_robust(amqp_url, timeout=5)
    ch = await conn.channel()
    await declare_topology(ch, topo)
    publisher = await Publisher.open(conn, topo)
    yield topo, conn, publisher
    await delete_topology(conn, topo)
    await conn.close()


def disconnected(node_id: str) -> NodeDisconnected:
    return NodeDisconnected(node_id=node_id, conn_id="c", gateway_id="g", graceful=True, ts_ms=1)


async def dead_letters(conn, topo: Topology, want: int, timeout: float = 10.0) -> list[bytes]:
    ch = await conn.channel()
    q = await ch.get_queue(topo.dead, ensure=False)
    got: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < want and asyncio.get_running_loop().time() < deadline:
        msg = await q.get(fail=False)
        if msg is None:
            await asyncio.sleep(0.05)
            continue
        got.append(msg.body)
        await msg.ack()
    await ch.close()
    return got


async def test_publish_to_a_gateway_that_is_gone_raises_unroutable(bus):
    _, _, publisher = bus
    with pytest.raises(Unroutable):
        await publisher.to_gateway(
            "no-such-gateway", RegisterReply(node_id="n", conn_id="c", ok=True)
        )


async def test_invalid_bodies_are_dead_lettered_and_poison_stops_at_the_limit(bus):
    topo, conn, publisher = bus
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=10)
    queue = await ch.get_queue(topo.node_manager_queue, ensure=False)
    seen: dict[str, int] = {}
    done: list[str] = []

    async def handler(ev, message) -> None:
        seen[ev.node_id] = seen.get(ev.node_id, 0) + 1
        if ev.node_id == "poison":
            raise RuntimeError("handler bug")
        done.append(ev.node_id)

    outcomes: list[str] = []
    tag = await consume(queue, NODE_EVENT, handler, name="t", on_outcome=outcomes.append)
    raw = await ch.get_exchange(topo.events)
    await raw.publish(aio_pika.Message(b"{not json"), routing_key="node.disconnected")
    await publisher.event("node.disconnected", disconnected("poison"))
    for i in range(20):
        await publisher.event("node.disconnected", disconnected(f"good-{i}"))
    dead = await dead_letters(conn, topo, 2)
    await queue.cancel(tag)
    assert sorted(done) == sorted(f"good-{i}" for i in range(20))
    assert b"{not json" in dead and any(b"poison" in d for d in dead)
    # delivery limit 2: the poison message is delivered limit + 1 times, then dead-lettered
    assert seen["poison"] == 3
    assert outcomes.count("invalid") == 1 and outcomes.count("requeued") == 3


async def test_adapter_rejects_unknown_event_kinds():
    with pytest.raises(ValidationError):
        NODE_EVENT.validate_json(b'{"kind": "node.teleport"}')
    assert isinstance(
        TypeAdapter(NodeDisconnected).validate_json(disconnected("x").model_dump_json()),
        NodeDisconnected,
    )


async def test_a_full_work_queue_refuses_publishes_and_the_publisher_says_so(amqp_url: str):
    """x-max-length + reject-publish: the broker nacks beyond the bound; with confirms the
    publisher raises BusOverloaded (a DependencyDown: callers answer a typed error)."""
    topo = Topology(f"lingua-bus-{uuid.uuid4().hex[:8]}", max_length=3)
    conn = await aio_pika.connect_robust(amqp_url, timeout=5)
    try:
        await declare_topology(await conn.channel(), topo)
        publisher = await Publisher.open(conn, topo)
        accepted = refused = 0
        for i in range(8):
            try:
                await publisher.event("job.node_event", disconnected(f"n{i}"))
                accepted += 1
            except BusOverloaded as exc:
                assert isinstance(exc, DependencyDown) and "queue full" in exc.message
                refused += 1
        ch = await conn.channel()
        queued = (await ch.declare_queue(topo.dispatcher_queue, passive=True)).declaration_result
        assert queued.message_count <= 3 + 1  # the bound (quorum queues may overshoot by one)
        assert accepted == queued.message_count and refused == 8 - accepted and refused >= 4
    finally:
        await delete_topology(conn, topo)
        await conn.close()


async def test_a_dependency_outage_is_retried_in_place_not_dead_lettered(bus):
    """Redis away for a moment: the handler is tried again with backoff; the delivery limit
    (2 here) is not spent and the message is handled once it comes back (fault suite S6)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    topo, conn, publisher = bus
    ch = await conn.channel()
    queue = await ch.get_queue(topo.node_manager_queue, ensure=False)
    tries: list[bool] = []
    handled = asyncio.Event()

    async def handler(ev, message) -> None:
        tries.append(message.redelivered)
        if len(tries) <= 5:  # more failures than the delivery limit allows
            raise RedisConnectionError("Connection refused")
        handled.set()

    outcomes: list[str] = []
    tag = await consume(queue, NODE_EVENT, handler, name="t", on_outcome=outcomes.append)
    await publisher.event("node.disconnected", disconnected("during-outage"))
    await asyncio.wait_for(handled.wait(), 10)
    await queue.cancel(tag)
    assert len(tries) == 6 and not any(tries), tries  # one delivery, tried six times
    assert outcomes == ["ok"]
    assert await dead_letters(conn, topo, 1, timeout=0.3) == []


async def test_a_dependency_outage_longer_than_the_retry_window_requeues(bus):
    topo, conn, publisher = bus
    ch = await conn.channel()
    queue = await ch.get_queue(topo.node_manager_queue, ensure=False)
    tries: list[bool] = []

    async def handler(ev, message) -> None:
        tries.append(message.redelivered)
        if not message.redelivered:
            raise TimeoutError("redis did not answer")

    outcomes: list[str] = []
    tag = await consume(
        queue, NODE_EVENT, handler, name="t", on_outcome=outcomes.append, transient_retry_s=0.2
    )
    await publisher.event("node.disconnected", disconnected("long-outage"))
    for _ in range(100):
        if "ok" in outcomes:
            break
        await asyncio.sleep(0.05)
    await queue.cancel(tag)
    assert outcomes == ["requeued", "ok"], outcomes
    assert tries[-1] is True and tries.count(False) >= 2
