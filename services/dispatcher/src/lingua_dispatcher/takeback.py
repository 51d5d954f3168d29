"""Taking a job back from its node (J5): release the attempt, tell a node that may still be
working on it (``job_cancel``), and fail the job when no attempt is left."""

from __future__ import annotations

from typing import Any

from lingua_dispatcher.job_record import read_job
from lingua_dispatcher.metrics import Metrics
from lingua_dispatcher.outcomes import Outcomes
from lingua_shared.bus import Unroutable
from lingua_shared.errors import DependencyDown
from lingua_shared.events import ToNode
from lingua_shared.logs import get_logger
from lingua_shared.protocol import ErrorCode, JobCancel
from lingua_shared.runtime import Infra, now_ms
from lingua_shared.scripts import Release, ScriptCode

log = get_logger(__name__)
# take-back reasons whose exhaustion is reported to the client as this code
EXHAUSTED_CODE = {"ack_timeout": ErrorCode.JOB_TIMEOUT, "deadline": ErrorCode.JOB_TIMEOUT}
# take-backs the node is told about (job_cancel, with lingua's reason): it may still be
# working on the job, which now runs elsewhere
CANCEL_REASONS = {"deadline": "job_timeout", "ack_timeout": "ack_timeout"}


class TakeBack:
    def __init__(self, infra: Infra, metrics: Metrics, outcomes: Outcomes) -> None:
        self.infra = infra
        self.s = infra.scripts
        self.settings = infra.settings
        self.metrics = metrics
        self.outcomes = outcomes

    async def take_back(
        self, job_id: str, attempt: int, reason: str, job: dict[str, Any] | None = None
    ) -> int | None:
        """Release ``attempt``; the next attempt number, or None when nothing more to do.

        A node that may still be working on the job (its deadline or ack lease passed) is
        told with ``job_cancel``: the job now runs elsewhere."""
        rel = await self.s.job_release(
            job_id=job_id,
            attempt=attempt,
            reason=reason,
            now_ms=now_ms(),
            max_attempts=self.settings.max_attempts,
        )
        if rel.code == ScriptCode.NOT_CURRENT:
            return None  # another replica moved this job on already
        self.metrics.redispatch.labels(reason).inc()
        job = job or await read_job(self.infra, job_id)
        if reason in CANCEL_REASONS and rel.gateway_id:
            await self.cancel_on_node(job_id, rel, CANCEL_REASONS[reason], job)
        if rel.code == ScriptCode.RELEASED:
            log.info("job.taken_back", job_id=job_id, attempt=attempt, reason=reason)
            return rel.attempt
        await self.fail_exhausted(job_id, attempt, reason, rel.node_id, job)
        return None

    async def fail_exhausted(
        self,
        job_id: str,
        attempt: int,
        reason: str,
        node_id: str,
        job: dict[str, Any] | None = None,
    ) -> None:
        """A job taken back with no attempt left ('exhausted': never dispatched again) fails
        with a typed error. Also what its rescue timer does when the replica that took it
        back died before this."""
        job = job or await read_job(self.infra, job_id)
        if job is None:
            return
        code = EXHAUSTED_CODE.get(reason, ErrorCode.NODE_UNAVAILABLE)
        await self.outcomes.fail(
            job_id,
            job,
            code,
            f"no node completed utterance {job['utterance_index']} in {attempt} attempts "
            f"(the last one: {reason} on node {node_id or 'unknown'})",
        )

    async def window_too_short(self, job: dict[str, Any], now: int) -> int | None:
        """A job's whole life fits inside its session's gap window, or its client is told at
        once: when the job is a hole of an ``ordered`` session that holds later answers (its
        deadline in ``gaps`` runs), and what is left of that window cannot hold another
        whole attempt (ack lease + job deadline), the ms left; else None. The gap would
        answer the hole with ``gap_timeout`` before such an attempt could end."""
        r, k = self.infra.redis, self.infra.keys
        session_id, index = job["session_id"], int(job["utterance_index"])
        deadline = await r.zscore(k.gaps, session_id)
        if deadline is None:
            return None
        left = int(deadline) - now
        if left >= self.settings.ack_timeout_ms + self.settings.job_deadline_ms:
            return None
        waiting = await r.hkeys(k.session_results(session_id))
        if not any(_index(raw) > index for raw in waiting):
            return None  # nothing waits behind this utterance: no hole, no window
        return max(0, left)

    async def cancel_on_node(
        self, job_id: str, rel: Release, reason: str, job: dict[str, Any] | None
    ) -> None:
        """Best effort: the node's connection may be gone (its timers already decided)."""
        cancel = JobCancel(
            job_id=job_id, trace_id=(job or {}).get("trace_id"), reason=reason
        ).to_wire()
        try:
            await self.infra.publisher.to_gateway(
                rel.gateway_id,
                ToNode(node_id=rel.node_id, conn_id=rel.conn_id, payload=cancel),
                batch=True,
            )
            self.metrics.cancels.labels(reason).inc()
        except (Unroutable, DependencyDown) as exc:
            log.info("job.cancel_unroutable", job_id=job_id, node_id=rel.node_id, error=repr(exc))


def _index(raw: bytes | str) -> int:
    """An utterance index of a session's results hash (-1 for a field that is none)."""
    try:
        return int(raw)
    except ValueError:
        return -1
