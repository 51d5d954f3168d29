"""Recipes that SIGKILL our own broker (R1, R5) or cut the services off from it (R5).

They run last (file order) and on the session's aged topology (see ``QUORUM_SETTLE_S`` in
the conftest): a quorum queue only seconds old does not survive a SIGKILL of a single-node
broker, which says something about the broker's first seconds, not about our services.
"""

from __future__ import annotations

import asyncio
import time

import aio_pika
import pytest

from tests.faults.slot_load import duplicate_jobs
from tests.faults.workload import (
    ASSIGN_NODES,
    Session,
    assigned_jobs,
    at_least,
    failure_codes,
    job_records,
    jobs_ended,
    metric,
    open_publisher,
    publish_confirmed,
    request,
)
from tests.support.agents import node_processes
from tests.support.helpers import eventually
from tests.support.invariants import settle_idle
from tests.support.sessions import session_url
from tests.support.stack import JOB_SERVICES, start_all, wait_ready

pytestmark = [pytest.mark.faults, pytest.mark.integration]


@pytest.fixture
def aged(fstack, aged_bus):  # type: ignore[no-untyped-def]
    """``fstack`` on the aged topology, old enough to survive a broker SIGKILL."""
    fstack.env["LINGUA_BUS_PREFIX"] = aged_bus.prefix
    aged_bus.wait_until_settled()
    return fstack


