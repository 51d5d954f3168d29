"""Job-path recipes of docs/reliability.md: J1-J4 (J5, a session resumed across a gateway kill,
is in test_outbox_faults.py; J6, graceful drain, has its own suite).

Nodes connect to gw-a, clients to gw-b, two dispatcher replicas. Each recipe prints its figure
and ends with the invariants of docs/architecture.md: every accepted utterance answered exactly
once, and no reservation left once the system is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time

import pytest

from lingua_shared.scripts import find_lua_dir
from lingua_shared.scripts.loader import load_source
from tests.faults.workload import Session, job_records, metric
from tests.support.agents import node_processes
from tests.support.helpers import eventually
from tests.support.invariants import settle_idle
from tests.support.sessions import session_url
from tests.support.stack import JOB_SERVICES, start_all, wait_ready

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


async def test_j3_a_dispatcher_killed_between_reserve_and_send_leaks_nothing(
    fstack, fredis, live_redis, proxy_factory
):
    """J3: the real dispatcher process SIGKILLed right after select_node reserved a slot,
    before it sent the job_assign -> the reservation is released within the assignment (ack)
    timeout by the other replica, and the job is answered through another node.

    Each dispatcher reaches Redis through a proxy of its own that withholds the replies to
    select_node (by its SHA): the script runs in Redis and reserves, the dispatcher waits for
    the reply, and the test kills whichever one took the request, with the reservation seen
    in Redis, then lets the other's replies pass."""
    keys, ack_timeout_s = fstack.keys, 1.0
    sha = hashlib.sha1(load_source(find_lua_dir(), "select_node").encode()).hexdigest()
    proxies = {name: proxy_factory(live_redis.port, resp=True) for name in ("disp-1", "disp-2")}
    start_all(fstack, ("nm-1", "node-manager"), ("gw-a", "gateway"), ("gw-b", "gateway"))
    for name, proxy in proxies.items():
        proxy.set("drop_replies", every=1, commands=["EVALSHA"], match=sha.encode())
        url = live_redis.url.replace(f":{live_redis.port}", f":{proxy.port}")
        fstack.start(name, "dispatcher", LINGUA_REDIS_URL=url)
    for name in proxies:
        await wait_ready(fstack.procs[name], 60)
    # a second node: the first, having "failed" to ack, is not tried again for this job
    async with node_processes(fstack, fredis, ("node-j3", {}), ("node-j3-other", {})) as nodes:
        s = await Session.open(session_url(fstack, "gw-b"))
        await s.utterance(0)
        stalled = await eventually(
            lambda: _withheld(proxies), timeout=15, interval=0.005, what="select_node withheld"
        )
        reserved_on = await eventually(
            lambda: _reserved_node(fredis, keys, nodes), timeout=5, interval=0.005,
            what="the slot reserved in Redis",
        )  # fmt: skip
        fstack.procs[stalled].signal(signal.SIGKILL)
        t0 = time.monotonic()
        for name, proxy in proxies.items():
            if name != stalled:
                proxy.set("pass")
        fstack.procs[stalled].proc.wait(10)
        jobs = await job_records(fredis, keys)
        (job,) = jobs.values()
        assert (job["state"], job["attempt"]) == ("assigned", "1"), job
        await eventually(
            lambda: _no_reservation(fredis, keys, reserved_on),
            timeout=ack_timeout_s + 10,
            interval=0.01,
            what="the orphaned reservation released",
        )
        released_s = time.monotonic() - t0
        await s.collect(1, timeout=10)
        job = next(iter((await job_records(fredis, keys)).values()))
        survivor = next(n for n in proxies if n != stalled)
        print(
            f"J3 killed={stalled} (pid SIGKILLed with select_node's reply withheld) "
            f"reserved_on={reserved_on} reservation_released_after={released_s:.2f}s "
            f"(ack timeout {ack_timeout_s}s) by={survivor} "
            f"answers={[a['type'] for a in s.answers]} final_attempt={job['attempt']} "
            f"node={job.get('node_id')}"
        )
        assert released_s <= ack_timeout_s + 2.0, released_s  # timer period 50 ms + slack
        assert [a["type"] for a in s.answers] == ["translation_result"], s.answers
        assert int(job["attempt"]) == 2 and job["node_id"] != reserved_on, job
        await s.close()
    await settle_idle(fredis, keys)


async def _withheld(proxies) -> str | None:  # type: ignore[no-untyped-def]
    """The dispatcher whose select_node reply the proxy withheld, once one was."""
    for name, proxy in proxies.items():
        if proxy.counters.dropped:
            return name
    return None


async def _reserved_node(fredis, keys, nodes) -> str | None:  # type: ignore[no-untyped-def]
    for p in nodes:
        if (await slots(fredis, keys, p.node_id))[0] == 1:
            return p.node_id
    return None


async def _no_reservation(fredis, keys, node_id: str) -> bool:  # type: ignore[no-untyped-def]
    h = await fredis.hmget(keys.node(node_id), "reserved")
    jobs = await fredis.smembers(keys.node_jobs(node_id))
    states = [await fredis.hget(keys.job(j.decode()), "state") for j in jobs]
    return int(h[0] or 0) == 0 and b"assigned" not in states


# J5 (the client resumes the same session on another gateway replica after its own was
# SIGKILLed) is in test_outbox_faults.py, with the outbox it depends on.
