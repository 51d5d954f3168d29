"""RabbitMQ recipes of docs/reliability.md: R1 (broker crash), R2 (consumer crash), R3 (poison
message), R4 (a gateway replica gone), R5 (broker restart and a half-open link).

The broker is our own (``own_rabbit``): R1 and R5 SIGKILL it and start it again on the same
port and data directory. Job requests for R1-R3 are published straight to the events
exchange with the services' own :class:`~lingua_shared.bus.Publisher`. R1's and R2's are for
zh->en, which simulated nodes serve: each job is really reserved, assigned and answered (a
job record in state ``done``). R3's language pair has no node, so each ends at once in a
typed ``NO_AVAILABLE_NODE`` (state ``failed``). A request is *handled* when its job record
ends, and handled once when it has exactly one job record.
"""

from __future__ import annotations

import signal
import time

import aio_pika
import pytest

from lingua_shared.events import NodeJobEvent
from tests.faults.slot_load import duplicate_jobs
from tests.faults.workload import (
    ASSIGN_NODES,
    Session,
    assigned_jobs,
    ended_jobs,
    job_records,
    jobs_ended,
    log_count,
    metric,
    open_publisher,
    request,
)
from tests.support.agents import NodeProcess, node_processes, node_url
from tests.support.helpers import eventually, node_ready
from tests.support.invariants import settle_idle
from tests.support.sessions import session_url
from tests.support.stack import JOB_SERVICES, start_all

pytestmark = [pytest.mark.faults, pytest.mark.integration]


async def test_r2_a_consumer_crash_loses_nothing(fstack, fredis):
    """R2: SIGKILL a dispatcher while it holds unacknowledged deliveries of requests whose jobs
    really go to nodes, start another -> all redelivered and handled; every duplicate the
    redelivery brings is absorbed by job_create (counted); 0 duplicate jobs in Redis."""
    n, run = 600, "r2"
    # jobs wait for a slot rather than fail fast, and a job the killed replica had reserved
    # but never sent is dispatched again however late the new replica takes it back: the
    # recipe is about redelivery, not capacity or lifetimes
    env = {"LINGUA_NO_NODE_WAIT_MS": "20000", "LINGUA_GAP_TIMEOUT_MS": "60000"}
    start_all(fstack, ("nm-1", "node-manager"), ("gw-a", "gateway"), **env)
    async with node_processes(fstack, fredis, *ASSIGN_NODES):
        start_all(fstack, ("disp-1", "dispatcher"), **env)
        first = fstack.procs["disp-1"]
        first.signal(signal.SIGSTOP)  # the broker pushes a prefetch window it cannot ack yet
        conn, publisher = await open_publisher(fstack)
        try:
            for i in range(n):
                await publisher.event("job.request", request(i, run, "zh", "en"))
        finally:
            await conn.close()
        first.signal(signal.SIGCONT)
        await eventually(
            lambda: _created(fredis, fstack.keys, 50), timeout=20, interval=0.005,
            what="some handled",
        )  # fmt: skip
        first.signal(signal.SIGKILL)  # with deliveries in hand, some handled but not acked
        first.proc.wait(10)
        created_by_first = len(await job_records(fredis, fstack.keys))
        done_by_first = await ended_jobs(fredis, fstack.keys)
        start_all(fstack, ("disp-2", "dispatcher"), **env)
        await eventually(
            lambda: jobs_ended(fredis, fstack.keys, n), timeout=60, what="every request"
        )
        jobs, duplicated = await duplicate_jobs(fredis, fstack.keys)
        answered, redispatched = await assigned_jobs(fredis, fstack.keys)
        absorbed = metric(fstack, "disp-2", "lingua_job_duplicates_total")
    print(
        f"R2 requests={n} created_before_kill={created_by_first} "
        f"ended_before_kill={done_by_first} redelivered_and_handled={n - done_by_first} "
        f"answered_by_a_node={answered} dispatched_again={redispatched} "
        f"duplicates_absorbed={absorbed:.0f} jobs={jobs} duplicate_jobs={duplicated}"
    )
    assert done_by_first < n, "the kill came too late to hold any delivery"
    assert jobs == n and duplicated == 0
    # really assigned: every job was answered by a node (none waited 20 s for a slot)
    assert answered == n
    # the first replica created jobs whose deliveries it never acked: each came back and
    # was absorbed as a duplicate, not made a second job
    assert absorbed >= 1, "no redelivered request found its job: the recipe proved nothing"
    await settle_idle(fredis, fstack.keys)


async def _created(fredis, keys, k: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await job_records(fredis, keys)) >= k