async def test_r1_confirmed_events_survive_a_broker_crash(aged, fredis, live_rabbit):
    """R1: publish 600 job requests with confirms, SIGKILL the broker half way, restart it
    -> lost = 0 of the confirmed; their jobs really go to nodes; duplicates (publishes retried
    for want of a confirm) absorbed and counted: one job record per request."""
    fstack = aged
    n, run = 600, "r1"
    # production-like lifetimes: a node outlives the outage (TTL 30 s), and a job's three
    # attempts (10 s each) and its wait for a slot do too; the recipe is about the broker
    env = {
        "LINGUA_NODE_MIN_TTL_MS": "30000",
        "LINGUA_JOB_DEADLINE_MS": "10000",
        "LINGUA_NO_NODE_WAIT_MS": "20000",
        "LINGUA_GAP_TIMEOUT_MS": "60000",
    }
    services = (("nm-1", "node-manager"), ("gw-a", "gateway"), ("disp-1", "dispatcher"))
    start_all(fstack, *services, **env)
    async with node_processes(fstack, fredis, *ASSIGN_NODES):
        conn, publisher = await open_publisher(fstack)
        confirmed: set[int] = set()
        retried = 0
        restart_s = 0.0
        try:

            async def producer(ids: range) -> None:
                nonlocal retried
                for i in ids:
                    tries = await publish_confirmed(publisher, request(i, run, "zh", "en"))
                    retried += tries - 1
                    confirmed.add(i)

            tasks = [asyncio.create_task(producer(range(k, n, 4))) for k in range(4)]
            await eventually(lambda: at_least(confirmed, n // 2), timeout=60, what="half published")
            restart_s = await asyncio.to_thread(live_rabbit.restart)  # SIGKILL, then start
            await asyncio.gather(*tasks)
        finally:
            await conn.close()
        for name, _ in services:
            await wait_ready(fstack.procs[name], 60)
        await eventually(
            lambda: jobs_ended(fredis, fstack.keys, n), timeout=60, what="every request"
        )
        jobs, duplicated = await duplicate_jobs(fredis, fstack.keys)
        records = (await job_records(fredis, fstack.keys)).values()
        handled = {int(j["utterance_index"]) for j in records}
        answered, redispatched = await assigned_jobs(fredis, fstack.keys)
        failed = await failure_codes(fredis, fstack.keys, f"s-{run}")
        absorbed = metric(fstack, "disp-1", "lingua_job_duplicates_total")
    lost = len(confirmed - handled)
    print(
        f"R1 published={n} confirmed={len(confirmed)} broker_restart={restart_s:.1f}s "
        f"publish_retries={retried} lost={lost} duplicates_absorbed={absorbed:.0f} "
        f"duplicate_jobs={duplicated} answered_by_a_node={answered} "
        f"dispatched_again={redispatched} failed={dict(failed)}"
    )
    assert len(confirmed) == n and lost == 0
    assert jobs == n and duplicated == 0
    # really assigned: jobs are answered by nodes (an assign that cannot be published while
    # the broker or the gateway's queue is away is tried again while its reservation holds);
    # any the outage still cut off end with a typed error, never silently
    assert answered > 0
    assert answered + sum(failed.values()) == n, failed
    await settle_idle(fredis, fstack.keys)


async def consumer_counts(stack) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Consumers on each shared work queue, as the broker counts them."""
    prefix = stack.env["LINGUA_BUS_PREFIX"]
    conn = await aio_pika.connect(stack.env["LINGUA_AMQP_URL"], timeout=5)
    try:
        out = {}
        for name in ("node-manager.events", "node-manager.heartbeats", "dispatcher.events"):
            ch = await conn.channel()
            q = await ch.declare_queue(f"{prefix}.{name}", passive=True)
            out[name] = int(q.declaration_result.consumer_count or 0)
        return out
    finally:
        await conn.close()


async def one_job_round_trip(stack, fredis, node_prefix: str) -> str:  # type: ignore[no-untyped-def]
    async with node_processes(stack, fredis, (node_prefix, {})):
        s = await Session.open(session_url(stack, "gw-b"))
        await s.utterance(0)
        await s.collect(1, timeout=15)
        await s.close()
    return s.answers[0]["type"] if s.answers else "none"


async def test_r5_consumers_come_back_after_a_broker_restart(aged, fredis, live_rabbit):
    """R5 (restart): SIGKILL the broker and start it again -> every service is ready and
    consuming again within seconds; consumer counts restored; a job goes through."""
    fstack = aged
    start_all(fstack, *JOB_SERVICES)
    before = await consumer_counts(fstack)
    t0 = time.monotonic()
    restart_s = await asyncio.to_thread(live_rabbit.restart)
    ready_s = {}
    for name, proc in fstack.procs.items():
        await wait_ready(proc, 60)
        ready_s[name] = round(time.monotonic() - t0 - restart_s, 1)
    after = await eventually(
        lambda: _counts_are(fstack, before), timeout=30, what="consumer counts restored"
    )
    kind = await one_job_round_trip(fstack, fredis, "node-r5")
    print(
        f"R5-restart broker_restart={restart_s:.1f}s ready_after_broker={ready_s} "
        f"consumers_before={before} after={after} job={kind}"
    )
    assert before == {
        "node-manager.events": 1,
        "node-manager.heartbeats": 1,
        "dispatcher.events": 2,
    }
    # measured ~3 s after the broker (reconnect interval 5 s): 30 s is noise-proof, and a
    # service that never consumes again (the fault this recipe found) fails it
    assert max(ready_s.values()) <= R5_READY_BOUND_S, ready_s
    assert kind == "translation_result"
    await settle_idle(fredis, fstack.keys)


async def _counts_are(stack, want):  # type: ignore[no-untyped-def]
    try:
        got = await consumer_counts(stack)
    except Exception:
        return None
    return got if got == want else None


BLACKHOLE_S = 15.0
R5_READY_BOUND_S = 30.0  # services ready again after the broker restarted
R5_LINK_BOUND_S = 30.0  # consumers back after a half-open link returned


async def test_r5_consumers_come_back_after_a_half_open_link(
    fstack, fredis, live_rabbit, proxy_factory
):
    """R5 (half-open): every service reaches the broker through the proxy, which black-holes
    every connection for 15 s (bytes swallowed, no FIN, no RST: the links stay half-open)
    -> every service consumes again within seconds of the link coming back (the AMQP
    heartbeat, default 5 s, gives the dead link up); consumer counts restored; a job goes
    through."""
    proxy = proxy_factory(live_rabbit.port)
    direct_url = fstack.env["LINGUA_AMQP_URL"]
    fstack.env["LINGUA_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    start_all(fstack, *JOB_SERVICES)
    probe = dict(fstack.env, LINGUA_AMQP_URL=direct_url)

    class Probe:  # consumer counts straight from the broker, not through the proxy
        env = probe

    before = await consumer_counts(Probe)
    proxy.set("blackhole")
    await asyncio.sleep(BLACKHOLE_S)
    proxy.set("pass")
    t0 = time.monotonic()
    after = await eventually(
        lambda: _counts_are(Probe, before), timeout=45, interval=0.2, what="consumers back"
    )
    back_s = time.monotonic() - t0
    for proc in fstack.procs.values():
        await wait_ready(proc, 30)
    kind = await one_job_round_trip(fstack, fredis, "node-r5h")
    print(
        f"R5-half-open blackhole={BLACKHOLE_S:.0f}s consumers_back_after={back_s:.1f}s "
        f"(heartbeat 5 s) consumers_before={before} after={after} job={kind} "
        f"proxy_connections={proxy.counters.connections}"
    )
    # measured ~5 s after the link returned; the bound is the heartbeat's (5 + 1) x 3 = 18 s
    # plus a reconnect interval (5 s), with room for a loaded machine
    assert back_s <= R5_LINK_BOUND_S, back_s
    assert kind == "translation_result"
    await settle_idle(fredis, fstack.keys)
