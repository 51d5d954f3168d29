"""Heartbeat flow control against the real broker and Redis: with node-manager behind, the
gateway keeps at most ``in_flight`` batches unapplied on the bus and coalesces the rest (one
beat per node, the newest), and sends again as soon as node-manager marks a batch applied
(``heartbeats_applied.lua``). Without a newer mark a batch leaves after ``apply_wait_s``,
and at once when there is no mark at all (Redis lost it)."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest

from lingua_gateway.coalescer import HeartbeatCoalescer
from lingua_gateway.metrics import Metrics
from lingua_shared.bus import Publisher, Topology, declare_queue, declare_topology, delete_bus
from lingua_shared.bus.topology import QueueSpec
from lingua_shared.events import Beat, HeartbeatBatch
from lingua_shared.runtime import now_ms

NODES = 50


async def drain(queue: aio_pika.abc.AbstractQueue) -> list[HeartbeatBatch]:
    out: list[HeartbeatBatch] = []
    while (msg := await queue.get(no_ack=True, fail=False)) is not None:
        out.append(HeartbeatBatch.model_validate_json(msg.body))
    return out


@pytest.fixture
async def bus(amqp_url: str, bus_prefix: str):  # type: ignore[no-untyped-def]
    topo = Topology(f"{bus_prefix}-flow-{uuid.uuid4().hex[:6]}")
    conn = await aio_pika.connect(amqp_url, timeout=10)
    try:
        channel = await conn.channel()
        await declare_topology(channel, topo)
        queue = await declare_queue(
            channel,
            QueueSpec(
                f"{topo.prefix}.beats",
                ((topo.events, "node.heartbeat.batch"),),
                quorum=False,
                exclusive=True,
            ),
        )
        publisher = await Publisher.open(conn, topo, confirm_timeout=5)
        yield publisher, queue
    finally:
        await conn.close()
        await delete_bus(amqp_url, topo.prefix)


def beat(i: int, round_: int) -> Beat:
    return Beat(node_id=f"n-{i:03d}", conn_id=f"c-{i}", ts_ms=now_ms(), running_jobs=round_)


async def test_a_slow_node_manager_gets_bigger_batches_not_a_longer_queue(
    bus, redis, keys, scripts
) -> None:  # type: ignore[no-untyped-def]
    publisher, queue = bus
    gw = f"gw-{uuid.uuid4().hex[:6]}"
    key = keys.heartbeats_applied(gw)

    async def mark() -> int | None:
        raw = await redis.get(key)
        return int(raw) if raw else None

    await redis.set(key, 1)  # the mark of an earlier process of this replica id
    metrics = Metrics()
    c = HeartbeatCoalescer(
        publisher, gw, 20, 10, metrics, applied=mark, in_flight=2, apply_wait_s=30
    )
    c.start()
    try:
        # five rounds of every node beating while nothing is applied
        for round_ in range(5):
            for i in range(NODES):
                c.add(beat(i, round_))
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        sent = await drain(queue)
        assert len(sent) == 2, f"{len(sent)} batches left while none was applied"
        assert c.seq - c.first_seq == 2
        # the rest waits at the gateway, one beat per node: its newest
        assert {b.running_jobs for batch in sent for b in batch.beats} == {0}
        assert len(c.pending) == NODES
        assert {b.running_jobs for b in c.pending.values()} == {4}

        # node-manager applies the first batch: one more leaves, with the newest beats
        first = sent[0].seq
        assert first is not None and sent[1].seq == first + 1
        await scripts.heartbeats_applied(gateway_id=gw, seq=first, ttl_ms=60_000)
        await asyncio.sleep(0.3)
        more = await drain(queue)
        left = [(b.seq - first, len(b.beats)) for b in more]  # (seq after the first, beats)
        assert len(more) == 1 and more[0].seq == first + 2, left
        assert {b.running_jobs for b in more[0].beats} == {4}

        # everything applied: the gateway catches up with everything pending
        for _ in range(10):
            await scripts.heartbeats_applied(gateway_id=gw, seq=c.seq, ttl_ms=60_000)
            await asyncio.sleep(0.1)
        rest = await drain(queue)
        assert c.pending == {}
        got = {b.node_id for batch in [*sent, *more, *rest] for b in batch.beats}
        assert got == {f"n-{i:03d}" for i in range(NODES)}, "a node's beat was lost"
        assert metrics.heartbeat_flow_timeouts._value.get() == 0

        # Redis lost the mark (a flush): nothing to wait for, beats flow at once
        for round_ in range(3):
            await redis.delete(key)
            for i in range(NODES):
                c.add(beat(i, 10 + round_))
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)
        assert c.pending == {}
        assert len(await drain(queue)) == 3 * NODES // 10
    finally:
        await c.stop()


async def test_when_the_mark_stops_a_batch_leaves_after_the_wait(bus, redis) -> None:  # type: ignore[no-untyped-def]
    publisher, queue = bus

    async def never() -> int | None:
        return 1  # node-manager down: the mark stays where an earlier process left it

    metrics = Metrics()
    c = HeartbeatCoalescer(
        publisher, "gw-x", 20, 5, metrics, applied=never, in_flight=1, apply_wait_s=0.5
    )
    c.start()
    try:
        for i in range(10):
            c.add(beat(i, 0))
        await asyncio.sleep(0.2)
        assert len(await drain(queue)) == 1  # the second waits for the first
        await asyncio.sleep(0.6)
        assert len(await drain(queue)) == 1  # ...then leaves anyway, counted
        assert metrics.heartbeat_flow_timeouts._value.get() == 1
    finally:
        await c.stop()


async def test_batches_carry_the_watermark_and_an_idle_gateway_moves_it(bus) -> None:  # type: ignore[no-untyped-def]
    """A batch says up to when the gateway's beats are in it or in an earlier one: before the
    oldest beat it leaves for the next. With no beats, empty batches every ``tick_s`` keep
    the watermark moving (node-manager's sweeper waits for it)."""
    publisher, queue = bus
    c = HeartbeatCoalescer(publisher, f"gw-{uuid.uuid4().hex[:6]}", 20, 10, Metrics(), tick_s=0.2)
    c.start()
    try:
        for i in range(25):  # above max_batch: one window sends three batches
            c.add(beat(i, 0))
        newest = now_ms()
        await asyncio.sleep(0.1)
        sent = await drain(queue)
        assert [len(b.beats) for b in sent] == [10, 10, 5]
        for i, batch in enumerate(sent[:2]):  # beats were left pending: not past the oldest
            later = min(b.ts_ms for after in sent[i + 1 :] for b in after.beats)
            assert batch.covers_ms is not None and batch.covers_ms < later
        last = sent[2].covers_ms
        assert last is not None and last >= newest
        await asyncio.sleep(0.75)
        ticks = await drain(queue)
        assert 2 <= len(ticks) <= 4 and all(not t.beats for t in ticks), ticks
        covers = [t.covers_ms for t in ticks]
        assert covers == sorted(covers) and covers[0] is not None and covers[0] > last
        assert [t.seq for t in ticks] == list(range(sent[2].seq + 1, sent[2].seq + 1 + len(ticks)))
    finally:
        await c.stop()


def test_the_watermark_waits_for_pending_beats_and_registrations() -> None:
    """Pure logic: before the oldest pending beat and the oldest registration under way."""
    c = HeartbeatCoalescer(None, "gw", 20, 10, Metrics())  # type: ignore[arg-type]
    assert c.watermark(1_000) == 1_000
    c.add(Beat(node_id="a", conn_id="c", ts_ms=500))
    c.add(Beat(node_id="b", conn_id="c", ts_ms=600))
    c.add(Beat(node_id="a", conn_id="c", ts_ms=700))  # a's newer beat: a still waits since 500
    assert c.watermark(1_000) == 499
    c.take(1)  # a's beat leaves: b waits since 600
    assert c.watermark(1_000) == 599
    token = c.begin_registration()  # now (wall clock): later than b
    assert c.watermark(now_ms() + 10_000) == 599
    c.take(1)
    assert c.watermark(now_ms() + 10_000) < now_ms()  # the registration holds it
    c.end_registration(token)
    assert c.watermark(1_000) == 1_000
    # beats of an unconfirmed batch go back to the front, with the time they first waited
    c.add(Beat(node_id="e", conn_id="c", ts_ms=800))
    c.add(Beat(node_id="e", conn_id="c", ts_ms=850))  # e waits since 800, its beat is 850's
    taken = c.take(1)
    c.add(Beat(node_id="d", conn_id="c", ts_ms=900))
    assert c.watermark(1_000) == 899
    c.put_back(taken)
    assert list(c.pending) == ["e", "d"] and c.watermark(1_000) == 799
    # a connection that ended leaves no beat behind; another connection's beat stays
    c.forget("d", "other-conn")
    assert "d" in c.pending
    c.forget("d", "c")
    assert list(c.pending) == ["e"] and "d" not in c.since
