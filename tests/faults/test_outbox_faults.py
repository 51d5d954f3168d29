"""Results are at-least-once to the gateway and exactly once to the client (the outbox):
a dispatcher SIGKILLed between ``job_finish`` and the publish, a gateway SIGKILLed
mid-delivery with the client resuming the same session on another replica (J5). Nothing is
lost, nothing is shown twice, and in ordered sessions the order holds across connections."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.faults.workload import Session, job_records, metric
from tests.support.agents import node_processes
from tests.support.helpers import eventually
from tests.support.invariants import settle_idle
from tests.support.sessions import session_url
from tests.support.stack import start_all

pytestmark = [pytest.mark.faults, pytest.mark.integration]
RETRY_MS = "1000"  # an unacknowledged answer is published again after 1 s


async def test_o1_a_dispatcher_killed_between_job_finish_and_publish_loses_nothing(fstack, fredis):
    """The only dispatcher dies (SIGKILL, at the point where job_finish has released the
    answer and nothing is published); a new replica takes the redelivered result, whose
    replayed job_finish hands the answer back (or the outbox claim publishes it)."""
    total = 4
    start_all(
        fstack, ("nm-1", "node-manager"), ("gw-a", "gateway"), ("gw-b", "gateway"),
        ("disp-1", "dispatcher"), LINGUA_TEST_CRASH_AT="after_job_finish",
        LINGUA_OUTBOX_RETRY_MS=RETRY_MS, LINGUA_NO_NODE_WAIT_MS="10000",
    )  # fmt: skip
    async with node_processes(fstack, fredis, ("node-o1", {"processing_ms": 100})):
        s = await Session.open(session_url(fstack, "gw-b"))
        for i in range(total):
            await s.utterance(i)
        disp1 = fstack.procs["disp-1"]
        await eventually(
            lambda: asyncio.sleep(0, disp1.proc.poll() is not None),
            timeout=20,
            what="disp-1 killed after its first job_finish",
        )
        assert disp1.proc.returncode == -signal.SIGKILL
        t0 = time.monotonic()
        # in a thread: the client's loop must keep answering its session's pings meanwhile
        await asyncio.to_thread(
            start_all, fstack, ("disp-2", "dispatcher"), LINGUA_OUTBOX_RETRY_MS=RETRY_MS,
            LINGUA_NO_NODE_WAIT_MS="10000",
        )  # fmt: skip
        await s.collect(total, timeout=20)
        recovered_s = time.monotonic() - t0
        republished = metric(fstack, "disp-2", "lingua_outbox_republished_total")
        print(
            f"O1 answered={len(s.answers)}/{total} duplicates={s.duplicates()} "
            f"republished={republished:.0f} all_answered_after={recovered_s:.2f}s "
            "(from the new replica's start)"
        )
        assert s.indexes() == list(range(total)), s.answers  # in order, none lost, no copy
        assert all(a["type"] == "translation_result" for a in s.answers), s.answers
        assert republished >= 1
        await eventually(
            lambda: _outbox_empty(fredis, fstack.keys), timeout=5, what="every answer acked"
        )
        await s.close()
    await settle_idle(fredis, fstack.keys)


async def _outbox_empty(fredis, keys) -> bool:  # type: ignore[no-untyped-def]
    return await fredis.zcard(keys.outbox) == 0 and not await fredis.keys(
        keys.prefix + "session:*:outbox"
    )


async def test_o2_answers_a_killed_gateway_never_wrote_come_from_the_outbox_on_resume(
    fstack, fredis
):
    """The client's gateway is frozen (SIGSTOP) while every job of the session finishes, so
    their answers are published to it and never written, then SIGKILLed. The client resumes
    the session on another replica and sends nothing again: what it is owed comes from the
    session's outbox alone, once each, in order."""
    total = 5
    start_all(
        fstack, ("nm-1", "node-manager"), ("disp-1", "dispatcher"), ("disp-2", "dispatcher"),
        ("gw-a", "gateway"), ("gw-b", "gateway"), ("gw-c", "gateway"),
        LINGUA_OUTBOX_RETRY_MS=RETRY_MS, LINGUA_NO_NODE_WAIT_MS="10000",
    )  # fmt: skip
    keys = fstack.keys
    async with node_processes(fstack, fredis, ("node-o2", {"processing_ms": 300, "capacity": 2})):
        s = await Session.open(session_url(fstack, "gw-b"))
        for i in range(total):
            await s.utterance(i)
        await s.collect(1, timeout=15)
        fstack.procs["gw-b"].signal(signal.SIGSTOP)

        async def all_done() -> bool:
            jobs = await job_records(fredis, keys)
            return len(jobs) == total and all(j.get("state") == "done" for j in jobs.values())

        await eventually(all_done, timeout=20, what="every job finished")
        owed = sorted(int(i) for i in await fredis.hkeys(keys.session_outbox(s.session_id)))
        fstack.procs["gw-b"].signal(signal.SIGKILL)
        fstack.procs["gw-b"].signal(signal.SIGCONT)
        got = s.indexes()
        assert got == list(range(len(got))), got
        t0 = time.monotonic()
        second = await Session.resume(session_url(fstack, "gw-c"), s.session_id, got)
        rest = [i for i in range(total) if i not in got]
        await second.collect(len(rest), timeout=10)
        replay_s = time.monotonic() - t0
        await second.collect(len(rest) + 1, timeout=1.5)  # nothing more may come
        print(
            f"O2 written_before_kill={got} owed_in_outbox={owed} "
            f"replayed={second.indexes()} after={replay_s:.2f}s duplicates=0"
        )
        assert owed and set(rest) <= set(owed), (owed, rest)
        assert second.indexes() == rest, second.answers
        assert all(a["type"] == "translation_result" for a in second.answers)
        jobs = await job_records(fredis, keys)
        assert len(jobs) == total  # nothing ran twice: every answer came from the outbox
        await eventually(lambda: _outbox_empty(fredis, keys), timeout=5, what="every answer acked")
        await second.close()
    await settle_idle(fredis, keys)


