"""Job-path recipes of docs/reliability.md: J1-J5 (J6, graceful drain, has its own suite).

Nodes connect to gw-a, clients to gw-b, two dispatcher replicas. Each recipe prints its figure
and ends with the invariants of docs/architecture.md: every accepted utterance answered exactly
once, and no reservation left once the system is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.workload import Session, job_records, metric
from tests.support.agents import node_processes
from tests.support.helpers import eventually
from tests.support.invariants import settle_idle
from tests.support.sessions import session_url
from tests.support.stack import JOB_SERVICES, start_all

pytestmark = [pytest.mark.faults, pytest.mark.integration]


async def slots(fredis, keys, node_id: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    h = await fredis.hmget(keys.node(node_id), "reserved", "running")
    return int(h[0] or 0), int(h[1] or 0)


async def test_j4_a_retried_request_makes_one_job(fstack, fredis):
    """J4: the same utterance sent 3 times -> exactly 1 job, 1 reservation, 1 result."""
    start_all(fstack, *JOB_SERVICES)
    async with node_processes(fstack, fredis, ("node-j4", {"processing_ms": 300})):
        s = await Session.open(session_url(fstack, "gw-b"))
        for _ in range(3):  # a client retrying: same request id, no index
            await s.utterance(0, request_id="req-j4")
        await s.collect(3, timeout=4)  # wait long enough for any copy to be answered
        jobs = await job_records(fredis, fstack.keys)
        reservations = sum(len(j.get("tried", "").split(",")) for j in jobs.values())
        results = [a for a in s.answers if a["type"] == "translation_result"]
        print(f"J4 jobs={len(jobs)} reservations={reservations} results={len(results)}")
        assert len(jobs) == 1 and reservations == 1 and len(results) == 1, s.answers
        assert len(s.answers) == 1 and s.duplicates() == 0
        assert (
            metric(fstack, "disp-1", "lingua_job_duplicates_total")
            + metric(fstack, "disp-2", "lingua_job_duplicates_total")
            == 2
        )
        await s.close()
    await settle_idle(fredis, fstack.keys)


async def test_j1_a_killed_node_has_its_jobs_redispatched_and_slots_freed(fstack, fredis):
    """J1: SIGKILL a node holding k=3 jobs -> its slots are freed within TTL + heartbeat and
    each job is redispatched (or failed with a typed error); no silent hang."""
    keys, k = fstack.keys, 3
    start_all(fstack, *JOB_SERVICES)
    async with node_processes(
        fstack, fredis, ("node-a-doomed", {"processing_ms": 60_000, "capacity": k})
    ) as (doomed,):
        s = await Session.open(session_url(fstack, "gw-b"))
        for i in range(k):
            await s.utterance(i)
        await eventually(
            lambda: _is(slots(fredis, keys, doomed.node_id), (0, k)),
            timeout=10,
            what="k jobs running on the doomed node",
        )
        async with node_processes(fstack, fredis, ("node-z-healthy", {"capacity": k})):
            t0 = time.monotonic()
            doomed.signal(signal.SIGKILL)
            await eventually(
                lambda: _is(slots(fredis, keys, doomed.node_id), (0, 0)),
                timeout=5,
                what="the dead node's slots freed",
            )
            freed_s = time.monotonic() - t0
            await s.collect(k, timeout=10)
            answered_s = time.monotonic() - t0
        kinds = sorted(a["type"] for a in s.answers)
        print(
            f"J1 k={k} slots_freed_after={freed_s:.2f}s answered={len(s.answers)}/{k} "
            f"after={answered_s:.2f}s kinds={kinds} duplicates={s.duplicates()}"
        )
        # TTL 1 s + heartbeat 0.2 s is the bound; the disconnect usually frees them at once
        assert freed_s <= 1.2 + 1.0, freed_s  # + one sweep and a noisy machine's slack
        assert sorted(s.indexes()) == list(range(k)) and s.duplicates() == 0
        assert all(a["type"] == "translation_result" or a.get("code") for a in s.answers), s.answers
        await s.close()
    await settle_idle(fredis, keys)


async def _is(aw, expected) -> bool:  # type: ignore[no-untyped-def]
    return (await aw) == expected


async def test_j2_a_zombie_node_cannot_deliver_stale_results(fstack, fredis):
    """J2: SIGSTOP a node past its job deadline, then SIGCONT -> 0 stale-attempt results reach
    the client (the zombie's result is fenced off by attempt_id in job_finish)."""
    keys = fstack.keys
    # long pings: the zombie's connection survives the stop, so its late result does arrive
    start_all(fstack, *JOB_SERVICES, LINGUA_WS_PING_INTERVAL_S="30", LINGUA_WS_PING_TIMEOUT_S="30")
    async with node_processes(fstack, fredis, ("node-a-zombie", {"processing_ms": 1500})) as (
        zombie,
    ):
        s = await Session.open(session_url(fstack, "gw-b"))
        await s.utterance(0)
        await eventually(
            lambda: _is(slots(fredis, keys, zombie.node_id), (0, 1)), what="the job acked"
        )
        zombie.signal(signal.SIGSTOP)
        async with node_processes(fstack, fredis, ("node-z-healthy", {})):
            await s.collect(1, timeout=10)  # deadline (3 s) -> attempt 2 on the healthy node
            assert [a["type"] for a in s.answers] == ["translation_result"], s.answers
            zombie.signal(signal.SIGCONT)
            stale = 0.0
            with contextlib.suppress(AssertionError):
                stale = await eventually(
                    lambda: _stale(fstack), timeout=6, what="the zombie's result dropped"
                )
            await s.collect(2, timeout=1.0)  # nothing more may come
        job = next(iter((await job_records(fredis, keys)).values()))
        print(
            f"J2 answers={len(s.answers)} stale_results_dropped={stale:.0f} "
            f"stale_reaching_client=0 final_attempt={job['attempt']}"
        )
        assert len(s.answers) == 1 and s.duplicates() == 0, s.answers
        assert int(job["attempt"]) >= 2 and job["state"] == "done"
        assert stale >= 1, "the zombie's result never came back: the recipe proved nothing"
        await s.close()
    await settle_idle(fredis, keys)


async def _stale(stack) -> float:  # type: ignore[no-untyped-def]
    total = 0.0
    for d in ("disp-1", "disp-2"):
        total += await asyncio.to_thread(
            metric, stack, d, "lingua_stale_node_messages_total", {"type": "job_result"}
        )
    return total


async def test_j3_a_dispatcher_killed_between_reserve_and_send_leaks_nothing(fstack, fredis):
    """J3: a dispatcher SIGKILLed right after select_node reserved a slot -> the reservation
    is released within the assignment (ack) timeout and the job goes on."""
    keys, ack_timeout_s = fstack.keys, 1.0
    start_all(fstack, *JOB_SERVICES)
    # a second node: the first, having "failed" to ack, is not tried again for this job
    async with node_processes(fstack, fredis, ("node-j3", {}), ("node-j3-other", {})) as (node, _):
        s = await Session.open(session_url(fstack, "gw-b"))
        helper = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("half_dispatch.py")),
                fstack.env["LINGUA_REDIS_URL"],
                fstack.env["LINGUA_CELL"],
                s.session_id,
                str(int(ack_timeout_s * 1000)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            line = await asyncio.wait_for(asyncio.to_thread(helper.stdout.readline), 20)
            assert line.startswith(b"reserved"), line
            helper.send_signal(signal.SIGKILL)
            t0 = time.monotonic()
        finally:
            helper.kill()
            helper.wait(5)
            helper.stdout.close()
        reserved_on = line.split()[2].decode()
        node = next(p for p in (node, _) if p.node_id == reserved_on)
        assert (await slots(fredis, keys, node.node_id))[0] == 1, "the slot was reserved"
        await eventually(
            lambda: _no_reservation(fredis, keys, node.node_id),
            timeout=ack_timeout_s + 4,
            what="the orphaned reservation released",
        )
        released_s = time.monotonic() - t0
        await s.collect(1, timeout=10)
        print(
            f"J3 reservation_released_after={released_s:.2f}s (ack timeout {ack_timeout_s}s) "
            f"answers={[a['type'] for a in s.answers]}"
        )
        assert released_s <= ack_timeout_s + 1.5, released_s  # timer period 50 ms + slack
        assert [a["type"] for a in s.answers] == ["translation_result"], s.answers
        await s.close()
    await settle_idle(fredis, keys)


async def _no_reservation(fredis, keys, node_id: str) -> bool:  # type: ignore[no-untyped-def]
    h = await fredis.hmget(keys.node(node_id), "reserved")
    jobs = await fredis.smembers(keys.node_jobs(node_id))
    states = [await fredis.hget(keys.job(j.decode()), "state") for j in jobs]
    return int(h[0] or 0) == 0 and b"assigned" not in states


async def test_j5_results_reach_the_client_once_in_order_across_a_gateway_kill(fstack, fredis):
    """J5: SIGKILL the client's gateway replica mid-stream; the client reconnects to another
    replica and sends again what it has no answer for -> 0 gaps in what was committed to it,
    0 duplicates, monotone order on each connection, every utterance answered once."""
    total = 8
    # jobs queue for a slot rather than fail fast: the recipe is about delivery, not capacity
    start_all(fstack, *JOB_SERVICES, ("gw-c", "gateway"), LINGUA_NO_NODE_WAIT_MS="10000")
    async with node_processes(fstack, fredis, ("node-j5", {"processing_ms": 250, "capacity": 2})):
        first = await Session.open(session_url(fstack, "gw-b"))
        for i in range(total):
            await first.utterance(i)
        await first.collect(2, timeout=15)
        fstack.procs["gw-b"].signal(signal.SIGKILL)
        await first.collect(total, timeout=3)  # whatever was already on the wire, then EOF
        got = first.indexes()
        committed = len(got)
        # gap-free prefix, monotone, no duplicate
        assert got == list(range(committed)), got
        assert all(a["type"] == "translation_result" for a in first.answers)
        second = await Session.open(session_url(fstack, "gw-c"))
        rest = list(range(committed, total))
        for new_index, _old in enumerate(rest):
            await second.utterance(new_index)
        await second.collect(len(rest), timeout=15)
        assert second.indexes() == list(range(len(rest))), second.answers
        assert all(a["type"] == "translation_result" for a in second.answers)
        await second.collect(len(rest) + 1, timeout=1.0)  # nothing more may come
        assert len(second.answers) == len(rest), second.answers
        dropped = sum(
            metric(fstack, d, "lingua_deliveries_dropped_total") for d in ("disp-1", "disp-2")
        )
        print(
            f"J5 committed_before_kill={committed} resent={len(rest)} gaps=0 "
            f"duplicates={first.duplicates() + second.duplicates()} "
            f"answered={committed + len(second.answers)}/{total} "
            f"orphaned_deliveries_dropped={dropped:.0f}"
        )
        await second.close()
    await settle_idle(fredis, fstack.keys)
