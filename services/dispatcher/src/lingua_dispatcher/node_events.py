"""What nodes say about their jobs (ack, result, partial, error) and nodes going away.

Every message is checked against the job record in the same script that writes (attempt and
node fencing): a result from a stale attempt, or from a node the job is not assigned to, is
dropped and counted, never delivered.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lingua_dispatcher.jobs import Jobs
from lingua_shared.events import NodeDisconnected, NodeJobEvent, ToSession
from lingua_shared.logs import get_logger
from lingua_shared.protocol import (
    CloseCode,
    ErrorCode,
    JobResult,
    NodeAsrPartial,
    NodeError,
    ServiceType,
    is_refusal,
)
from lingua_shared.protocol.session import ClientAsrPartial, MissingResult, TranslationResult
from lingua_shared.runtime import now_ms
from lingua_shared.scripts import ScriptCode

log = get_logger(__name__)
SERVICE_TYPES = frozenset(t.value for t in ServiceType)
GATEWAY_RESTART_CLOSE = CloseCode.SERVICE_RESTART  # a draining gateway's "reconnect elsewhere"
# a node refusing or unable to run a job: give it to another node instead of failing it
RETRY_ELSEWHERE = {
    ErrorCode.MODEL_NOT_AVAILABLE.value,
    ErrorCode.MODEL_LOAD_FAILED.value,
    ErrorCode.NODE_OVERLOADED.value,
    ErrorCode.NODE_UNAVAILABLE.value,
}


class NodeEvents:
    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs
        self.s = jobs.s
        self.settings = jobs.settings
        self.metrics = jobs.metrics

    async def on_event(self, ev: NodeJobEvent) -> None:
        kind = ev.message.get("type")
        try:
            if kind == "job_ack":
                await self.on_ack(ev)
            elif kind == "job_result":
                await self.on_result(ev, JobResult.model_validate(ev.message))
            elif kind == "asr_partial":
                await self.on_partial(ev, NodeAsrPartial.model_validate(ev.message))
            elif kind == "node_error":
                await self.on_node_error(ev, NodeError.model_validate(ev.message))
            # job_started carries nothing the state machine needs
        except ValidationError as exc:
            log.warning(
                "dispatcher.bad_node_message",
                node_id=ev.node_id,
                type=kind,
                error=str(exc.errors()[0]["msg"]) if exc.errors() else "",
            )
            self.metrics.stale.labels(str(kind), "invalid").inc()

    async def on_ack(self, ev: NodeJobEvent) -> None:
        job_id, attempt = str(ev.message.get("job_id")), int(ev.message.get("attempt_id") or 1)
        res = await self.s.job_ack(
            job_id=job_id,
            attempt=attempt,
            node_id=ev.node_id,
            now_ms=now_ms(),
            deadline_ms=self.settings.job_deadline_ms,
        )
        if res.code in (ScriptCode.STALE_JOB, ScriptCode.NO_SUCH_JOB):
            self.metrics.stale.labels("job_ack", _why(res.code, res.value)).inc()
            log.info(
                "job.ack_dropped", job_id=job_id, attempt=attempt, node_id=ev.node_id, why=res.value
            )
        elif res.code == ScriptCode.COMMITTED:
            log.info("job.acked", job_id=job_id, attempt=attempt, node_id=ev.node_id)

    async def on_result(self, ev: NodeJobEvent, r: JobResult) -> None:
        job = await self.jobs.read_job(r.job_id)
        if job is None:
            self.metrics.stale.labels("job_result", "unknown_job").inc()
            return
        if not r.success:
            err = r.error
            code = err.code if err else ErrorCode.INTERNAL_ERROR.value
            details = (err.details or {}) if err else {}
            if is_refusal(code, err.message if err else "", details):
                # the node refused a copy of a job it already has: the original stands
                self.metrics.stale.labels("job_result", "duplicate_refused").inc()
                return
            if code in RETRY_ELSEWHERE:
                if code == ErrorCode.MODEL_NOT_AVAILABLE.value:
                    await self.cooldown(ev.node_id, details)
                await self.end_without_result(ev)
                if (
                    job.get("state") in ("assigned", "acked")
                    and str(r.attempt_id) == job.get("attempt")
                    and job.get("node_id") == ev.node_id
                ):
                    await self.jobs.redispatch(r.job_id, r.attempt_id, code.lower())
                else:
                    self.metrics.stale.labels("job_result", "stale").inc()
                return
            await self.jobs.outcomes.fail(
                r.job_id,
                job,
                _code(code),
                (err.message if err else "") or code,
                attempt=r.attempt_id,
                node_id=ev.node_id,
                earlier=ev.earlier,
            )
            return
        payload = TranslationResult(
            session_id=job["session_id"],
            utterance_index=int(job["utterance_index"]),
            job_id=r.job_id,
            text_asr=r.text_asr or "",
            text_translated=r.text_translated or "",
            tts_audio=r.tts_audio or "",
            tts_format=r.tts_format or "",
            trace_id=job["trace_id"],
            service_timings={"processing_time_ms": r.processing_time_ms}
            if r.processing_time_ms is not None
            else None,
            src_lang=job["src_lang"],
            tgt_lang=job["tgt_lang"],
        ).to_wire()
        delivery = await self.s.job_finish(
            job_id=r.job_id,
            attempt=r.attempt_id,
            node_id=ev.node_id,
            now_ms=now_ms(),
            outcome="done",
            payload=payload,
            gap_ms=self.settings.gap_timeout_ms,
            session_ttl_ms=int(self.settings.session_ttl_s * 1000),
            earlier=ev.earlier,
        )
        if delivery.code in (ScriptCode.STALE_JOB, ScriptCode.NO_SUCH_JOB):
            self.metrics.stale.labels("job_result", _why(delivery.code, delivery.reason)).inc()
            log.info(
                "job.result_dropped",
                job_id=r.job_id,
                attempt=r.attempt_id,
                node_id=ev.node_id,
                why=delivery.reason,
            )
            return
        if delivery.code in (ScriptCode.ALREADY_FINISHED, ScriptCode.ANSWERED_BEFORE):
            self.metrics.stale.labels(
                "job_result",
                "duplicate" if delivery.code == ScriptCode.ALREADY_FINISHED else "after_gap",
            ).inc()
            # a replay (this delivery again, its handler died before publishing): what the
            # first finish released and no gateway has acknowledged yet goes out again
            await self.jobs.outcomes.deliver(job["session_id"], delivery)
            return
        self.metrics.jobs.labels("done").inc()
        received = int(job.get("received_at_ms") or 0)
        roundtrip_ms = max(0, now_ms() - received) if received else None
        if roundtrip_ms is not None:
            self.metrics.roundtrip.observe(roundtrip_ms / 1000)
        self.jobs.stats.done(job["src_lang"], job["tgt_lang"], roundtrip_ms)
        log.info(
            "job.done",
            job_id=r.job_id,
            attempt=r.attempt_id,
            node_id=ev.node_id,
            session_id=job["session_id"],
            trace_id=job["trace_id"],
        )
        await self.jobs.outcomes.deliver(job["session_id"], delivery)

    async def end_without_result(self, ev: NodeJobEvent) -> None:
        """The node answered a job that goes to another node now: the session's jobs it
        received before that one are finished all the same (each ended as job_finish ends
        them along with an answer: fenced by attempt and node, missing_result no_result)."""
        for job_id, attempt in ev.earlier:
            job = await self.jobs.read_job(job_id)
            if job is None:
                continue
            missing = MissingResult(
                session_id=job["session_id"],
                utterance_index=int(job["utterance_index"]),
                reason="no_result",
                created_at_ms=now_ms(),
                trace_id=job.get("trace_id"),
                job_id=job_id,
            ).to_wire()
            delivery = await self.s.job_finish(
                job_id=job_id,
                attempt=attempt,
                node_id=ev.node_id,
                now_ms=now_ms(),
                outcome="done",
                payload=missing,
                gap_ms=self.settings.gap_timeout_ms,
                session_ttl_ms=int(self.settings.session_ttl_s * 1000),
            )
            await self.jobs.outcomes.deliver(job["session_id"], delivery)

    async def on_partial(self, ev: NodeJobEvent, p: NodeAsrPartial) -> None:
        job = await self.jobs.read_job(p.job_id)
        if job is None or job.get("state") not in ("assigned", "acked"):
            self.metrics.stale.labels("asr_partial", "not_running").inc()
            return
        if job.get("node_id") != ev.node_id:
            self.metrics.stale.labels("asr_partial", "wrong_node").inc()
            return
        msg = ClientAsrPartial(
            session_id=job["session_id"],
            utterance_index=int(job["utterance_index"]),
            job_id=p.job_id,
            text=p.text,
            is_final=p.is_final,
            trace_id=job["trace_id"],
        )
        session = await self.jobs.infra.redis.hmget(
            self.jobs.infra.keys.session(job["session_id"]), "gateway_id", "conn_id"
        )
        if session[0] is None:
            self.metrics.stale.labels("asr_partial", "session_closed").inc()
            return
        gateway, conn = session[0].decode(), (session[1] or b"").decode()
        try:
            await self.jobs.infra.publisher.to_gateway(
                gateway,
                ToSession(
                    session_id=job["session_id"],
                    conn_id=conn,
                    ordered=False,
                    utterance_index=int(job["utterance_index"]),
                    payload=msg.to_wire(),
                ),
                batch=True,
            )
        except Exception:
            self.metrics.delivery_dropped.inc()

    async def on_node_error(self, ev: NodeJobEvent, e: NodeError) -> None:
        log.info("node.error_reported", node_id=ev.node_id, code=e.code, error=e.message[:200])
        if e.code == ErrorCode.MODEL_NOT_AVAILABLE.value:
            await self.cooldown(ev.node_id, e.details or {})

    async def cooldown(self, node_id: str, details: dict[str, Any]) -> None:
        """J7: one HSET per report, however many come; selection skips the service.

        The service is named by its type: ``details.service_type`` (the gateway adds it from
        the node's ``installed_services`` when the node names a ``service_id``, as lingua's
        agent does) or ``details.service``. A report naming no known type cools nothing: the
        job still goes to another node."""
        service = str(details.get("service_type") or details.get("service") or "").lower()
        if service not in SERVICE_TYPES:
            log.warning(
                "node.cooldown_unknown_service",
                node_id=node_id,
                service_id=str(details.get("service_id"))[:64],
            )
            return
        now = now_ms()
        until = now + self.settings.model_cooldown_ms
        res = await self.s.service_cooldown(
            node_id=node_id, service=service, until_ms=until, now_ms=now
        )
        if res.code == ScriptCode.COOLING:
            self.metrics.cooldowns.inc()

    async def on_node_lost(self, ev: NodeDisconnected) -> None:
        """A node's connection ended: take its jobs back and dispatch them elsewhere (J5).

        Not when a draining gateway closed it (1012): the node is alive and reconnecting to
        another replica, its running jobs go on and report on the new connection (results
        are fenced by job, attempt and node, not by connection). Taking them back would
        throw that work away, and a job with no other eligible node would fail. The job's
        own ack and deadline timers still end it if the node never comes back.
        """
        if ev.close_code == GATEWAY_RESTART_CLOSE:
            self.metrics.redispatch_skipped.inc()
            log.info("node.gateway_restart_jobs_kept", node_id=ev.node_id, conn_id=ev.conn_id)
            return
        # one script reads the connection, the job set and the attempts and takes the jobs
        # back, fenced by connection: a drop of a connection that was replaced changes nothing
        lost = await self.s.node_lost(
            node_id=ev.node_id,
            conn_id=ev.conn_id,
            now_ms=now_ms(),
            max_attempts=self.settings.max_attempts,
        )
        if lost.code == ScriptCode.NEWER_CONNECTION:
            log.info(
                "node.lost_stale_conn", node_id=ev.node_id, conn_id=ev.conn_id, current=lost.conn_id
            )
            return
        for taken in lost.jobs:
            self.metrics.redispatch.labels("node_lost").inc()
            if taken.code == ScriptCode.RELEASED:
                log.info("job.taken_back", job_id=taken.job_id, reason="node_lost")
                await self.jobs.dispatch(taken.job_id, taken.attempt, cause="node_lost")
            else:
                await self.jobs.takeback.fail_exhausted(
                    taken.job_id, taken.attempt, "node_lost", ev.node_id
                )


def _why(code: ScriptCode, value: str) -> str:
    """The stale-message metric's label of a dropped ack or result."""
    if code == ScriptCode.STALE_JOB:
        return value or "stale"
    if code == ScriptCode.NO_SUCH_JOB:
        return "unknown_job"
    return str(int(code))


def _code(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL_ERROR