async def test_j5_the_same_session_resumes_on_another_gateway_without_gaps_or_copies(
    fstack, fredis
):
    """J5: two gateways for clients; the client's replica is SIGKILLed mid-stream; the client
    resumes the SAME session on the other (saying which answers it has) and sends again the
    utterances it has no answer for (same indices: job_create absorbs those already taken).
    Across both connections: every utterance answered once, 0 duplicates, in index order."""
    total = 8
    start_all(
        fstack, ("nm-1", "node-manager"), ("disp-1", "dispatcher"), ("disp-2", "dispatcher"),
        ("gw-a", "gateway"), ("gw-b", "gateway"), ("gw-c", "gateway"),
        LINGUA_OUTBOX_RETRY_MS=RETRY_MS, LINGUA_NO_NODE_WAIT_MS="10000",
    )  # fmt: skip
    async with node_processes(fstack, fredis, ("node-j5", {"processing_ms": 250, "capacity": 2})):
        first = await Session.open(session_url(fstack, "gw-b"))
        for i in range(total):
            await first.utterance(i)
        await first.collect(2, timeout=15)
        fstack.procs["gw-b"].signal(signal.SIGKILL)
        t0 = time.monotonic()
        await first.collect(total, timeout=3)  # whatever was already on the wire, then EOF
        got = first.indexes()
        assert got == list(range(len(got))), got  # gap-free prefix, monotone, no copy
        second = await Session.resume(session_url(fstack, "gw-c"), first.session_id, got)
        rest = [i for i in range(total) if i not in got]
        for i in rest:
            await second.utterance(i)
        await second.collect(len(rest), timeout=20)
        resumed_s = time.monotonic() - t0
        await second.collect(len(rest) + 1, timeout=1.5)  # nothing more may come
        both = got + second.indexes()
        print(
            f"J5 before_kill={len(got)} after_resume={len(second.answers)} "
            f"answered={len(set(both))}/{total} duplicates={len(both) - len(set(both))} "
            f"all_answered_after={resumed_s:.2f}s"
        )
        assert second.indexes() == rest, second.answers  # the rest, in order, once each
        assert sorted(both) == list(range(total)) and len(both) == total
        assert all(a["type"] == "translation_result" for a in first.answers + second.answers)
        await eventually(
            lambda: _outbox_empty(fredis, fstack.keys), timeout=5, what="every answer acked"
        )
        await second.close()
    await settle_idle(fredis, fstack.keys)