async def test_r3_a_poison_message_does_not_loop(fstack, fredis):
    """R3: a node message that makes the dispatcher's handler raise, among 100 good requests
    -> dead-lettered after limit + 1 = 4 deliveries; the good ones all handled."""
    limit, good, run = 3, 100, "r3"
    start_all(fstack, ("disp-1", "dispatcher"), LINGUA_AMQP_DELIVERY_LIMIT=str(limit))
    conn, publisher = await open_publisher(fstack)
    try:
        # attempt_id "x" passes the bus model (message is a free-form dict) but not int()
        poison = NodeJobEvent(
            node_id="node-poison",
            conn_id="c",
            gateway_id="gw",
            received_at_ms=int(time.time() * 1000),
            message={"type": "job_ack", "job_id": "j-poison", "attempt_id": "x"},
        )
        await publisher.event("job.node_event", poison)
        for i in range(good):
            await publisher.event("job.request", request(i, run))
    finally:
        await conn.close()
    await eventually(lambda: jobs_ended(fredis, fstack.keys, good), timeout=30, what="good ones")
    dead = await eventually(lambda: _dead(fstack), timeout=15, what="the poison dead-lettered")
    deliveries = log_count(fstack, "disp-1", '"bus.handler_failed"')
    print(
        f"R3 delivery_limit={limit} poison_deliveries={deliveries} dead_lettered={dead} "
        f"good_handled={await ended_jobs(fredis, fstack.keys)}/{good}"
    )
    assert deliveries == limit + 1
    assert dead == 1
    await settle_idle(fredis, fstack.keys)


async def _dead(stack) -> int:  # type: ignore[no-untyped-def]
    conn = await aio_pika.connect(stack.env["LINGUA_AMQP_URL"], timeout=5)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(f"{stack.env['LINGUA_BUS_PREFIX']}.dead", passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await conn.close()


async def test_r4_a_job_for_a_gateway_that_is_gone_is_redispatched(fstack, fredis):
    """R4: SIGKILL the gateway replica that holds a node, then send work at once (the node
    still looks alive in Redis until its TTL) -> every job_assign to the gone replica is
    detected (unroutable; or, when the broker routed it just before dropping the replica's
    queue, by the ack timeout) and redispatched; every utterance answered once."""
    total = 4
    # a gap window that holds a second attempt (ack timeout 1 s + deadline 3 s): with the
    # suite's 4 s, utterance 0, taken back after its ack timeout while later answers wait,
    # would rightly fail at once (too soon for another attempt) instead of going on
    start_all(fstack, *JOB_SERVICES, LINGUA_GAP_TIMEOUT_MS="10000")
    async with node_processes(
        fstack, fredis, ("node-a-on-gw-a", {"capacity": 4}), ("node-z-on-gw-b", {"capacity": 4})
    ) as (_, other):
        # node-z moves to gw-b: a node-agent process per gateway is simplest; restart it there
        other.stop()
        moved = NodeProcess(
            node_url(fstack, "gw-b"), "node-z-on-gw-b", fstack.log_dir / "node-z-b.log", capacity=4
        )
        try:
            await eventually(
                lambda: _on_gateway(fredis, fstack.keys, moved.node_id, "gw-b"), timeout=20
            )
            await eventually(lambda: node_ready(fredis, fstack.keys, moved.node_id), timeout=20)
            s = await Session.open(session_url(fstack, "gw-b"))
            fstack.procs["gw-a"].signal(9)
            for i in range(total):
                await s.utterance(i)
            await s.collect(total, timeout=15)
            reasons = {
                reason: sum(
                    metric(fstack, d, "lingua_job_redispatch_total", {"reason": reason})
                    for d in ("disp-1", "disp-2")
                )
                for reason in ("unroutable", "ack_timeout", "node_lost")
            }
            sent_to_gone = sum(
                1
                for j in (await job_records(fredis, fstack.keys)).values()
                if "node-a-on-gw-a-00000" in j.get("tried", "")
            )
            print(
                f"R4 jobs_sent_to_gone_gateway={sent_to_gone} taken_back={reasons} "
                f"answered={len(s.answers)}/{total} "
                f"kinds={sorted({a['type'] for a in s.answers})} duplicates={s.duplicates()}"
            )
            assert sent_to_gone >= 1, "no job went to the gone replica: the recipe proved nothing"
            publish_failed = sum(
                metric(fstack, d, "lingua_assign_publish_failed_total")
                for d in ("disp-1", "disp-2")
            )
            print(f"R4 assign_publishes_failed={publish_failed:.0f}")
            # detected: the mandatory publish comes back (tried again while the reservation
            # holds, then taken back, or the lease ran out meanwhile); an assign the broker
            # routed just before it dropped that queue, by the ack timeout instead
            assert publish_failed >= 1 or reasons["ack_timeout"] >= 1, reasons
            assert sum(reasons.values()) == sent_to_gone
            assert sorted(s.indexes()) == list(range(total)) and s.duplicates() == 0
            assert all(a["type"] == "translation_result" for a in s.answers), s.answers
            await s.close()
        finally:
            moved.stop()
    await settle_idle(fredis, fstack.keys)


async def _on_gateway(fredis, keys, node_id: str, gw: str) -> bool:  # type: ignore[no-untyped-def]
    return (await fredis.hget(keys.node(node_id), "gateway_id")) == gw.encode()
