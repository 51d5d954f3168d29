"""Background loops of every dispatcher replica: job timers, result-gap timeouts and the
sessions' outboxes (answers no gateway has acknowledged, published again).

Timers are claimed atomically (``timers_claim``), so each due timer is handled by one
replica; a claim only pushes the timer forward, so a replica that dies mid-way leaves the
timer to fire again for another.
"""

from __future__ import annotations

import asyncio

from lingua_dispatcher.jobs import Jobs
from lingua_shared.logs import get_logger
from lingua_shared.runtime import now_ms, pause
from lingua_shared.scripts import ScriptCode

log = get_logger(__name__)
CLAIM_MS = 5_000
BATCH = 200


async def fire_timers(jobs: Jobs) -> int:
    """Handle every job whose lease, deadline or wait has ended; returns how many."""
    due = await jobs.s.timers_claim(now_ms=now_ms(), claim_ms=CLAIM_MS, limit=BATCH)
    for job_id in due:
        job = await jobs.read_job(job_id)
        state = job.get("state") if job else None
        attempt = int(job.get("attempt") or 0) if job else 0
        if job is None or state in ("done", "failed"):
            await jobs.infra.redis.zrem(jobs.infra.keys.timers, job_id)
        elif state == "assigned":
            await jobs.redispatch(job_id, attempt, "ack_timeout")
        elif state == "acked":
            await jobs.redispatch(job_id, attempt, "deadline")
        elif state == "exhausted":  # taken back with no attempt left; its taker died
            reason = job.get("release_reason") or "node_lost"
            node = job.get("node_id") or ""
            await jobs.takeback.fail_exhausted(job_id, attempt, reason, node, job)
        else:  # waiting for a slot, or released by a replica that died before dispatching
            await jobs.dispatch(job_id, attempt + 1, job=job)
    return len(due)


async def expire_gaps(jobs: Jobs) -> int:
    """Answer overdue holes in sessions' result order with missing_result (J6)."""
    r, k = jobs.infra.redis, jobs.infra.keys
    now = now_ms()
    sessions = await r.zrangebyscore(k.gaps, "-inf", now, start=0, num=BATCH)
    for raw in sessions:
        session_id = raw.decode()
        delivery = await jobs.s.gap_expire(
            session_id=session_id,
            now_ms=now,
            gap_ms=jobs.settings.gap_timeout_ms,
            session_ttl_ms=int(jobs.settings.session_ttl_s * 1000),
        )
        if delivery.code == ScriptCode.GAP_ANSWERED:
            log.info(
                "session.gap_timeout",
                session_id=session_id,
                utterance_index=delivery.items[0][0] if delivery.items else None,
            )
            await jobs.outcomes.deliver(session_id, delivery)
    return len(sessions)


async def republish_outbox(jobs: Jobs) -> int:
    """Publish again the answers that sessions' outboxes held unacknowledged for
    ``outbox_retry_ms`` (``outbox_claim``: one replica per session and round)."""
    pending = await jobs.s.outbox_claim(
        now_ms=now_ms(), retry_ms=jobs.settings.outbox_retry_ms, limit=BATCH
    )
    await jobs.outcomes.republish(pending)
    return len(pending)


async def loop(interval_s: float, name: str, fn, jobs: Jobs, stop: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
    """Run ``fn`` back to back while it finds work, else every ``interval_s``, until ``stop``
    (checked between rounds, so a round is never cut half-way by a shutdown)."""
    while not stop.is_set():
        try:
            busy = await fn(jobs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("dispatcher.loop_failed", loop=name, error=repr(exc))
            busy = 0
        if not busy:
            await pause(stop, interval_s)
