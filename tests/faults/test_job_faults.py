"""Job-path recipes of RELIABILITY.md: J1-J5 (J6, graceful drain, has its own suite).

Nodes connect to gw-a, clients to gw-b, two dispatcher replicas. Each recipe prints its figure
and ends with the invariants of ARCHITECTURE.md: every accepted utterance answered exactly
once, and no reservation left once the system is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time

import pytest

from tests.faults.conftest import start_all
from tests.faults.workload import (
    NodeProcess,
    Session,
    job_records,
    metric,
    node_ready,
    node_url,
    session_url,
)
from tests.integration.helpers import eventually
from tests.integration.invariants import settle_idle

pytestmark = [pytest.mark.faults, pytest.mark.integration]

JOB_SERVICES = (
    ("nm-1", "node-manager"),
    ("disp-1", "dispatcher"),
    ("disp-2", "dispatcher"),
    ("gw-a", "gateway"),
    ("gw-b", "gateway"),
)


@contextlib.asynccontextmanager
async def nodes(stack, fredis, *specs: tuple[str, dict]):  # type: ignore[no-untyped-def]
    """Simulated nodes as processes on gw-a, each registered and ready before the body."""
    procs = [
        NodeProcess(node_url(stack, "gw-a"), prefix, stack.log_dir / f"{prefix}.log", **kw)
        for prefix, kw in specs
    ]
    try:
        for p in procs:
            await eventually(
                lambda p=p: node_ready(fredis, stack.keys, p.node_id),
                timeout=20,
                what=f"{p.node_id} ready",
            )
        yield procs
    finally:
        for p in procs:
            p.stop()


async def slots(fredis, keys, node_id: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    h = await fredis.hmget(keys.node(node_id), "reserved", "running")
    return int(h[0] or 0), int(h[1] or 0)


async def test_j4_a_retried_request_makes_one_job(fstack, fredis):
    """J4: the same utterance sent 3 times -> exactly 1 job, 1 reservation, 1 result."""
    start_all(fstack, *JOB_SERVICES)
    async with nodes(fstack, fredis, ("node-j4", {"processing_ms": 300})):
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
        assert metric(fstack, "disp-1", "lingua_job_duplicates_total") + metric(
            fstack, "disp-2", "lingua_job_duplicates_total"
        ) == 2
        await s.close()
    await settle_idle(fredis, fstack.keys)


async def test_j1_a_killed_node_has_its_jobs_redispatched_and_slots_freed(fstack, fredis):
    """J1: SIGKILL a node holding k=3 jobs -> its slots are freed within TTL + heartbeat and
    each job is redispatched (or failed with a typed error); no silent hang."""
    keys, k = fstack.keys, 3
    start_all(fstack, *JOB_SERVICES)
    async with nodes(
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
        async with nodes(fstack, fredis, ("node-z-healthy", {"capacity": k})):
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
        assert all(
            a["type"] == "translation_result" or a.get("code") for a in s.answers
        ), s.answers
        await s.close()
    await settle_idle(fredis, keys)


async def _is(aw, expected) -> bool:  # type: ignore[no-untyped-def]
    return (await aw) == expected
